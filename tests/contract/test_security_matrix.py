"""The security matrix, generated from the spec: every operation in generated.routing.OPERATIONS
against every way a caller can be wrong.

- public operations answer without a key;
- secured operations: no credentials, a malformed, unknown, tampered, revoked or expired
  key → 401 problem; a key holding every scope but a required one → 403 problem naming it;
- the operator operations (admin:* scopes) → 403 for a tenant's owner holding every scope
  a tenant can hold;
- another tenant's id in each path parameter (alone, and all at once) → 404 problem that
  carries nothing of the other tenant's, and leaves the other tenant's data as it was;
- and a control: the same request with the right key succeeds, so the denials above are
  about who is asking, not about a malformed request.

Who asks: `us` is an operator organization (the only kind whose owner can hold every scope,
admin:* included, so every 403 and every control can be tried), `them` a plain tenant.

Request bodies are built from the spec's examples (support.ExampleBuilder), or by BODIES
where an example cannot succeed as it stands. A new path parameter needs a provisioner in
PROVISION below; the matrix fails until it has one.
"""

from __future__ import annotations

import json
import time
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
from handlers.payments import signing  # payments
from hangar.db import utcnow
from hangar.dispatch import HangarApp
from tests.conftest import PAYMENTS_WEBHOOK_SECRET  # payments

from .support import (
    PASSWORD,
    ExampleBuilder,
    Tenant,
    bearer,
    load_spec,
    operator,
    running_instance,
    sign_up,
    unique_email,
)

