"""The real server: generated routing, the identity handlers and the runtime together, in
process (TestClient) and as the `hangar-server` process."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text

from hangar.config import ROOT

SIGNUP = {"password": "correct-horse-battery-staple", "organization": "Acme"}


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_signup_then_authenticated_calls(client: Any, signup: Any) -> None:
    tenant = signup()
    me = client.get("/v1/me", headers=tenant.headers)
    assert me.status_code == 200, me.text
    assert me.json()["organization"]["id"] == tenant.organization_id
    assert me.headers["ratelimit-limit"] and me.headers["x-request-id"]
    keys = client.get("/v1/api-keys?limit=10", headers=tenant.headers)
    assert keys.status_code == 200 and keys.json()["next_cursor"] is None


def test_security_basics(client: Any, signup: Any) -> None:
    tenant = signup()
    problem(client.get("/v1/me"), 401)
    problem(client.get("/v1/me", headers={"Authorization": "Bearer hgr_nope_nope"}), 401)
    read_only = client.post("/v1/api-keys", headers=tenant.headers, json={"name": "ro", "scopes": ["api-keys:read"]})
    assert read_only.status_code == 201, read_only.text
    ro = {"Authorization": f"Bearer {read_only.json()['secret']}"}
    body = problem(client.post("/v1/api-keys", headers=ro, json={"name": "x", "scopes": ["api-keys:read"]}), 403)
    assert "api-keys:write" in body["detail"]
    # Another tenant's resource is a 404.
    other = signup()
    problem(client.get(f"/v1/organizations/{other.organization_id}", headers=tenant.headers), 404)
    problem(client.get("/v1/api-keys/not-a-uuid", headers=tenant.headers), 400)


def test_signup_replays_with_its_idempotency_key(client: Any) -> None:
    key = str(uuid.uuid4())
    body = {**SIGNUP, "email": f"replay-{key[:8]}@example.com"}
    first = client.post("/v1/signup", headers={"Idempotency-Key": key}, json=body)
    again = client.post("/v1/signup", headers={"Idempotency-Key": key}, json=body)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    problem(client.post("/v1/signup", headers={"Idempotency-Key": key}, json={**body, "organization": "Other"}), 422)


# -- as a process -------------------------------------------------------------------------------


def test_live_server_serves_the_bundles_and_the_api(live_server: Any) -> None:
    spec = httpx.get(live_server.url + "/v1/openapi.json")
    assert spec.content == (ROOT / "generated" / "openapi.json").read_bytes()
    assert (
        httpx.get(live_server.url + "/v1/asyncapi.json").content == (ROOT / "generated" / "asyncapi.json").read_bytes()
    )
    assert httpx.get(live_server.url + "/docs/").status_code == 200
    email = f"live-{uuid.uuid4().hex[:8]}@example.com"
    created = httpx.post(live_server.url + "/v1/signup", json={**SIGNUP, "email": email}, timeout=30)
    assert created.status_code == 201, created.text
    me = httpx.get(live_server.url + "/v1/me", headers={"Authorization": f"Bearer {created.json()['secret']}"})
    assert me.status_code == 200 and me.json()["user"]["email"] == email
    problem(httpx.get(live_server.url + "/v1/nope"), 404)


@pytest.mark.postgres
def test_concurrent_signups_with_one_key_create_one_organization(live_server: Any) -> None:
    """Real HTTP, real threads, the real handler: one key fired at once from many threads."""
    key = str(uuid.uuid4())
    body = {**SIGNUP, "email": f"race-{key[:8]}@example.com", "organization": f"Race {key[:8]}"}
    start = threading.Barrier(6)

    def fire(_: int) -> httpx.Response:
        start.wait()
        return httpx.post(live_server.url + "/v1/signup", headers={"Idempotency-Key": key}, json=body, timeout=60)

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(fire, range(6)))
    originals = [r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers]
    assert len(originals) == 1, [(r.status_code, r.text[:100]) for r in responses]
    for response in responses:
        assert response.status_code in (201, 409), response.text
        if response.status_code == 201:
            assert response.json() == originals[0].json()
    engine = create_engine(live_server.database_url)
    with engine.connect() as conn:
        count = conn.scalar(
            select(func.count()).select_from(text("organizations")).where(text("name = :n")),
            {"n": body["organization"]},
        )
    engine.dispose()
    assert count == 1


def test_hangar_server_refuses_an_unmigrated_database(tmp_path: Path, hangar_server_command: list[str]) -> None:
    env = {**os.environ, "HANGAR_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(hangar_server_command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "not migrated" in result.stderr and "make migrate" in result.stderr
