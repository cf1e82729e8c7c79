"""Test helpers for Provisioning end to end (a uniquely named module; the conftest and the
test modules import it): a fleet loader, a tenant's view of the API with polling helpers,
and a backdoor that reads the database the app writes (outbox rows validated against the
AsyncAPI contract)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from handlers.inventory import published
from handlers.inventory.catalogue import ensure_catalogue, load_sim_fleet
from handlers.inventory.tables import Allocation
from handlers.provisioning.tables import Action, Instance
from hangar.drivers.sim import SimHost
from hangar.outbox import OutboxEvent

ROOT = Path(__file__).resolve().parents[3]
PROBLEM = "application/problem+json"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def cpu_hosts(n: int, region: str = "fra1") -> list[SimHost]:
    return [
        SimHost(
            name=f"{region}-cpu-{i}",
            region=region,
            zone=f"{region}-{'abc'[i % 3]}",
            kind="cpu",
            gpu_model=None,
            traits=("ssd",),
            inventories={"VCPU": 64, "MEMORY_MB": 256 * 1024, "DISK_GB": 2048},
        )
        for i in range(n)
    ]


def seed(engine: Engine, hosts: Iterable[SimHost]) -> None:
    with Session(engine) as session, session.begin():
        ensure_catalogue(session, driver="sim", now=T0)
        load_sim_fleet(session, hosts, now=T0)


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Poll until `predicate()` is truthy (and return it); AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {predicate}")
        time.sleep(interval)


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"https://docs.hangar.dev/problems/{slug}", body
    return body


class Tenant:
    """One organization's owner, calling the API."""

    def __init__(self, client: Any, secret: str, organization_id: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {secret}"}
        self.organization_id = organization_id

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get(path, headers=self.headers, params=params)

    def create(self, name: str = "web-1", region: str = "fra1", instance_type: str = "cpu-2", **extra: Any) -> Any:
        body = {"name": name, "region": region, "instance_type": instance_type, "image": "ubuntu-24.04", **extra}
        return self.client.post("/v1/instances", headers=self.headers, json=body)

    def launch(self, **kwargs: Any) -> dict[str, Any]:
        response = self.create(**kwargs)
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        return body

    def act(self, instance_id: str, action_type: str) -> Any:
        return self.client.post(
            f"/v1/instances/{instance_id}/actions", headers=self.headers, json={"type": action_type}
        )

    def terminate(self, instance_id: str) -> Any:
        return self.client.delete(f"/v1/instances/{instance_id}", headers=self.headers)

    def instance(self, instance_id: str) -> dict[str, Any]:
        response = self.get(f"/v1/instances/{instance_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def action(self, action_id: str) -> dict[str, Any]:
        response = self.get(f"/v1/actions/{action_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def finished(self, action_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """The action once it has succeeded or failed."""
        done: dict[str, Any] = wait_for(
            lambda: (a := self.action(action_id))["status"] in ("succeeded", "failed") and a, timeout
        )
        return done


def _format_checker() -> FormatChecker:
    checker = FormatChecker()

    @checker.checks("date-time", raises=ValueError)
    def is_date_time(value: object) -> bool:
        return not isinstance(value, str) or datetime.fromisoformat(value).tzinfo is not None

    return checker


class Backdoor:
    """The test's database, read beside the running app."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        doc = json.loads((ROOT / "generated" / "asyncapi.json").read_text())
        self._components = doc["components"]
        self._schemas = {m["name"]: m["payload"]["$ref"] for m in doc["components"]["messages"].values()}
        self._checker = _format_checker()

    def validate(self, envelope: dict[str, Any]) -> None:
        schema = {"$ref": self._schemas[envelope["type"]], "components": self._components}
        Draft202012Validator(schema, format_checker=self._checker).validate(envelope)

    def events(self, *types: str, about: str | None = None) -> list[dict[str, Any]]:
        """Outbox envelopes in order (each validated against its AsyncAPI schema), of `types`
        and about one instance (`instance_id` or, for allocations, `consumer_id`) if given."""
        with Session(self.engine) as session:
            query = select(OutboxEvent).order_by(OutboxEvent.seq)
            if types:
                query = query.where(OutboxEvent.type.in_(types))
            rows = [row.payload for row in session.scalars(query)]
        for row in rows:
            self.validate(row)
        if about is not None:
            rows = [r for r in rows if about in (r["data"].get("instance_id"), r["data"].get("consumer_id"))]
        return rows

    def kinds(self, about: str) -> list[str]:
        """The instance's event history as compact strings (state changes as from→to)."""
        out = []
        for e in self.events(about=about):
            if e["type"] == "instance.state_changed":
                out.append(f"{e['data']['from_state']}→{e['data']['to_state']}")
            else:
                out.append(e["type"])
        return out

    def allocation(self, instance_id: str) -> published.Claim | None:
        with Session(self.engine) as session:
            return published.allocation_of(session, uuid.UUID(instance_id))

    def allocations(self) -> list[Allocation]:
        with Session(self.engine) as session:
            return list(session.scalars(select(Allocation)))

    def instances(self) -> list[Instance]:
        with Session(self.engine) as session:
            return list(session.scalars(select(Instance)))

    def actions(self) -> list[Action]:
        with Session(self.engine) as session:
            return list(session.scalars(select(Action)))


def check_no_leaks(backdoor: Backdoor) -> None:
    """Every allocation belongs to a running or stopped instance; nothing else holds any;
    and every instance is at rest (running, stopped, failed, terminated) and unlocked."""
    by_id = {i.id: i for i in backdoor.instances()}
    holders = {a.consumer_id for a in backdoor.allocations()}
    leaked = [str(c) for c in holders if c not in by_id or by_id[c].state not in ("running", "stopped")]
    assert leaked == [], f"allocations held by instances that are not running/stopped: {leaked[:5]}"
    missing = [str(i.id) for i in by_id.values() if i.state in ("running", "stopped") and i.id not in holders]
    assert missing == [], f"running/stopped instances without an allocation: {missing[:5]}"
    restless = [
        (str(i.id), i.state) for i in by_id.values() if i.state not in ("running", "stopped", "failed", "terminated")
    ]
    assert restless == [], f"instances not at rest: {restless[:5]}"
    assert all(i.action_id is None and i.next_run_at is None for i in by_id.values())
    assert all(a.status in ("succeeded", "failed") for a in backdoor.actions())