SPEC = load_spec()
ALL_SCOPES = tuple(SPEC["components"]["schemas"]["Scope"]["enum"])
ADMIN_SCOPES = frozenset(scope for scope in ALL_SCOPES if scope.startswith("admin:"))
SECURED = sorted(op_id for op_id, op in OPERATIONS.items() if not op.public)
PUBLIC = sorted(op_id for op_id, op in OPERATIONS.items() if op.public)
ADMIN = sorted(op_id for op_id in SECURED if ADMIN_SCOPES & set(OPERATIONS[op_id].scopes))
SCOPED = [(op_id, scope) for op_id in SECURED for scope in OPERATIONS[op_id].scopes]
# Path parameters naming platform-global things, not a tenant's: hosts are the platform's
# fleet (every operator sees every host) and a resource class is a word of the inventory
# model. There is no "another tenant's host" for a 404 to hide, so these parameters are left
# out of the cross-tenant tests; who may name them at all is the admin:* scopes' business
# (test_a_tenant_owner_is_refused_every_operator_operation).
PLATFORM_GLOBAL = frozenset({"hostId", "resourceClass"})
# An operator operation's organizationId names any organization on purpose (billing's credit
# limit and adjustments): the operator is meant to reach another organization there, so it is
# no cross-tenant case either; that a tenant cannot is, again, the admin:* scopes' business.
OPERATOR_TARGETS = frozenset({"organizationId"})
WITH_PATH_PARAMS = [
    (op_id, param.name)
    for op_id in SECURED
    for param in OPERATIONS[op_id].params
    if param.location == "path"
    and param.name not in PLATFORM_GLOBAL
    and not (op_id in ADMIN and param.name in OPERATOR_TARGETS)
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

    def launch(self) -> dict[str, Any]:
        """createInstance's answer for a fresh instance, waited for until it runs: the
        controls stop and terminate it, which a pending (locked) instance refuses; and a
        settled instance keeps still while the isolation tests compare its state."""
        return running_instance(self.http, self.tenant.headers, name=f"i-{uuid.uuid4().hex[:12]}")

    def terminal_session(self) -> str:
        """A fresh terminal session (pending) into a fresh running instance (terminal)."""
        instance_id = str(self.launch()["instance"]["id"])
        response = self.http.post(
            f"/v1/instances/{instance_id}/terminal-sessions", json={}, headers=self.tenant.headers
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def host(self) -> str:
        """A fresh host (the party must be an operator)."""
        response = self.http.post("/v1/admin/hosts", json=_fresh_host(self, {}), headers=self.tenant.headers)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def host_generation(self, host_id: str) -> int:
        response = self.http.get(f"/v1/admin/hosts/{host_id}", headers=self.tenant.headers)
        assert response.status_code == 200, response.text
        return int(response.json()["generation"])


# How to get an id for each path parameter the spec uses, fresh, in a given party.
PROVISION: dict[str, Callable[[Party], str]] = {
    "organizationId": lambda party: party.tenant.organization_id,
    "memberId": lambda party: party.invite(),
    "apiKeyId": lambda party: party.create_key()[0],
    "instanceId": lambda party: str(party.launch()["instance"]["id"]),
    "actionId": lambda party: str(party.launch()["action"]["id"]),  # the create action, succeeded
    "hostId": lambda party: party.host(),
    # Every host party.host() makes has a VCPU inventory (the example's).
    "resourceClass": lambda party: "VCPU",
    # terminal: a pending session into a fresh running instance.
    "sessionId": lambda party: party.terminal_session(),
}


def _fresh_host(party: Party, ids: dict[str, str]) -> dict[str, Any]:
    # The example, under a name nobody has taken (a taken name is a 409).
    return {**ExampleBuilder(SPEC).body("createHost"), "name": f"matrix-{uuid.uuid4().hex[:16]}"}


# Operations whose example body cannot succeed as it stands (it names state that must exist
# first, or must be fresh): how to make one that can, for a given party and path ids.
BODIES: dict[str, Callable[[Party, dict[str, str]], Any]] = {
    "acceptInvitation": lambda party, ids: {
        "token": party.invitation()["invitation_token"],
        "password": PASSWORD,
    },
    "createHost": _fresh_host,
    # The example's `generation` is whatever the spec says; the host's is read just before.
    "updateHostInventory": lambda party, ids: {
        **ExampleBuilder(SPEC).body("updateHostInventory"),
        "generation": party.host_generation(ids["hostId"]),
    },
}


def _body(op_id: str, party: Party, ids: dict[str, str]) -> Any:
    make = BODIES.get(op_id)
    return make(party, ids) if make is not None else ExampleBuilder(SPEC).body(op_id)


@pytest.fixture(scope="module")
def us(http: TestClient, contract_app: HangarApp) -> Party:
    return Party(http, operator(http, contract_app.runtime.sessions, "Initech Operations"))


@pytest.fixture(scope="module")
def them(http: TestClient) -> Party:
    # A name and e-mail that would stand out in any response that leaked them.
    return Party(http, sign_up(http, f"Globex-{uuid.uuid4().hex[:8]}"))


def _request(
    http: TestClient, op_id: str, params: dict[str, str], headers: dict[str, str], body: Any
) -> httpx.Response:
    op = OPERATIONS[op_id]
    missing = [name for name in _path_params(op) if name not in params]
    assert not missing, f"{op_id}: no value for path parameter(s) {missing}"
    path = op.path.format(**params)
    if op_id in SIGNED:  # payments: the credential is a signature over the exact bytes
        raw = json.dumps(body, separators=(",", ":")).encode()
        signed = {**headers, "Content-Type": "application/json", **SIGNED[op_id](raw)}
        return http.request(op.method, path, content=raw, headers=signed)
    return http.request(op.method, path, json=body, headers=headers)


def _send(us: Party, op_id: str, params: dict[str, str], headers: dict[str, str]) -> httpx.Response:
    """The operation's request as `us` would make it (ids and body), with these headers."""
    return _request(us.http, op_id, params, headers, _body(op_id, us, params))


def _ids_for(op_id: str, party: Party, tenant: Party | None = None) -> dict[str, str]:
    """Fresh ids for the operation's path parameters, made by `party`; with `tenant`, the
    tenant-owned ones made by `tenant` instead (platform-global ones stay `party`'s)."""
    params = {}
    for name in _path_params(OPERATIONS[op_id]):
        assert name in PROVISION, f"{op_id}: path parameter {name!r} has no provisioner in PROVISION"
        maker = tenant if tenant is not None and name not in PLATFORM_GLOBAL else party
        params[name] = PROVISION[name](maker)
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
def test_public_operation_needs_no_key(us: Party, op_id: str) -> None:
    response = _send(us, op_id, {}, {})
    assert response.status_code == OPERATIONS[op_id].success_status, response.text


def test_signup_key_works_at_once(http: TestClient, us: Party) -> None:
    response = _send(us, "signUp", {}, {})
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
    response = _send(us, op_id, _ids_for(op_id, us), headers)
    _assert_problem(response, 401)
    assert response.headers["www-authenticate"].lower().startswith("bearer")


# -- 403: a key without a required scope ---------------------------------------------------------


@pytest.mark.parametrize(("op_id", "scope"), SCOPED, ids=[f"{op}-{scope}" for op, scope in SCOPED])
def test_key_without_a_required_scope_is_forbidden(us: Party, op_id: str, scope: str) -> None:
    _, secret = us.create_key(tuple(s for s in ALL_SCOPES if s != scope))
    response = _send(us, op_id, _ids_for(op_id, us), bearer(secret))
    problem = _assert_problem(response, 403)
    assert scope in problem["detail"]


def test_every_scope_in_the_spec_is_grantable(us: Party) -> None:
    # The 403 matrix creates keys with all scopes but one; that presumes the owner holds them
    # all (an operator's owner does; a tenant's never holds admin:*, see below).
    _, secret = us.create_key(ALL_SCOPES)
    me = us.http.get("/v1/me", headers=bearer(secret)).json()
    assert sorted(me["api_key"]["scopes"]) == sorted(ALL_SCOPES)


def test_a_tenant_owner_holds_every_scope_but_the_operators(them: Party) -> None:
    me = them.http.get("/v1/me", headers=them.tenant.headers).json()
    assert me["role"] == "owner"
    assert sorted(me["api_key"]["scopes"]) == sorted(set(ALL_SCOPES) - ADMIN_SCOPES)


@pytest.mark.parametrize("op_id", ADMIN)
def test_a_tenant_owner_is_refused_every_operator_operation(us: Party, them: Party, op_id: str) -> None:
    """The operator API is out of reach of any tenant, however powerful within its own
    organization: its owner's key (every tenant scope) gets 403 naming the admin scope, for
    the very request that succeeds for an operator (the control below)."""
    response = _send(us, op_id, _ids_for(op_id, us), them.tenant.headers)
    problem = _assert_problem(response, 403)
    assert set(OPERATIONS[op_id].scopes) & ADMIN_SCOPES
    for scope in set(OPERATIONS[op_id].scopes) & ADMIN_SCOPES:
        assert scope in problem["detail"]


# -- 404: another tenant's ids -------------------------------------------------------------------


def _their_fingerprints(them: Party, state: dict[str, Any], sent: dict[str, str]) -> set[str]:
    """What of theirs must never appear in our response (ids we sent ourselves excepted)."""
    marks = {
        state["organization"]["name"],
        them.tenant.email,
        them.tenant.organization_id,
        them.tenant.user_id,
        them.tenant.api_key_id,
        them.tenant.member_id,
    }
    for instance in state["instances"]:
        marks |= {instance["id"], instance["name"]}
    marks |= {action["id"] for actions in state["actions"].values() for action in actions}
    return marks - set(sent.values())


def _their_state(them: Party) -> dict[str, Any]:
    h = them.tenant.headers
    org = them.http.get(f"/v1/organizations/{them.tenant.organization_id}", headers=h)
    members = them.http.get(f"/v1/organizations/{them.tenant.organization_id}/members?limit=200", headers=h)
    api_keys = them.http.get("/v1/api-keys?limit=200", headers=h)
    instances = them.http.get("/v1/instances?limit=200", headers=h)
    assert org.status_code == members.status_code == api_keys.status_code == instances.status_code == 200
    actions = {}
    for instance in instances.json()["data"]:
        listed = them.http.get(f"/v1/instances/{instance['id']}/actions?limit=200", headers=h)
        assert listed.status_code == 200, listed.text
        actions[instance["id"]] = listed.json()["data"]
    return {
        "organization": org.json(),
        "members": members.json()["data"],
        # last_used_at moves whenever they use a key (as this very check does): compare the rest.
        "api_keys": [{k: v for k, v in key.items() if k != "last_used_at"} for key in api_keys.json()["data"]],
        # Their instances are settled (PROVISION waits for each to run), so they keep still
        # unless someone acts on them.
        "instances": instances.json()["data"],
        "actions": actions,
    }


def _assert_isolated(us: Party, them: Party, op_id: str, params: dict[str, str]) -> None:
    body = _body(op_id, us, params)
    before = _their_state(them)
    response = _request(us.http, op_id, params, us.tenant.headers, body)
    _assert_problem(response, 404)
    leaked = {mark for mark in _their_fingerprints(them, before, params) if mark in response.text}
    assert not leaked, f"{op_id}: the 404 carries the other tenant's data: {leaked}"
    assert _their_state(them) == before, f"{op_id} changed another tenant's data"


@pytest.mark.parametrize(("op_id", "param"), WITH_PATH_PARAMS, ids=[f"{op}-{p}" for op, p in WITH_PATH_PARAMS])
def test_another_tenants_id_is_not_found(us: Party, them: Party, op_id: str, param: str) -> None:
    params = _ids_for(op_id, us)
    params[param] = PROVISION[param](them)
    _assert_isolated(us, them, op_id, params)


@pytest.mark.parametrize("op_id", sorted({op for op, _ in WITH_PATH_PARAMS}))
def test_another_tenants_ids_throughout_are_not_found(us: Party, them: Party, op_id: str) -> None:
    _assert_isolated(us, them, op_id, _ids_for(op_id, us, tenant=them))


# -- the control: the right key succeeds with the very same request ----------------------------


@pytest.mark.parametrize("op_id", SECURED)
def test_the_same_request_with_the_right_key_succeeds(us: Party, op_id: str) -> None:
    """A key holding just the declared scopes suffices (plus, for a key-creating request, the
    scopes it asks to grant: a key can never mint one stronger than itself)."""
    op = OPERATIONS[op_id]
    params = _ids_for(op_id, us)
    body = _body(op_id, us, params)
    granted = body.get("scopes", []) if isinstance(body, dict) else []
    _, secret = us.create_key(tuple(sorted({*op.scopes, *granted})) or ("organization:read",))
    response = _request(us.http, op_id, params, bearer(secret), body)
    assert response.status_code == op.success_status, response.text


# -- storage: volumes, their actions, snapshots ---------------------------------------


def _storage_wait(party: Party, path: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        response = party.http.get(path, headers=party.tenant.headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if done(body):
            return body
        assert time.monotonic() < deadline, f"{path} never settled: {body}"
        time.sleep(0.02)


def _storage_volume(party: Party) -> dict[str, Any]:
    """createVolume's answer for a fresh volume, waited for until it is available (the
    controls resize and delete it, which a creating (locked) volume refuses)."""
    response = party.http.post(
        "/v1/volumes",
        json={"name": f"m-{uuid.uuid4().hex[:12]}", "region": "fra1", "size_gib": 10},
        headers=party.tenant.headers,
    )
    assert response.status_code == 202, response.text
    launched: dict[str, Any] = response.json()
    _storage_wait(party, f"/v1/volumes/{launched['volume']['id']}", lambda v: v["state"] == "available")
    return launched


def _storage_snapshot(party: Party) -> str:
    volume_id = _storage_volume(party)["volume"]["id"]
    response = party.http.post(f"/v1/volumes/{volume_id}/snapshots", json={"name": "m"}, headers=party.tenant.headers)
    assert response.status_code == 202, response.text
    snapshot_id = str(response.json()["id"])
    _storage_wait(party, f"/v1/snapshots/{snapshot_id}", lambda s: s["state"] == "available")
    return snapshot_id


PROVISION.update(
    {
        "volumeId": lambda party: str(_storage_volume(party)["volume"]["id"]),
        "volumeActionId": lambda party: str(_storage_volume(party)["action"]["id"]),  # the create, succeeded
        "snapshotId": _storage_snapshot,
    }
)
BODIES.update(
    {
        # A fresh name (a live volume's name is taken in its region), no snapshot to restore.
        "createVolume": lambda party, ids: {"name": f"m-{uuid.uuid4().hex[:12]}", "region": "fra1", "size_gib": 10},
        # The example attaches to an instance that does not exist; a resize (grow) needs nothing else.
        "createVolumeAction": lambda party, ids: {"type": "resize", "size_gib": 20},
    }
)


# -- billing: ledger --------------------------------------------------------------------


def _statement_id(party: Party) -> str:
    """The party's current month's statement (billing opens the wallet on organization.created,
    delivered just after the signup: wait for the list to have it)."""
    deadline = time.monotonic() + 30
    while True:
        response = party.http.get("/v1/billing/statements", headers=party.tenant.headers)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        if data:
            return str(data[0]["id"])
        assert time.monotonic() < deadline, "the wallet never opened"
        time.sleep(0.02)


PROVISION.update({"statementId": _statement_id})


# -- payments: payment methods, top-ups, refunds, the signed sandbox webhook ----------

GOOD_CARD = "4242424242424242"


def _payments_top_up(party: Party, *, confirm: bool) -> dict[str, Any]:
    response = party.http.post(
        "/v1/top-ups", json={"amount": 1000, "card": GOOD_CARD, "confirm": confirm}, headers=party.tenant.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _payments_method(party: Party) -> str:
    response = party.http.post(
        "/v1/payment-methods",
        json={"number": GOOD_CARD, "exp_month": 12, "exp_year": 2099, "cvc": "123"},
        headers=party.tenant.headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _payments_refundable(party: Party, ids: dict[str, str]) -> dict[str, Any]:
    """A refund body for ids["topUpId"], after confirming it and waiting for the provider's
    webhook to make it succeed — when it is `party`'s; another tenant's id is left alone (the
    404 under test)."""
    top_up_id = ids["topUpId"]
    if party.http.post(f"/v1/top-ups/{top_up_id}/confirm", headers=party.tenant.headers).status_code == 200:
        deadline = time.monotonic() + 30
        while party.http.get(f"/v1/top-ups/{top_up_id}", headers=party.tenant.headers).json()["status"] != "succeeded":
            assert time.monotonic() < deadline, f"top-up {top_up_id} never succeeded"
            time.sleep(0.02)
    return {"amount": 100}


def _payments_event(party: Party, ids: dict[str, str]) -> dict[str, Any]:
    """A `succeeded` event for a fresh processing top-up of `party`'s (the sandbox's own event
    for it may come first; then this one is recorded and ignored — still a 200)."""
    top_up = _payments_top_up(party, confirm=True)
    return {
        "id": "evt_" + uuid.uuid4().hex,
        "type": "top_up.succeeded",
        "created": int(time.time()),
        "data": {"top_up_id": top_up["id"], "amount": top_up["amount"], "currency": top_up["currency"]},
    }


# Public operations whose credential is a signature over the body: {operationId: raw → headers}.
SIGNED: dict[str, Callable[[bytes], dict[str, str]]] = {
    "receiveSandboxWebhook": lambda raw: {signing.HEADER: signing.sign(raw, PAYMENTS_WEBHOOK_SECRET, int(time.time()))},
}
PROVISION.update(
    {
        "paymentMethodId": _payments_method,
        # requires_confirmation: confirm and cancel succeed on it; createRefund's body settles it first
        "topUpId": lambda party: str(_payments_top_up(party, confirm=False)["id"]),
    }
)
BODIES.update(
    {
        "createPaymentMethod": lambda party, ids: {
            "number": GOOD_CARD,
            "exp_month": 12,
            "exp_year": 2099,
            "cvc": "123",
        },
        "createTopUp": lambda party, ids: {"amount": 1000, "card": GOOD_CARD},
        "createRefund": _payments_refundable,
        "receiveSandboxWebhook": _payments_event,
    }
)
