"""Storage's background service (discovered by hangar.background): the storage runner, with
this process's volume driver. Every API process (embedded mode) and every `hangar-worker`
runs one; they share the work through row locks."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from handlers.storage.runner import StorageRunner
from hangar.background import Service
from hangar.config import Settings
from hangar.drivers.volumes import make_volume_driver


def services(settings: Settings, sessions: sessionmaker[Session]) -> list[Service]:
    return [StorageRunner(settings, sessions, make_volume_driver(settings))]
