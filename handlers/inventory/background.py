"""Inventory's start-up work (discovered by hangar.background): the reference catalogue
(regions, instance types, images) and, on an empty fleet, a few hosts per region, so a fresh
`make run` — or a fresh `sim` deployment — can launch at once."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from handlers.inventory.catalogue import ensure_catalogue
from hangar.config import Settings
from hangar.db import utcnow


def prepare(settings: Settings, sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        ensure_catalogue(session, driver=settings.driver, now=utcnow(), seed_hosts=True)
