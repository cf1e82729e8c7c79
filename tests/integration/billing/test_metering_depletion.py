"""End to end on the app (relay and saga runner in-process, sim driver): a tenant with a
little credit runs an instance; the metering tick charges it until the credit is gone;
billing.balance_depleted reaches provisioning, which stops (never terminates) the instance
with state_reason "balance_depleted"; a launch or a start without credit is a 402."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from handlers.billing import metering, published
from handlers.inventory.catalogue import ensure_catalogue, load_sim_fleet
from hangar.db import make_engine, utcnow
from hangar.drivers.sim import sim_fleet

PASSWORD = "correct-horse-battery-staple"
PROBLEM = "application/problem+json"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    with Session(engine) as session, session.begin():
        ensure_catalogue(session, driver="sim", now=utcnow())
        load_sim_fleet(session, sim_fleet(6, ["fra1"], seed=3), now=utcnow())
    yield engine
    engine.dispose()


@pytest.fixture
def client(engine: Engine, make_settings: Callable[..., Any], cheap_passwords: None) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from handlers.provisioning import configuration
    from hangar.app import create_app

    # 20 cents of signup credit; cpu-2 costs 3 cents an hour; the ticker itself never runs
    # during the test (an hour between ticks): the test ticks with a clock of its own.
    settings = make_settings(run_relay=True, billing_signup_credit=20, billing_tick_seconds=3600)
    with TestClient(create_app(settings)) as test_client:
        yield test_client
    configuration.configure(make_settings())


LAUNCH = {"name": "web-1", "region": "fra1", "instance_type": "cpu-2", "image": "ubuntu-24.04"}


def _sign_up_and_launch(client: Any) -> tuple[dict[str, str], uuid.UUID, str]:
    """A new tenant (with the signup credit) and its launched cpu-2: (headers, organization, instance id)."""
    body = client.post(
        "/v1/signup",
        json={"email": f"o-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD, "organization": "Acme"},
    ).json()
    headers = {"Authorization": f"Bearer {body['secret']}"}
    created = client.post("/v1/instances", headers=headers, json=LAUNCH)
    assert created.status_code == 202, created.text
    return headers, uuid.UUID(body["organization"]["id"]), created.json()["instance"]["id"]


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(0.02)
    return value


def test_credit_runs_out_and_the_instance_is_stopped_with_a_reason(
    client: Any, engine: Engine, make_settings: Callable[..., Any]
) -> None:
    headers, org, instance_id = _sign_up_and_launch(client)
    wait_for(lambda: client.get(f"/v1/instances/{instance_id}", headers=headers).json()["state"] == "running")
    sessions = sessionmaker(engine, expire_on_commit=False)
    settings = make_settings(billing_signup_credit=20, billing_tick_seconds=60)
    wait_for(lambda: _meter_running(sessions, instance_id))

    # Six hours at 3 cents: 18 of the 20 cents; not depleted yet.
    start = utcnow()
    metering.tick(sessions, settings, now=start + timedelta(hours=6))
    assert client.get(f"/v1/instances/{instance_id}", headers=headers).json()["state"] == "running"
    # Seven hours: 21 due, 20 there — out of credit.
    report = metering.tick(sessions, settings, now=start + timedelta(hours=7))
    assert report.events >= 1

    stopped = wait_for(
        lambda: (i := client.get(f"/v1/instances/{instance_id}", headers=headers).json())["state"] == "stopped" and i
    )
    assert stopped["state_reason"] == "balance_depleted"
    with sessions() as session:
        assert published.wallet_balance(session, org).posted >= 0
        assert published.check_invariants(session) == []

    # Without credit, neither a start nor a launch is accepted: a 402 saying what it needs.
    for response in (
        client.post(f"/v1/instances/{instance_id}/actions", headers=headers, json={"type": "start"}),
        client.post("/v1/instances", headers=headers, json={**LAUNCH, "name": "web-2"}),
    ):
        assert response.status_code == 402, response.text
        assert response.headers["content-type"].startswith(PROBLEM)
        problem = response.json()
        assert problem["type"] == "https://docs.hangar.dev/problems/insufficient-credits"
        assert "0.01 USD" in problem["detail"] and "0.00 USD available" in problem["detail"]
    assert client.get(f"/v1/instances/{instance_id}", headers=headers).json()["state"] == "stopped"


def _meter_running(sessions: sessionmaker[Session], instance_id: str) -> bool:
    from handlers.billing.metering_tables import MeterEdge

    with sessions() as session:
        return session.query(MeterEdge).filter(MeterEdge.resource_id == uuid.UUID(instance_id)).count() > 0


@pytest.fixture
def slow_client(engine: Engine, make_settings: Callable[..., Any], cheap_passwords: None) -> Iterator[Any]:
    """As `client`, on a slow simulated host: every operation takes 1–3 s."""
    from starlette.testclient import TestClient

    from handlers.provisioning import configuration
    from hangar.app import create_app

    settings = make_settings(run_relay=True, billing_signup_credit=20, billing_tick_seconds=3600, sim_delay_ms=2000)
    with TestClient(create_app(settings)) as test_client:
        yield test_client
    configuration.configure(make_settings())


def test_an_instance_mid_action_when_credit_runs_out_is_stopped_once_the_action_is_over(
    slow_client: Any, engine: Engine, make_settings: Callable[..., Any]
) -> None:
    from handlers.provisioning.consumers import DEPLETION
    from hangar import inbox
    from hangar.outbox import OutboxEvent

    client = slow_client
    headers, org, instance_id = _sign_up_and_launch(client)

    def state() -> str:
        return str(client.get(f"/v1/instances/{instance_id}", headers=headers).json()["state"])

    wait_for(lambda: state() == "running")
    sessions = sessionmaker(engine, expire_on_commit=False)
    settings = make_settings(billing_signup_credit=20, billing_tick_seconds=60)
    wait_for(lambda: _meter_running(sessions, instance_id))
    start = utcnow()
    metering.tick(sessions, settings, now=start + timedelta(hours=6))

    # A reboot is under way when the credit runs out: provisioning leaves the instance to it.
    assert (
        client.post(f"/v1/instances/{instance_id}/actions", headers=headers, json={"type": "reboot"}).status_code == 202
    )
    metering.tick(sessions, settings, now=start + timedelta(hours=7))

    def depletions() -> list[uuid.UUID]:
        with sessions() as session:
            return list(
                session.scalars(
                    select(OutboxEvent.id).where(
                        OutboxEvent.type == "billing.balance_depleted", OutboxEvent.organization_id == org
                    )
                )
            )

    def handled(event_id: uuid.UUID) -> bool:
        with sessions() as session:
            return inbox.already_processed(session, DEPLETION, event_id)

    [first] = depletions()
    wait_for(lambda: handled(first))
    assert state() == "rebooting", "the reboot ended before the depletion arrived: the test proves nothing"
    wait_for(lambda: state() == "running")

    # The next tick still finds it running on a depleted balance, says so again, and this
    # time the stop goes through.
    metering.tick(sessions, settings, now=start + timedelta(hours=7, minutes=1))
    assert len(depletions()) == 2
    stopped = wait_for(
        lambda: (i := client.get(f"/v1/instances/{instance_id}", headers=headers).json())["state"] == "stopped" and i
    )
    assert stopped["state_reason"] == "balance_depleted"
    with sessions() as session:
        assert published.check_invariants(session) == []
