"""Roles → scope caps, and who may grant or manage what."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handlers.identity import policy

ROOT = Path(__file__).resolve().parents[3]


def _spec_enum(name: str) -> set[str]:
    doc = json.loads((ROOT / "generated" / "openapi.json").read_text())
    return set(doc["components"]["schemas"][name]["enum"])


def test_scopes_and_roles_match_the_contract() -> None:
    assert set(policy.SCOPES) == _spec_enum("Scope")
    assert set(policy.ROLES) == _spec_enum("Role") == set(policy.ROLE_CAPS)


def test_every_scope_an_operation_requires_exists() -> None:
    doc = json.loads((ROOT / "generated" / "openapi.json").read_text())
    required = {
        scope
        for item in doc["paths"].values()
        for op in item.values()
        if isinstance(op, dict)
        for req in op.get("security", [])
        for scopes in req.values()
        for scope in scopes
    }
    assert required <= policy.SCOPES


def test_owner_and_admin_hold_everything() -> None:
    assert policy.caps("owner") == policy.caps("admin") == policy.TENANT_SCOPES


def test_member_lacks_the_management_writes() -> None:
    caps = policy.caps("member")
    assert not caps & {"members:write", "billing:write", "organization:write"}
    assert {"instances:write", "instances:console", "volumes:write", "api-keys:write", "billing:read"} <= caps


def test_billing_role() -> None:
    assert policy.caps("billing") == {
        "billing:read",
        "billing:write",
        "organization:read",
        "members:read",
        "api-keys:read",
        "api-keys:write",
    }


def test_viewer_reads_everything_and_manages_only_own_keys() -> None:
    caps = policy.caps("viewer")
    reads = {s for s in policy.TENANT_SCOPES if s.endswith(":read")}
    assert caps == reads | {"api-keys:write"}
    assert not policy.sees_all_keys("viewer")


def test_unknown_role_fails_closed() -> None:
    assert policy.caps("root") == frozenset()
    assert policy.effective_scopes(["instances:read"], "root") == frozenset()


def test_effective_scopes_intersect_key_and_role() -> None:
    key = ["instances:write", "members:write", "billing:read"]
    assert policy.effective_scopes(key, "owner") == set(key)
    assert policy.effective_scopes(key, "member") == {"instances:write", "billing:read"}
    assert policy.effective_scopes(key, "viewer") == {"billing:read"}


@pytest.mark.parametrize(
    ("actor", "role", "allowed"),
    [("owner", "owner", True), ("admin", "owner", False), ("admin", "admin", True), ("admin", "viewer", True)],
)
def test_only_owners_grant_owner(actor: str, role: str, allowed: bool) -> None:
    assert policy.may_grant(actor, role) is allowed


@pytest.mark.parametrize(
    ("actor", "target", "allowed"),
    [("owner", "owner", True), ("admin", "owner", False), ("admin", "member", True), ("owner", "admin", True)],
)
def test_only_owners_touch_owners(actor: str, target: str, allowed: bool) -> None:
    assert policy.may_manage(actor, target) is allowed


def test_only_owners_and_admins_see_all_keys() -> None:
    assert {r for r in policy.ROLES if policy.sees_all_keys(r)} == {"owner", "admin"}


def test_only_operator_owners_and_admins_hold_admin_scopes() -> None:
    assert {"admin:read", "admin:write"} == policy.OPERATOR_SCOPES
    for role in policy.ROLES:
        assert not policy.caps(role) & policy.OPERATOR_SCOPES, role
    assert policy.caps("owner", operator=True) == policy.caps("admin", operator=True) == policy.SCOPES
    for role in ("member", "billing", "viewer"):
        assert not policy.caps(role, operator=True) & policy.OPERATOR_SCOPES, role
    assert policy.effective_scopes(["admin:read", "instances:read"], "owner") == {"instances:read"}
    assert policy.effective_scopes(["admin:read"], "owner", operator=True) == {"admin:read"}
