"""Fixtures for the contract stage, and the hook that records what it covered.

One app and one database serve the whole stage (package scope): the contract tests only add
tenants (and operator-made hosts) and never rely on an empty database. The database comes
from tests/conftest.py (`databases.dedicated()`), so `--db=postgresql` runs the stage on
PostgreSQL.

The app's lifespan runs once, for the whole stage (`served`): it seeds the catalogue and
starts the relay and the saga runner that bring launched instances up, and stops them when
the stage ends (package scope: they do not idle on through the rest of a full-suite run).
Everything reaches the app in-process: through `http` (a TestClient), schemathesis
(harness.py, which keeps its hands off the lifespan) and the async SDK
(httpx.ASGITransport, which has none).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from argon2 import PasswordHasher, profiles
from starlette.testclient import TestClient

from handlers.identity import passwords
from hangar.app import create_app
from hangar.config import ROOT
from hangar.dispatch import HangarApp

from .coverage import COVERAGE
from .support import Tenant, contract_settings, load_fleet, sign_up

COVERAGE_PATH = ROOT / ".hangar" / "contract-coverage.json"


@pytest.fixture(scope="session", autouse=True)
def _cheap_password_hashing() -> Iterator[None]:
    # Default argon2 costs ~0.1 s a hash; schemathesis signs up hundreds of times.
    previous = passwords.use_hasher(PasswordHasher.from_parameters(profiles.CHEAPEST))
    yield
    passwords.use_hasher(previous)


@dataclass(frozen=True)
class Served:
    app: HangarApp
    http: TestClient


@pytest.fixture(scope="package")
def served(databases: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    app = create_app(contract_settings(databases.dedicated(), tmp_path_factory.mktemp("contract-instances")))
    # The catalogue and the simulated fleet before the lifespan's start-up, which then finds a
    # fleet and seeds no hosts of its own.
    load_fleet(app.runtime.sessions)
    with TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as client:
        yield Served(app, client)


@pytest.fixture(scope="package")
def contract_app(served: Served) -> HangarApp:
    """The app, its lifespan running (relay and saga runner up) for the whole stage."""
    return served.app


@pytest.fixture(scope="package")
def http(served: Served) -> TestClient:
    """A plain HTTP client into the app, for set-up and hand-written assertions."""
    return served.http


@pytest.fixture(scope="package")
def tenant(http: TestClient) -> Tenant:
    return sign_up(http, "Acme")


@pytest.fixture(scope="package")
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
