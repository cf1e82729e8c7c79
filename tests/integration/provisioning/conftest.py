"""Fixtures for Provisioning end to end: the test's migrated database (tests/conftest.py's
`database_url`) with the catalogue and a small CPU fleet in fra1, and apps running the relay
and the saga runner in-process (`run_relay=True`) on the `sim` driver with short delays."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from provisioning_support import Backdoor, Tenant, cpu_hosts, seed
from sqlalchemy import Engine

from hangar.db import make_engine

PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(autouse=True)
def fresh_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings an earlier test's app recorded (background.prepare) do not leak in."""
    from handlers.provisioning import configuration

    monkeypatch.setattr(configuration._holder, "_current", None)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    seed(engine, cpu_hosts(4))
    yield engine
    engine.dispose()


@pytest.fixture
def backdoor(engine: Engine) -> Backdoor:
    return Backdoor(engine)


@pytest.fixture
def make_client(
    engine: Engine, make_settings: Callable[..., Any], cheap_passwords: None
) -> Iterator[Callable[..., Any]]:
    """make_client(**settings overrides) → a TestClient of an app running the relay and the
    saga runner; closed (runner and relay stopped) at the end of the test."""
    from starlette.testclient import TestClient

    from hangar.app import create_app

    clients: list[Any] = []

    def make(**overrides: Any) -> Any:
        client = TestClient(create_app(make_settings(**{"run_relay": True, **overrides})))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def make_tenant() -> Callable[[Any], Tenant]:
    def sign_up(client: Any) -> Tenant:
        email = f"owner-{uuid.uuid4().hex[:10]}@example.com"
        response = client.post("/v1/signup", json={"email": email, "password": PASSWORD, "organization": "Acme"})
        assert response.status_code == 201, response.text
        body = response.json()
        return Tenant(client, body["secret"], body["organization"]["id"])

    return sign_up


@pytest.fixture
def tenant(make_client: Callable[..., Any], make_tenant: Callable[[Any], Tenant]) -> Tenant:
    """A tenant on an app with the test defaults (sim driver, 30 ms operations)."""
    return make_tenant(make_client())
