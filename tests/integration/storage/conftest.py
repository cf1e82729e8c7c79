"""Fixtures for Storage end to end: the test's migrated database with the catalogue and a small
CPU fleet in fra1 and ams1, and apps running the relay, the saga runner and the storage runner
in-process (`run_relay=True`) on the `sim` driver with short delays (tests of the `local` driver
ask for it)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from storage_support import Backdoor, Tenant, seed

from hangar.db import make_engine

PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(autouse=True)
def fresh_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    from handlers.provisioning import configuration

    monkeypatch.setattr(configuration._holder, "_current", None)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    seed(engine, ("fra1", "ams1"))
    yield engine
    engine.dispose()


@pytest.fixture
def backdoor(engine: Engine) -> Backdoor:
    return Backdoor(engine)


@pytest.fixture
def make_client(
    engine: Engine, make_settings: Callable[..., Any], cheap_passwords: None
) -> Iterator[Callable[..., Any]]:
    from starlette.testclient import TestClient

    from hangar.app import create_app

    clients: list[Any] = []

    def make(**overrides: Any) -> Any:
        settings = {"run_relay": True, "storage_sim_delay_ms": 30, "storage_poll_seconds": 0.02, **overrides}
        client = TestClient(create_app(make_settings(**settings)))
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
    return make_tenant(make_client())
