"""Test helpers for Storage end to end (a uniquely named module the conftest and the tests
import): fleet seeding in two regions, a tenant's view of the volume API with polling
helpers, and a backdoor reading the outbox (validated against the AsyncAPI contract)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from handlers.inventory.catalogue import ensure_catalogue, load_sim_fleet
from handlers.storage.tables import Volume
from hangar.drivers.sim import SimHost
from hangar.outbox import OutboxEvent

ROOT = Path(__file__).resolve().parents[3]
PROBLEM = "application/problem+json"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def hosts(region: str, n: int = 2) -> list[SimHost]:
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


def seed(engine: Engine, regions: tuple[str, ...], driver: str = "sim") -> None:
    with Session(engine) as session, session.begin():
        ensure_catalogue(session, driver=driver, now=T0)
        for region in regions:
            load_sim_fleet(session, hosts(region), now=T0)


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02) -> Any:
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

    def post(self, path: str, body: dict[str, Any], **headers: str) -> Any:
        return self.client.post(path, headers={**self.headers, **headers}, json=body)

    def delete(self, path: str) -> Any:
        return self.client.delete(path, headers=self.headers)

    # instances
    def instance(self, region: str = "fra1", name: str = "web-1") -> str:
        """A running instance's id."""
        response = self.post(
            "/v1/instances", {"name": name, "region": region, "instance_type": "cpu-2", "image": "ubuntu-24.04"}
        )
        assert response.status_code == 202, response.text
        launch = response.json()
        done = wait_for(
            lambda: (
                (a := self.get(f"/v1/actions/{launch['action']['id']}").json())["status"] in ("succeeded", "failed")
                and a
            )
        )
        assert done["status"] == "succeeded", done
        return str(launch["instance"]["id"])

    def terminate(self, instance_id: str) -> None:
        response = self.delete(f"/v1/instances/{instance_id}")
        assert response.status_code == 202, response.text
        wait_for(lambda: self.get(f"/v1/instances/{instance_id}").json()["state"] == "terminated")

    # volumes
    def create(self, name: str = "data-1", region: str = "fra1", size_gib: int = 10, **extra: Any) -> Any:
        return self.post("/v1/volumes", {"name": name, "region": region, "size_gib": size_gib, **extra})

    def volume(self, volume_id: str) -> dict[str, Any]:
        response = self.get(f"/v1/volumes/{volume_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def act(self, volume_id: str, action_type: str, **extra: Any) -> Any:
        return self.post(f"/v1/volumes/{volume_id}/actions", {"type": action_type, **extra})

    def finished(self, action_id: str, timeout: float = 15.0) -> dict[str, Any]:
        done: dict[str, Any] = wait_for(
            lambda: (
                (a := self.get(f"/v1/volume-actions/{action_id}").json())["status"] in ("succeeded", "failed") and a
            ),
            timeout,
        )
        return done

    def ok(self, response: Any) -> dict[str, Any]:
        """Wait for the action in a 202 answer (a VolumeAction or a VolumeLaunch) to succeed."""
        assert response.status_code == 202, response.text
        body = response.json()
        action = body.get("action", body)
        done = self.finished(action["id"])
        assert done["status"] == "succeeded", done
        return done

    def available(self, name: str = "data-1", region: str = "fra1", size_gib: int = 10, **extra: Any) -> str:
        response = self.create(name=name, region=region, size_gib=size_gib, **extra)
        self.ok(response)
        return str(response.json()["volume"]["id"])

    def attach(self, volume_id: str, instance_id: str) -> dict[str, Any]:
        return self.ok(self.act(volume_id, "attach", instance_id=instance_id))

    def snapshot(self, volume_id: str, name: str = "snap-1") -> dict[str, Any]:
        response = self.post(f"/v1/volumes/{volume_id}/snapshots", {"name": name})
        assert response.status_code == 202, response.text
        snapshot_id = response.json()["id"]
        done: dict[str, Any] = wait_for(
            lambda: (s := self.get(f"/v1/snapshots/{snapshot_id}").json())["state"] != "pending" and s
        )
        return done


class Backdoor:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        doc = json.loads((ROOT / "generated" / "asyncapi.json").read_text())
        self._components = doc["components"]
        self._schemas = {m["name"]: m["payload"]["$ref"] for m in doc["components"]["messages"].values()}

    def events(self, *types: str, about: str | None = None) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            query = select(OutboxEvent).order_by(OutboxEvent.seq)
            if types:
                query = query.where(OutboxEvent.type.in_(types))
            rows = [row.payload for row in session.scalars(query)]
        for row in rows:
            schema = {"$ref": self._schemas[row["type"]], "components": self._components}
            Draft202012Validator(schema).validate(row)
        if about is not None:
            rows = [r for r in rows if about in (r["data"].get("volume_id"), r["data"].get("snapshot_id"))]
        return rows

    def kinds(self, about: str) -> list[str]:
        return [e["type"] for e in self.events(about=about) if e["type"].startswith(("volume.", "snapshot."))]

    def volumes(self) -> list[Volume]:
        with Session(self.engine) as session:
            return list(session.scalars(select(Volume)))
