"""The platform operator: created out of band by `hangar-admin create-operator`, the only way
to hold admin:* scopes. Tenants can never obtain them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hangar import admin


def _create_operator(monkeypatch: pytest.MonkeyPatch, database_url: str, capsys: Any, email: str) -> tuple[int, str]:
    monkeypatch.setenv("HANGAR_DATABASE_URL", database_url)
    code = admin.main(["create-operator", "--email", email])
    out = capsys.readouterr()
    return code, (out.out.strip().splitlines()[-1] if code == 0 else out.err)


def test_operator_key_holds_admin_scopes(
    client: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    code, secret = _create_operator(monkeypatch, database_url, capsys, "ops@example.com")
    assert code == 0 and secret.startswith("hgr_")
    me = client.get("/v1/me", headers={"Authorization": f"Bearer {secret}"})
    assert me.status_code == 200, me.text
    scopes = set(me.json()["api_key"]["scopes"])
    assert {"admin:read", "admin:write", "instances:write"} <= scopes

    # The operator can hand an admin scope to a narrower key of its own.
    made = client.post(
        "/v1/api-keys",
        json={"name": "read-only ops", "scopes": ["admin:read"]},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert made.status_code == 201, made.text
    assert made.json()["api_key"]["scopes"] == ["admin:read"]


def test_the_same_address_twice_is_refused(
    client: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    assert _create_operator(monkeypatch, database_url, capsys, "ops2@example.com")[0] == 0
    code, err = _create_operator(monkeypatch, database_url, capsys, "OPS2@example.com")
    assert code == 1 and "already exists" in err


def test_tenants_never_get_admin_scopes(client: Any, signup: Callable[..., Any]) -> None:
    tenant = signup()
    me = client.get("/v1/me", headers=tenant.headers).json()
    assert not {s for s in me["api_key"]["scopes"] if s.startswith("admin:")}
    refused = client.post("/v1/api-keys", json={"name": "sneaky", "scopes": ["admin:write"]}, headers=tenant.headers)
    assert refused.status_code == 403
    assert refused.json()["type"].endswith("/scope-escalation")
