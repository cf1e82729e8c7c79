"""Fixtures for the saga's unit tests: the test's migrated database (tests/conftest.py's
`database_url`, SQLite or PostgreSQL) with the catalogue and three CPU hosts in fra1, a
scriptable driver, and a World that drives sagas step by step."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from provisioning_fakes import FakeDriver, World, cpu_hosts, seed
from sqlalchemy.orm import Session, sessionmaker

from hangar.db import make_engine, make_session_factory


@pytest.fixture(autouse=True)
def fresh_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings an earlier test's app recorded (background.prepare) do not leak in."""
    from handlers.provisioning import configuration

    monkeypatch.setattr(configuration._holder, "_current", None)


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    seed(factory, cpu_hosts(3))
    yield factory
    engine.dispose()


@pytest.fixture
def driver() -> FakeDriver:
    return FakeDriver()


@pytest.fixture
def world(sessions: sessionmaker[Session], make_settings: Callable[..., Any], driver: FakeDriver) -> World:
    # saga_poll_seconds=0: a waiting step is due again at once, so drive() needs no sleeping.
    return World(sessions, make_settings(saga_poll_seconds=0.0, saga_max_attempts=3), driver)
