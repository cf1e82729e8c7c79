"""The deployment settings the API side of the Terminal Gateway needs (ticket lifetime, the
per-organization cap, the websocket base URL) — recorded by background.prepare.

A handler's RequestContext carries no Settings, so the context keeps the process's: the
runtime calls `background.prepare(settings, …)` once per app or worker before anything is
served, and that records them here. Code that runs before (or without) a prepare — a script,
a unit test — gets the environment's settings, which is what a prepare would have recorded.
The gateway gets its Settings from the app that mounts it, not from here.
"""

from __future__ import annotations

from hangar.config import SettingsHolder

_holder = SettingsHolder()
configure = _holder.configure
current = _holder.current
