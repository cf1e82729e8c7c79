"""The deployment settings the API side of provisioning needs (the quota defaults it passes
to inventory's check_quota).

A handler's RequestContext carries no Settings, so the context keeps the process's: the
runtime calls `background.prepare(settings, …)` once per app or worker before anything is
served, and that records them here. Code that runs before (or without) a prepare — a script,
a unit test — gets the environment's settings, which is what a prepare would have recorded.
The saga never reads this module: its caller hands it the Settings explicitly.
"""

from __future__ import annotations

from hangar.config import SettingsHolder

_holder = SettingsHolder()
configure = _holder.configure
current = _holder.current
