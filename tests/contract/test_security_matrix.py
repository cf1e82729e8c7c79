"""The security matrix, generated from the spec: every operation in generated.routing.OPERATIONS
against every way a caller can be wrong.

- public operations answer without a key;
- secured operations: no credentials, a malformed, unknown, tampered, revoked or expired
  key → 401 problem; a key holding every scope but a required one → 403 problem naming it;
- another tenant's id in each path parameter (alone, and all at once) → 404 problem that
  carries nothing of the other tenant's, and leaves the other tenant's data as it was;
- and a control: the same request with the right key succeeds, so the denials above are
  about who is asking, not about a malformed request.

Request bodies are built from the spec's examples (support.ExampleBuilder). A new path
parameter needs a provisioner in PROVISION below; the matrix fails until it has one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from generated.routing import OPERATIONS, Operation
from handlers.identity import keys
from handlers.identity.tables import ApiKey
from hangar.db import utcnow
from hangar.dispatch import HangarApp

from .support import PASSWORD, ExampleBuilder, Tenant, bearer, load_spec, sign_up, unique_email

SPEC = load_spec()
ALL_SCOPES = tuple(SPEC["components"]["schemas"]["Scope"]["enum"])
SECURED = sorted(op_id for op_id, op in OPERATIONS.items() if not op.public)
PUBLIC = sorted(op_id for op_id, op in OPERATIONS.items() if op.public)
SCOPED = [(op_id, scope) for op_id in SECURED for scope in OPERATIONS[op_id].scopes]
WITH_PATH_PARAMS = [
    (op_id, param.name) for op_id in SECURED for param in OPERATIONS[op_id].params if param.location == "path"
]


def _path_params(op: Operation) -> list[str]:
    return [param.name for param in op.params if param.location == "path"]


# -- a caller and its resources ------------------------------------------------------------------


@dataclass
class Party:
    """A tenant plus a way to make fresh resources in it (through the API, as its owner)."""

    http: TestClient
    tenant: Tenant

    def invitation(self) -> dict[str, Any]:
        """inviteMember's answer: the new membership and its one-time invitation token."""
        response = self.http.post(
            f"/v1/organizations/{self.tenant.organization_id}/members",
            json={"email": unique_email("member"), "role": "viewer"},
            headers=self.tenant.headers,
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def invite(self) -> str:
        return str(self.invitation()["member"]["id"])

    def create_key(self, scopes: tuple[str, ...] = ("organization:read",), name: str = "matrix") -> tuple[str, str]:
        """(key id, secret)"""
        response = self.http.post(
            "/v1/api-keys", json={"name": name, "scopes": list(scopes)}, headers=self.tenant.headers
        )
        assert response.status_code == 201, response.text
        body = response.json()
        return str(body["api_key"]["id"]), str(body["secret"])


# How to get an id for each path parameter the spec uses, fresh, in a given party.
PROVISION: dict[str, Callable[[Party], str]] = {
    "organizationId": lambda party: party.tenant.organization_id,
    "memberId": lambda party: party.invite(),
    "apiKeyId": lambda party: party.create_key()[0],
}


# Public operations whose example body cannot succeed on its own (it names state that must
# exist first): how to make a body that can, in a given party.
PUBLIC_BODIES: dict[str, Callable[[Party], dict[str, Any]]] = {
    "acceptInvitation": lambda party: {
        "token": party.invitation()["invitation_token"],
        "password": PASSWORD,
    },
}


@pytest.fixture(scope="module")
def us(http: TestClient) -> Party:
    return Party(http, sign_up(http, "Initech"))


@pytest.fixture(scope="module")
def them(http: TestClient) -> Party:
    # A name and e-mail that would stand out in any response that leaked them.
    return Party(http, sign_up(http, f"Globex-{uuid.uuid4().hex[:8]}"))


def _request(
    http: TestClient, op_id: str, params: dict[str, str], headers: dict[str, str], body: Any = None
) -> httpx.Response:
    op = OPERATIONS[op_id]
    missing = [name for name in _path_params(op) if name not in params]
    assert not missing, f"{op_id}: no value for path parameter(s) {missing}"
    path = op.path.format(**params)
    if body is None:
        body = ExampleBuilder(SPEC).body(op_id)
    return http.request(op.method, path, json=body, headers=headers)


def _ids_for(op_id: str, party: Party) -> dict[str, str]:
    params = {}
    for name in _path_params(OPERATIONS[op_id]):
        assert name in PROVISION, f"{op_id}: path parameter {name!r} has no provisioner in PROVISION"
        params[name] = PROVISION[name](party)
    return params


def _assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    assert {"type", "title", "detail", "request_id"} <= set(problem)
    assert problem["request_id"] == response.headers["x-request-id"]
    return problem


# -- public operations ---------------------------------------------------------------------------


@pytest.mark.parametrize("op_id", PUBLIC)
def test_public_operation_needs_no_key(http: TestClient, us: Party, op_id: str) -> None:
    make_body = PUBLIC_BODIES.get(op_id)
    response = _request(http, op_id, {}, {}, make_body(us) if make_body else None)
    assert response.status_code == OPERATIONS[op_id].success_status, response.text


def test_signup_key_works_at_once(http: TestClient) -> None:
    response = _request(http, "signUp", {}, {})
    assert response.status_code == 201, response.text
    assert http.get("/v1/me", headers=bearer(response.json()["secret"])).status_code == 200


# -- 401: no key, or a key that is not a working key -------------------------------------------


def _tampered(secret: str) -> str:
    last = secret[-1]
    return secret[:-1] + ("A" if last != "A" else "B")


def _revoked(us: Party) -> str:
    key_id, secret = us.create_key()
    assert us.http.delete(f"/v1/api-keys/{key_id}", headers=us.tenant.headers).status_code == 204
    return secret


def _expired(us: Party, app: HangarApp) -> str:
    key_id, secret = us.create_key(ALL_SCOPES)
    # Expiry is compared with the request's clock; moving the stored expiry into the past is
    # the same as waiting for it, without a timed test.
    with app.runtime.sessions() as session:
        key = session.get(ApiKey, uuid.UUID(key_id))
        assert key is not None
        key.expires_at = utcnow() - timedelta(seconds=1)
        session.commit()
    return secret


BAD_CREDENTIALS: dict[str, Callable[[Party, HangarApp], dict[str, str]]] = {
    "no Authorization header": lambda us, app: {},
    "empty bearer": lambda us, app: {"Authorization": "Bearer "},
    "another scheme": lambda us, app: {"Authorization": f"Basic {us.tenant.token}"},
    "not a Hangar key": lambda us, app: bearer("not-a-hangar-key"),
    "well-formed but unknown": lambda us, app: bearer(keys.generate().token),
    "tampered checksum": lambda us, app: bearer(_tampered(us.tenant.token)),
    "revoked": lambda us, app: bearer(_revoked(us)),
    "expired": lambda us, app: bearer(_expired(us, app)),
}


@pytest.mark.parametrize("credential", sorted(BAD_CREDENTIALS))
@pytest.mark.parametrize("op_id", SECURED)
def test_secured_operation_rejects_bad_credentials(
    us: Party, contract_app: HangarApp, op_id: str, credential: str
) -> None:
    headers = BAD_CREDENTIALS[credential](us, contract_app)
    response = _request(us.http, op_id, _ids_for(op_id, us), headers)
    _assert_problem(response, 401)
    assert response.headers["www-authenticate"].lower().startswith("bearer")


# -- 403: a key without a required scope ---------------------------------------------------------


@pytest.mark.parametrize(("op_id", "scope"), SCOPED, ids=[f"{op}-{scope}" for op, scope in SCOPED])
def test_key_without_a_required_scope_is_forbidden(us: Party, op_id: str, scope: str) -> None:
    _, secret = us.create_key(tuple(s for s in ALL_SCOPES if s != scope))
    response = _request(us.http, op_id, _ids_for(op_id, us), bearer(secret))
    problem = _assert_problem(response, 403)
    assert scope in problem["detail"]


def test_every_scope_in_the_spec_is_grantable(us: Party) -> None:
    # The 403 matrix creates keys with all scopes but one; that presumes the owner holds them all.
    _, secret = us.create_key(ALL_SCOPES)
    me = us.http.get("/v1/me", headers=bearer(secret)).json()
    assert sorted(me["api_key"]["scopes"]) == sorted(ALL_SCOPES)


# -- 404: another tenant's ids -------------------------------------------------------------------


def _their_fingerprints(them: Party, sent: dict[str, str]) -> set[str]:
    """What of theirs must never appear in our response (ids we sent ourselves excepted)."""
    me = them.http.get("/v1/me", headers=them.tenant.headers).json()
    marks = {
        me["organization"]["name"],
        them.tenant.email,
        them.tenant.organization_id,
        them.tenant.user_id,
        them.tenant.api_key_id,
        them.tenant.member_id,
    }
    return marks - set(sent.values())


def _their_state(them: Party) -> dict[str, Any]:
    h = them.tenant.headers
    org = them.http.get(f"/v1/organizations/{them.tenant.organization_id}", headers=h)
    members = them.http.get(f"/v1/organizations/{them.tenant.organization_id}/members?limit=200", headers=h)
    api_keys = them.http.get("/v1/api-keys?limit=200", headers=h)
    assert org.status_code == members.status_code == api_keys.status_code == 200
    return {
        "organization": org.json(),
        "members": members.json()["data"],
        # last_used_at moves whenever they use a key (as this very check does): compare the rest.
        "api_keys": [{k: v for k, v in key.items() if k != "last_used_at"} for key in api_keys.json()["data"]],
    }


def _assert_isolated(us: Party, them: Party, op_id: str, params: dict[str, str]) -> None:
    before = _their_state(them)
    response = _request(us.http, op_id, params, us.tenant.headers)
    _assert_problem(response, 404)
    leaked = {mark for mark in _their_fingerprints(them, params) if mark in response.text}
    assert not leaked, f"{op_id}: the 404 carries the other tenant's data: {leaked}"
    assert _their_state(them) == before, f"{op_id} changed another tenant's data"


@pytest.mark.parametrize(("op_id", "param"), WITH_PATH_PARAMS, ids=[f"{op}-{p}" for op, p in WITH_PATH_PARAMS])
def test_another_tenants_id_is_not_found(us: Party, them: Party, op_id: str, param: str) -> None:
    params = _ids_for(op_id, us)
    params[param] = PROVISION[param](them)
    _assert_isolated(us, them, op_id, params)


@pytest.mark.parametrize("op_id", sorted({op for op, _ in WITH_PATH_PARAMS}))
def test_another_tenants_ids_throughout_are_not_found(us: Party, them: Party, op_id: str) -> None:
    _assert_isolated(us, them, op_id, _ids_for(op_id, them))


# -- the control: the right key succeeds with the very same request ----------------------------


@pytest.mark.parametrize("op_id", SECURED)
def test_the_same_request_with_the_right_key_succeeds(us: Party, op_id: str) -> None:
    """A key holding just the declared scopes suffices (plus, for a key-creating request, the
    scopes it asks to grant: a key can never mint one stronger than itself)."""
    op = OPERATIONS[op_id]
    body = ExampleBuilder(SPEC).body(op_id)
    granted = body.get("scopes", []) if isinstance(body, dict) else []
    _, secret = us.create_key(tuple(sorted({*op.scopes, *granted})) or ("organization:read",))
    response = _request(us.http, op_id, _ids_for(op_id, us), bearer(secret))
    assert response.status_code == op.success_status, response.text
