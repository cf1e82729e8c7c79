"""Per-context start-up work and background services, discovered like consumers.

A context that needs either has `handlers/<context>/background.py` with any of:

    def prepare(settings: Settings, sessions: sessionmaker[Session]) -> None
        # runs once, synchronously, before the app serves or the worker consumes; idempotent
        # and safe when several processes start at once (e.g. seeding reference data)
    def services(settings: Settings, sessions: sessionmaker[Session]) -> list[Service]
        # long-running loops (e.g. the provisioning saga runner); started after prepare,
        # stopped on shutdown, in reverse order

The API process runs both when HANGAR_RUN_RELAY is on (the embedded default: one process does
everything); `hangar-worker` always runs them. Services must therefore be safe to run in many
processes at once against one database (they share work through row locks, not memory).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from hangar.config import Settings
from hangar.discovery import context_modules

log = logging.getLogger(__name__)


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Background:
    prepares: list[tuple[str, Callable[[Settings, sessionmaker[Session]], None]]] = field(default_factory=list)
    factories: list[tuple[str, Callable[[Settings, sessionmaker[Session]], list[Service]]]] = field(
        default_factory=list
    )
    running: list[Service] = field(default_factory=list)

    def prepare(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        for name, prepare in self.prepares:
            log.debug("prepare: %s", name)
            prepare(settings, sessions)

    def start(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        for name, factory in self.factories:
            for service in factory(settings, sessions):
                log.debug("starting %s from %s", type(service).__name__, name)
                service.start()
                self.running.append(service)

    def stop(self) -> None:
        while self.running:
            service = self.running.pop()
            try:
                service.stop()
            except Exception:  # one service failing to stop must not keep the others running
                log.exception("stopping %s failed", type(service).__name__)


def discover(package: str = "handlers") -> Background:
    """Import `<package>.<context>.background` for every context that has one."""
    found = Background()
    for name, module in context_modules("background", package):
        prepare = getattr(module, "prepare", None)
        services = getattr(module, "services", None)
        if prepare is None and services is None:
            raise TypeError(f"{name} must define prepare(settings, sessions) and/or services(settings, sessions)")
        if prepare is not None:
            found.prepares.append((name, prepare))
        if services is not None:
            found.factories.append((name, services))
    return found
