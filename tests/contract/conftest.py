"""Fixtures for the contract stage, and the hook that records what it covered.

One app and one database serve the whole stage (session scope): the contract tests only
add tenants and never rely on an empty database. The database comes from tests/conftest.py
(`databases.dedicated()`), so `--db=postgresql` runs the stage on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from argon2 import PasswordHasher, profiles
from starlette.testclient import TestClient

from handlers.identity import passwords
from hangar.app import create_app
from hangar.config import ROOT
from hangar.dispatch import HangarApp

from .coverage import COVERAGE
from .support import Tenant, contract_settings, sign_up

COVERAGE_PATH = ROOT / ".hangar" / "contract-coverage.json"


@pytest.fixture(scope="session", autouse=True)
def _cheap_password_hashing() -> Iterator[None]:
    # Default argon2 costs ~0.1 s a hash; schemathesis signs up hundreds of times.
    previous = passwords.use_hasher(PasswordHasher.from_parameters(profiles.CHEAPEST))
    yield
    passwords.use_hasher(previous)


@pytest.fixture(scope="session")
def contract_app(databases: Any) -> HangarApp:
    return create_app(contract_settings(databases.dedicated()))


@pytest.fixture(scope="session")
def http(contract_app: HangarApp) -> Iterator[TestClient]:
    """A plain HTTP client into the app, for set-up and hand-written assertions."""
    with TestClient(contract_app, base_url="http://testserver", raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="session")
def tenant(http: TestClient) -> Tenant:
    return sign_up(http, "Acme")


@pytest.fixture(scope="session")
def other_tenant(http: TestClient) -> Tenant:
    return sign_up(http, "Globex")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Only a run that executed contract tests may replace the file: a run that merely
    # collected and deselected them (e.g. `-m postgres`) must not zero the table.
    if not COVERAGE.ran:
        return
    from generated.routing import OPERATIONS

    COVERAGE.write(COVERAGE_PATH, OPERATIONS)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if COVERAGE.ran:
        for line in COVERAGE.summary():
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"coverage written to {COVERAGE_PATH.relative_to(ROOT)}")
