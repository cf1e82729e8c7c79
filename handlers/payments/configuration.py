"""The deployment settings the payments API side needs (the sandbox delay, the webhook secrets
and tolerance). A RequestContext carries no Settings, so the context keeps the process's:
background.prepare records them once per app or worker; code that runs without a prepare (a
script, a unit test) gets the environment's — what a prepare would have recorded. The same
shape as handlers/provisioning/configuration.py."""

from __future__ import annotations

from hangar.config import SettingsHolder

_holder = SettingsHolder()
configure = _holder.configure
current = _holder.current
