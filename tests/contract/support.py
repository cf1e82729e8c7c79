"""The server under contract test and the tenants that call it.

The app is the real one (`hangar.app.create_app`) on a freshly migrated database of its own
(tests/conftest.py's `databases`: SQLite, or PostgreSQL with `--db=postgresql`), with
response validation on and rate limits high enough that thousands of generated requests
from one key and one address are never throttled (the rate limiter has its own tests).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.testclient import TestClient

from hangar.config import ROOT, Settings

SPEC_PATH = ROOT / "generated" / "openapi.json"
PASSWORD = "correct-horse-battery-staple"
# Far above what one contract run sends from one key or one address.
HIGH_LIMIT = 1_000_000


def load_spec() -> dict[str, Any]:
    return json.loads(SPEC_PATH.read_text(encoding="utf-8"))


def contract_settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        validate_responses=True,
        rate_limit_per_minute=HIGH_LIMIT,
        public_rate_limit_per_minute=HIGH_LIMIT,
        # No background relay thread: the contract is the HTTP surface; events have their own tests.
        run_relay=False,
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Tenant:
    """One signed-up organization: its owner's all-scopes key and the ids it owns."""

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
    body = response.json()
    token = body["secret"]
    members = client.get(f"/v1/organizations/{body['organization']['id']}/members", headers=bearer(token))
    assert members.status_code == 200, members.text
    (owner,) = [m for m in members.json()["data"] if m["user_id"] == body["user"]["id"]]
    return Tenant(
        email=email,
        organization_id=body["organization"]["id"],
        user_id=body["user"]["id"],
        api_key_id=body["api_key"]["id"],
        member_id=owner["id"],
        token=token,
    )


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
