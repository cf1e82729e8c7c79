"""Fixtures for Identity & Access tests that need a database.

The database is built the way production builds it — `alembic upgrade head` — once per
session: an SQLite file by default, or, when HANGAR_TEST_DATABASE_URL points at PostgreSQL, a
fresh throwaway database created next to it (so parallel runs never share tables). Each test
runs inside a transaction that is rolled back.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from argon2 import PasswordHasher, profiles
from identity_support import Backdoor, World
from jsonschema import Draft202012Validator, FormatChecker
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from handlers.identity import passwords
from hangar.db import make_engine

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def cheap_password_hashing() -> Iterator[None]:
    # The default argon2 parameters cost ~0.1 s a hash; the tests hash hundreds of times.
    previous = passwords.use_hasher(PasswordHasher.from_parameters(profiles.CHEAPEST))
    yield
    passwords.use_hasher(previous)


def migrate(url: str) -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


@contextmanager
def migrated_database(tmp_path_factory: pytest.TempPathFactory, label: str) -> Iterator[str]:
    """A new database at head, removed afterwards: an SQLite file, or a PostgreSQL database
    of its own next to HANGAR_TEST_DATABASE_URL."""
    base = os.environ.get("HANGAR_TEST_DATABASE_URL", "")
    if not base.startswith("postgresql"):
        url = f"sqlite:///{tmp_path_factory.mktemp(label) / 'test.db'}"
        migrate(url)
        yield url
        return
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"hangar_{label}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL at {base} is not reachable: {exc}")
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def identity_db_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Shared by every test that rolls back (`session`); nothing may commit to it."""
    with migrated_database(tmp_path_factory, "identity") as url:
        yield url


@pytest.fixture(scope="session")
def identity_engine(identity_db_url: str) -> Iterator[Engine]:
    engine = make_engine(identity_db_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def committing_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """For tests that really commit (races): a database of their own per module."""
    with migrated_database(tmp_path_factory, "identity_commit") as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


@pytest.fixture
def session(identity_engine: Engine) -> Iterator[Session]:
    with identity_engine.connect() as connection:
        outer = connection.begin()
        db = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield db
        finally:
            db.close()
            outer.rollback()


@pytest.fixture
def world(session: Session) -> World:
    return World(session)


def _date_time_checker() -> FormatChecker:
    checker = FormatChecker()

    @checker.checks("date-time", raises=ValueError)
    def is_date_time(value: object) -> bool:
        # RFC 3339 demands an offset; fromisoformat alone would accept a naive time.
        return not isinstance(value, str) or datetime.fromisoformat(value).tzinfo is not None

    return checker


@pytest.fixture(scope="session")
def event_validator() -> Callable[[dict[str, Any]], None]:
    """validate(envelope): raises unless it matches its AsyncAPI message schema exactly."""
    doc = json.loads((ROOT / "generated" / "asyncapi.json").read_text())
    schema_by_type = {m["name"]: m["payload"]["$ref"] for m in doc["components"]["messages"].values()}
    checker = _date_time_checker()

    def validate(envelope: dict[str, Any]) -> None:
        ref = schema_by_type[envelope["type"]]  # KeyError: an event type the contract lacks
        schema = {"$ref": ref, "components": doc["components"]}
        Draft202012Validator(schema, format_checker=checker).validate(envelope)

    return validate


# --- HTTP tests: helpers over the shared app/client/signup fixtures (tests/conftest.py) ---


@pytest.fixture
def backdoor(database_url: str, event_validator: Callable[[dict[str, Any]], None]) -> Iterator[Backdoor]:
    door = Backdoor(database_url, event_validator)
    yield door
    door.engine.dispose()
