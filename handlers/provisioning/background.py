"""Provisioning's start-up work and background services (discovered by hangar.background).

`prepare` records the deployment's settings for the API side (configuration.py);
`services` is the saga runner, with this process's host driver. Every API process (embedded
mode) and every `hangar-worker` runs one; they share the work through row locks.
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from handlers.provisioning import configuration
from handlers.provisioning.runner import SagaRunner
from hangar.background import Service
from hangar.config import Settings
from hangar.drivers import make_driver


def prepare(settings: Settings, sessions: sessionmaker[Session]) -> None:
    configuration.configure(settings)


def services(settings: Settings, sessions: sessionmaker[Session]) -> list[Service]:
    return [SagaRunner(settings, sessions, make_driver(settings))]
