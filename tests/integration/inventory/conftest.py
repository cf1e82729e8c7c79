"""Fixtures for Inventory & Placement tests that need a database: a fresh one per test
(SQLite by default, a PostgreSQL schema of its own with --db=postgresql), the catalogue
seeded, and sessions that really commit (placement is about what commits)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from inventory_support import NOW, UnreachableError, fresh_database
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from handlers.inventory.catalogue import ensure_catalogue
from hangar.db import make_engine


@pytest.fixture
def inventory_url(databases: Any, tmp_path: Path) -> Iterator[str]:
    try:
        with fresh_database(databases.pg_url, tmp_path) as url:
            yield url
    except UnreachableError as exc:
        pytest.skip(f"POSTGRESQL NOT REACHABLE at {databases.pg_url}: {exc}. Start it with scripts/services.sh.")


@pytest.fixture
def engine(inventory_url: str) -> Iterator[Engine]:
    engine = make_engine(inventory_url)
    with Session(engine) as session:
        ensure_catalogue(session, driver="sim", now=NOW)
        session.commit()
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


@pytest.fixture
def new_session(engine: Engine) -> Iterator[Callable[[], Session]]:
    """Another session (its own connection) on the test's database."""
    opened: list[Session] = []

    def make() -> Session:
        opened.append(Session(engine, expire_on_commit=False))
        return opened[-1]

    yield make
    for s in opened:
        s.close()
