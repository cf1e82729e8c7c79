"""The server under contract test and the tenants that call it.

The app is the real one (`hangar.app.create_app`) on a freshly migrated database of its own
(tests/conftest.py's `databases`: SQLite, or PostgreSQL with `--db=postgresql`), with
response validation on and rate limits high enough that thousands of generated requests
from one key and one address are never throttled (the rate limiter has its own tests).

Launched instances really run: the relay and the provisioning saga run in-process on the
`sim` host driver with short delays, over a simulated fleet big enough (SIM_FLEET_HOSTS,
loaded at the start of the stage) that the launches of a whole run mostly find room, and
with quotas far above what one run launches. Running out of room anyway is a documented
outcome (the instance ends `failed`), not a contract violation.

Callers: a signed-up tenant (`sign_up`), or an operator organization (`operator`), the only
kind whose owner holds the admin:* scopes; it is created out of band, as `hangar-admin
create-operator` does, straight in the database.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from handlers.identity.published import create_operator
from handlers.inventory.catalogue import ensure_catalogue, load_sim_fleet
from hangar.config import ROOT, Settings
from hangar.db import utcnow
from hangar.drivers.sim import sim_fleet
from tests.conftest import PAYMENTS_WEBHOOK_SECRET

SPEC_PATH = ROOT / "generated" / "openapi.json"
PASSWORD = "correct-horse-battery-staple"
# Far above what one contract run sends from one key or one address.
HIGH_LIMIT = 1_000_000
# Far above what one run launches (thousands of generated launches, mostly cpu-2).
HIGH_QUOTA_VCPUS = 100_000
HIGH_QUOTA_GPUS = 10_000
# The simulated fleet loaded for the stage, over the seeded regions: 240 CPU hosts (about
# 40 cpu-2 each) and 60 GPU hosts, so the stateful create → act → terminate sequences find room.
SIM_FLEET_HOSTS = 300
SIM_REGIONS = ("fra1", "ams1", "nyc1")
SIM_FLEET_SEED = 7
# How long a launched instance may take to settle (the sim driver takes ~20 ms a step).
SETTLE_TIMEOUT = 30.0


def load_spec() -> dict[str, Any]:
    return json.loads(SPEC_PATH.read_text(encoding="utf-8"))


def contract_settings(database_url: str, instances_dir: Path) -> Settings:
    return Settings(
        database_url=database_url,
        validate_responses=True,
        rate_limit_per_minute=HIGH_LIMIT,
        public_rate_limit_per_minute=HIGH_LIMIT,
        # The relay and the saga runner in-process (started by the app's lifespan), so a
        # launch is placed, built and booted as in production, on simulated hosts.
        run_relay=True,
        driver="sim",
        sim_delay_ms=20,
        saga_poll_seconds=0.02,
        instances_dir=instances_dir,
        quota_vcpus=HIGH_QUOTA_VCPUS,
        quota_gpus=HIGH_QUOTA_GPUS,
        billing_signup_credit=10_000_000,  # launches need credit (a billing hold each)
        # payments: the suite's webhook secret (the stage signs webhooks with it)
        payments_webhook_secrets=(PAYMENTS_WEBHOOK_SECRET,),
        payments_sandbox_delay_ms=20,
        # terminal: the stateful phase opens many sessions; the cap is not its subject.
        terminal_max_sessions_per_org=HIGH_LIMIT,
    )


def load_fleet(sessions: sessionmaker[Session], hosts: int = SIM_FLEET_HOSTS) -> int:
    """The catalogue (the app's start-up seeds it too, but the hosts need its regions first)
    and the simulated fleet: the number of hosts added (0 when it is there already)."""
    now = utcnow()
    with sessions() as session, session.begin():
        ensure_catalogue(session, driver="sim", now=now, seed_hosts=False)
        return load_sim_fleet(session, sim_fleet(hosts, list(SIM_REGIONS), SIM_FLEET_SEED), now=now)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Tenant:
    """One organization (signed up, or an operator's): its owner's all-scopes key and the
    ids it owns."""

    email: str
    organization_id: str
    user_id: str
    api_key_id: str
    member_id: str  # the owner's membership
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


def unique_email(label: str = "owner") -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}@example.com"


def sign_up(client: TestClient, organization: str = "Acme") -> Tenant:
    email = unique_email()
    response = client.post("/v1/signup", json={"email": email, "password": PASSWORD, "organization": organization})
    assert response.status_code == 201, response.text
    return _tenant_of(client, email, response.json()["secret"])


def _tenant_of(client: TestClient, email: str, token: str) -> Tenant:
    me = client.get("/v1/me", headers=bearer(token))
    assert me.status_code == 200, me.text
    body = me.json()
    org_id, user_id = body["organization"]["id"], body["user"]["id"]
    members = client.get(f"/v1/organizations/{org_id}/members", headers=bearer(token))
    assert members.status_code == 200, members.text
    (owner,) = [m for m in members.json()["data"] if m["user_id"] == user_id]
    return Tenant(
        email=email,
        organization_id=org_id,
        user_id=user_id,
        api_key_id=body["api_key"]["id"],
        member_id=owner["id"],
        token=token,
    )


def make_operator(sessions: sessionmaker[Session], organization: str = "Hangar Operations") -> tuple[str, str]:
    """A new operator organization, made out of band like `hangar-admin create-operator`:
    (its owner's e-mail, the owner's first key, which holds every scope, admin:* included)."""
    with sessions() as session, session.begin():
        _, email, secret = create_operator(
            session, email=unique_email("operator"), organization_name=organization, now=utcnow()
        )
    return email, secret


def operator(client: TestClient, sessions: sessionmaker[Session], organization: str = "Hangar Operations") -> Tenant:
    """An operator organization's owner, as a Tenant (see make_operator)."""
    email, secret = make_operator(sessions, organization)
    return _tenant_of(client, email, secret)


# -- instances -----------------------------------------------------------------------------------

LAUNCH = {"name": "contract", "region": "fra1", "instance_type": "cpu-1", "image": "ubuntu-24.04"}


def launch(client: TestClient, headers: dict[str, str], **overrides: str) -> dict[str, Any]:
    """createInstance's answer ({instance, action}) for a small instance (LAUNCH, overridden)."""
    response = client.post("/v1/instances", json={**LAUNCH, **overrides}, headers=headers)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def settle(
    client: TestClient, headers: dict[str, str], instance_id: str, timeout: float = SETTLE_TIMEOUT
) -> dict[str, Any]:
    """Poll getInstance until no action holds the instance; the instance then."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        response = client.get(f"/v1/instances/{instance_id}", headers=headers)
        assert response.status_code == 200, response.text
        instance: dict[str, Any] = response.json()
        if not instance["locked"]:
            return instance
        assert time.monotonic() < deadline, f"instance {instance_id} still {instance['state']} after {timeout} s"
        time.sleep(pause)
        pause = min(pause * 1.5, 0.2)


def running_instance(client: TestClient, headers: dict[str, str], **overrides: str) -> dict[str, Any]:
    """A fresh instance, waited for until it runs: createInstance's answer."""
    launched = launch(client, headers, **overrides)
    instance = settle(client, headers, launched["instance"]["id"])
    assert instance["state"] == "running", instance
    return launched


class ExampleBuilder:
    """A valid request body for an operation, built from the spec's own examples, so the
    security tests exercise auth and tenancy rather than validation.

    Values that must be fresh to be valid (an e-mail nobody used yet, a date still in the
    future) are made fresh; everything else is the spec's `example`, or the first enum value.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self._spec = spec

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            node: Any = self._spec
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        return schema

    def value(self, schema: dict[str, Any]) -> Any:
        schema = self._resolve(schema)
        if "allOf" in schema:
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                merged.update(self._resolve(part))
            return self.value(merged)
        fmt = schema.get("format")
        if fmt == "email":
            return unique_email("example")
        if fmt == "date-time":
            return (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0).isoformat()
        if schema.get("type") == "object" or "properties" in schema:
            # Every declared property: optional ones too, so they are exercised as well.
            return {name: self.value(prop) for name, prop in schema.get("properties", {}).items()}
        if schema.get("type") == "array":
            return [self.value(schema["items"])]
        if "example" in schema:
            return schema["example"]
        if "enum" in schema:
            return schema["enum"][0]
        raise AssertionError(f"no example to build a value from: {schema}")

    def body(self, operation_id: str) -> Any:
        for item in self._spec["paths"].values():
            for operation in item.values():
                if isinstance(operation, dict) and operation.get("operationId") == operation_id:
                    content = operation.get("requestBody", {}).get("content", {})
                    if "application/json" not in content:
                        return None
                    return self.value(content["application/json"]["schema"])
        raise KeyError(operation_id)
