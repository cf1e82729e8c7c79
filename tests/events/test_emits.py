"""x-emits, proven from the spec: every operation that declares `x-emits` is called for real
(HTTP, the app's relay and saga runner in-process on the sim driver) and what it wrote to
the outbox is checked against its declaration and the AsyncAPI contract.

For each case: set up what the call needs, wait until the system is quiescent, call the
operation, wait again, then take every outbox row written after the call began and assert:
- something was emitted, and every row was published (none rejected by the relay);
- every emitted type is in the operation's `x-emits` — strictly: the saga's follow-up
  events (placement, state changes, the terminal event, the action's completion) are
  declared on the operation that caused them;
- every payload validates against its AsyncAPI message schema (generated.events.catalog).

The cases are generated: `test_operation_emits_only_what_it_declares` is parametrized over
generated.routing.OPERATIONS, so a new operation with `x-emits` is a new case, and it fails
(naming the operation) until SETUPS says how to make a successful call of it. VARIANTS adds
the paths one happy call cannot take: other verbs of an operation, and failures (hosts that
fail every create or reboot). The last test asserts that every (operation, event) pair
declared in any `x-emits` was observed by some case — an event a declaration promises but
nothing produces is a stale declaration or an untested path.

Declarations the server breaks are kept as strict xfails naming the gap, so the test turns
red the moment the spec or the handler is fixed (and the marker must go).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema_rs
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from generated.events.catalog import CATALOG
from generated.routing import OPERATIONS, Operation
from handlers.provisioning import configuration, runner, states
from handlers.provisioning.tables import Instance
from hangar.db import make_engine, utcnow
from hangar.outbox import OutboxEvent

pytestmark = pytest.mark.postgres

PASSWORD = "correct-horse-battery-staple"
QUIET_SECONDS = 30.0
EMITTING = sorted(op_id for op_id, op in OPERATIONS.items() if op.emits)

# What the cases saw: (operationId, event type) pairs emitted, declared and valid; and the
# node ids of the cases that ran in this process (the final test checks coverage with them).
OBSERVED: set[tuple[str, str]] = set()
RAN: set[str] = set()
_VALIDATORS: dict[str, jsonschema_rs.Validator] = {}


@pytest.fixture(autouse=True)
def fresh_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings an earlier app recorded (background.prepare) must not leak in or out."""
    monkeypatch.setattr(configuration._holder, "_current", None)


@pytest.fixture
def settings(make_settings: Callable[..., Any]) -> Any:
    """The test defaults (sim driver, 30 ms host operations) with the relay and the saga
    runner running in the app, so the saga's follow-up events happen."""
    return make_settings(run_relay=True)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    """The running app, its owner tenant, and read access to the database."""

    client: Any
    owner: Any  # tests.conftest.Tenant
    engine: Engine
    signup: Callable[..., Any]

    def call(self, method: str, path: str, *, json: Any = None, auth: bool = True) -> Any:
        headers = self.owner.headers if auth else {}
        return self.client.request(method, path, json=json, headers=headers)

    def ok(self, method: str, path: str, status: int, *, json: Any = None) -> Any:
        response = self.call(method, path, json=json)
        assert response.status_code == status, f"set-up {method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    def quiesce(self, timeout: float = QUIET_SECONDS) -> None:
        """Wait until no instance is in a transitional state and no outbox row waits to be
        published (the relay has delivered everything, the saga has nothing left to do)."""
        deadline = time.monotonic() + timeout
        while True:
            with Session(self.engine) as session:
                busy = session.scalar(
                    select(func.count()).select_from(Instance).where(Instance.state.in_(sorted(states.TRANSITIONAL)))
                )
                busy = (busy or 0) + _storage_busy(session)  # storage: volume/snapshot work
                busy = (busy or 0) + _payments_busy(session)  # payments: webhooks the sandbox owes
                waiting = session.scalar(
                    select(func.count())
                    .select_from(OutboxEvent)
                    .where(OutboxEvent.published_at.is_(None), OutboxEvent.failed_at.is_(None))
                )
            if not busy and not waiting:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not quiescent within {timeout:.0f} s: {busy} instances busy, {waiting} unpublished"
                )
            time.sleep(0.02)

    def last_seq(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.max(OutboxEvent.seq))) or 0)

    def rows_after(self, seq: int) -> list[OutboxEvent]:
        with Session(self.engine) as session:
            query = select(OutboxEvent).where(OutboxEvent.seq > seq).order_by(OutboxEvent.seq)
            return list(session.scalars(query))

    # -- set-up helpers (each leaves the system quiescent)

    def instance(self, state: str = "running") -> str:
        """A new instance of the owner's in `state` ("running" or "stopped")."""
        launch = self.ok(
            "POST",
            "/v1/instances",
            202,
            json={
                "name": f"i-{uuid.uuid4().hex[:6]}",
                "region": "fra1",
                "instance_type": "cpu-1",
                "image": "debian-12",
            },
        )
        instance_id = str(launch["instance"]["id"])
        self.quiesce()
        if state == "stopped":
            self.ok("POST", f"/v1/instances/{instance_id}/actions", 202, json={"type": "stop"})
            self.quiesce()
        got = self.ok("GET", f"/v1/instances/{instance_id}", 200)
        assert got["state"] == state, f"set-up wanted a {state} instance, got {got['state']}"
        return instance_id

    def invite(self, role: str = "member") -> dict[str, Any]:
        body: dict[str, Any] = self.ok(
            "POST",
            f"/v1/organizations/{self.owner.organization_id}/members",
            201,
            json={"email": f"m-{uuid.uuid4().hex[:8]}@example.com", "role": role},
        )
        return body

    def joined_member(self) -> str:
        """A member who accepted their invitation (so holds an API key)."""
        invited = self.invite()
        accepted = self.client.post(
            "/v1/invitations/accept", json={"token": invited["invitation_token"], "password": PASSWORD}
        )
        assert accepted.status_code == 201, accepted.text
        return str(invited["member"]["id"])

    def hosts_fail(self, *, monkeypatch: pytest.MonkeyPatch) -> None:
        """From now on the simulated hosts fail every create, start and reboot (the sim
        driver's failure rate, on the driver this app's saga runner uses)."""
        local = runner.local()
        assert local is not None, "the app runs no saga runner"
        monkeypatch.setattr(local.driver, "failure_rate", 1.0)


@dataclass(frozen=True)
class Call:
    """The request for the operation under test: path parameters and body; the method,
    path template, authentication and Idempotency-Key come from the operation."""

    path: dict[str, str] = field(default_factory=dict)
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)  # extra ones (payments: a webhook's signature)
    # Who calls, when not the world's owner (an operator for the admin:* operations).
    auth: dict[str, str] | None = None


Setup = Callable[[World], Call]


def _org(w: World) -> dict[str, str]:
    return {"organizationId": w.owner.organization_id}


# One successful call per operationId with x-emits. A new operation with x-emits fails
# test_operation_emits_only_what_it_declares until it has an entry here.
SETUPS: dict[str, Setup] = {
    "acceptInvitation": lambda w: Call(body={"token": w.invite()["invitation_token"], "password": PASSWORD}),
    "createApiKey": lambda w: Call(body={"name": "ci", "scopes": ["instances:read"]}),
    "createInstance": lambda w: Call(
        body={"name": "web-1", "region": "fra1", "instance_type": "cpu-2", "image": "ubuntu-24.04"}
    ),
    "createInstanceAction": lambda w: Call(path={"instanceId": w.instance("running")}, body={"type": "stop"}),
    "inviteMember": lambda w: Call(path=_org(w), body={"email": "new@example.com", "role": "member"}),
    "removeMember": lambda w: Call(path={**_org(w), "memberId": str(w.invite()["member"]["id"])}),
    "revokeApiKey": lambda w: Call(
        path={
            "apiKeyId": str(
                w.ok("POST", "/v1/api-keys", 201, json={"name": "old", "scopes": ["instances:read"]})["api_key"]["id"]
            )
        }
    ),
    "signUp": lambda w: Call(body={"email": "new-owner@example.com", "password": PASSWORD, "organization": "Beta"}),
    "terminateInstance": lambda w: Call(path={"instanceId": w.instance("running")}),
    "updateMember": lambda w: Call(
        path={**_org(w), "memberId": str(w.invite()["member"]["id"])}, body={"role": "admin"}
    ),
    "updateOrganization": lambda w: Call(path=_org(w), body={"name": "Acme Renamed"}),
}


@dataclass(frozen=True)
class Variant:
    """Another path through an operation: its own set-up, and whether the hosts fail every
    create/start/reboot from the moment of the call."""

    operation_id: str
    name: str
    setup: Setup
    hosts_fail: bool = False
    must_emit: tuple[str, ...] = ()  # what this path exists to show


VARIANTS = [
    pytest.param(
        Variant(
            "createInstanceAction", "start", lambda w: Call({"instanceId": w.instance("stopped")}, {"type": "start"})
        ),
        id="createInstanceAction-start",
    ),
    pytest.param(
        Variant(
            "createInstanceAction", "reboot", lambda w: Call({"instanceId": w.instance("running")}, {"type": "reboot"})
        ),
        id="createInstanceAction-reboot",
    ),
    pytest.param(
        Variant(
            "createInstance",
            "every host fails the create",
            SETUPS["createInstance"],
            hosts_fail=True,
            must_emit=("instance.failed", "allocation.released"),
        ),
        id="createInstance-hosts-fail",
    ),
    pytest.param(
        Variant(
            "createInstanceAction",
            "the host fails the reboot",
            lambda w: Call({"instanceId": w.instance("running")}, {"type": "reboot"}),
            hosts_fail=True,
            must_emit=("instance.failed", "allocation.released"),
        ),
        id="createInstanceAction-reboot-fails",
    ),
    pytest.param(
        Variant(
            "removeMember",
            "a member who joined (holds a key)",
            lambda w: Call({**_org(w), "memberId": w.joined_member()}),
            must_emit=("member.removed", "api_key.revoked"),
        ),
        id="removeMember-joined",
    ),
]


# -- storage: volumes and snapshots ----------------------------------------------------


def _storage_busy(session: Session) -> int:
    """Volumes an action holds and snapshots with work in flight (the storage runner's)."""
    from handlers.storage.tables import Snapshot, Volume

    volumes = session.scalar(select(func.count()).select_from(Volume).where(Volume.action_id.is_not(None)))
    snapshots = session.scalar(select(func.count()).select_from(Snapshot).where(Snapshot.step.is_not(None)))
    return int(volumes or 0) + int(snapshots or 0)


def _volume(w: World, attach_to: str | None = None) -> str:
    """A new available volume of the owner's (attached to `attach_to` when given)."""
    made = w.ok(
        "POST", "/v1/volumes", 202, json={"name": f"v-{uuid.uuid4().hex[:8]}", "region": "fra1", "size_gib": 10}
    )
    volume_id = str(made["volume"]["id"])
    w.quiesce()
    if attach_to is not None:
        w.ok("POST", f"/v1/volumes/{volume_id}/actions", 202, json={"type": "attach", "instance_id": attach_to})
        w.quiesce()
    got = w.ok("GET", f"/v1/volumes/{volume_id}", 200)
    assert got["state"] == ("in_use" if attach_to else "available"), got
    return volume_id


def _snapshot(w: World) -> str:
    made = w.ok("POST", f"/v1/volumes/{_volume(w)}/snapshots", 202, json={"name": "s"})
    w.quiesce()
    return str(made["id"])


SETUPS.update(
    {
        "createVolume": lambda w: Call(body={"name": "data-1", "region": "fra1", "size_gib": 10}),
        "createVolumeAction": lambda w: Call(
            path={"volumeId": _volume(w)}, body={"type": "attach", "instance_id": w.instance("running")}
        ),
        "deleteVolume": lambda w: Call(path={"volumeId": _volume(w)}),
        "createSnapshot": lambda w: Call(path={"volumeId": _volume(w)}, body={"name": "snap"}),
        "deleteSnapshot": lambda w: Call(path={"snapshotId": _snapshot(w)}),
    }
)
VARIANTS += [
    pytest.param(
        Variant(
            "createVolumeAction",
            "detach",
            lambda w: Call({"volumeId": _volume(w, attach_to=w.instance("running"))}, {"type": "detach"}),
            must_emit=("volume.detached",),
        ),
        id="createVolumeAction-detach",
    ),
    pytest.param(
        Variant(
            "createVolumeAction",
            "resize",
            lambda w: Call({"volumeId": _volume(w)}, {"type": "resize", "size_gib": 20}),
            must_emit=("volume.resized",),
        ),
        id="createVolumeAction-resize",
    ),
]


# --------------------------------------------------------------------------- the cases


# -- payments: top-ups, refunds, the signed sandbox webhook -----------------------------

GOOD_CARD, DECLINED_CARD, FAILS_LATER_CARD = "4242424242424242", "4000000000000002", "4000000000000341"


def _payments_busy(session: Session) -> int:
    """Webhook events the sandbox provider has yet to deliver (the deliverer's work)."""
    from handlers.payments.tables import SandboxWebhook

    pending = session.scalar(
        select(func.count()).select_from(SandboxWebhook).where(SandboxWebhook.delivered_at.is_(None))
    )
    return int(pending or 0)


def _top_up(w: World, card: str = GOOD_CARD, *, confirm: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = w.ok("POST", "/v1/top-ups", 201, json={"amount": 1000, "card": card, "confirm": confirm})
    w.quiesce()
    return body


def _succeeded_top_up(w: World) -> str:
    top_up = _top_up(w)
    got = w.ok("GET", f"/v1/top-ups/{top_up['id']}", 200)
    assert got["status"] == "succeeded", got
    return str(top_up["id"])


def _signed_provider_event(w: World, card: str) -> Call:
    """A signed provider event for a processing top-up, sent by the test: the top-up is
    created unconfirmed and moved to `processing` in the database (what a confirmation does,
    minus queueing the sandbox's own event, which would race the call under test)."""
    import json

    from handlers.payments import signing
    from handlers.payments.tables import TopUp
    from tests.conftest import PAYMENTS_WEBHOOK_SECRET

    top_up = w.ok("POST", "/v1/top-ups", 201, json={"amount": 1000, "card": card, "confirm": False})
    with Session(w.engine) as session:
        row = session.get(TopUp, uuid.UUID(top_up["id"]))
        assert row is not None
        row.status = "processing"
        session.commit()
    data: dict[str, Any] = {"top_up_id": top_up["id"], "amount": 1000, "currency": "USD"}
    kind = "top_up.succeeded" if card == GOOD_CARD else "top_up.failed"
    if kind == "top_up.failed":
        data["failure_code"] = "processing_error"
    body = {"id": "evt_" + uuid.uuid4().hex, "type": kind, "created": int(time.time()), "data": data}
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return Call(body=body, headers={signing.HEADER: signing.sign(raw, PAYMENTS_WEBHOOK_SECRET, int(time.time()))})


SETUPS.update(
    {
        "createTopUp": lambda w: Call(body={"amount": 1000, "card": GOOD_CARD}),
        "confirmTopUp": lambda w: Call({"topUpId": str(_top_up(w, confirm=False)["id"])}),
        "cancelTopUp": lambda w: Call({"topUpId": str(_top_up(w, confirm=False)["id"])}),
        "createRefund": lambda w: Call({"topUpId": _succeeded_top_up(w)}, {"amount": 100}),
        "receiveSandboxWebhook": lambda w: _signed_provider_event(w, GOOD_CARD),
    }
)
VARIANTS += [
    pytest.param(
        Variant(
            "createTopUp",
            "declined card",
            lambda w: Call(body={"amount": 1000, "card": DECLINED_CARD}),
            must_emit=("top_up.failed",),
        ),
        id="createTopUp-declined",
    ),
    pytest.param(
        Variant(
            "confirmTopUp",
            "fails later",
            lambda w: Call({"topUpId": str(_top_up(w, FAILS_LATER_CARD, confirm=False)["id"])}),
            must_emit=("top_up.failed",),
        ),
        id="confirmTopUp-fails-later",
    ),
    pytest.param(
        Variant(
            "receiveSandboxWebhook",
            "failed event",
            lambda w: _signed_provider_event(w, FAILS_LATER_CARD),
            must_emit=("top_up.failed",),
        ),
        id="receiveSandboxWebhook-failed",
    ),
]


def _validator(event_type: str) -> jsonschema_rs.Validator:
    if event_type not in _VALIDATORS:
        _VALIDATORS[event_type] = jsonschema_rs.validator_for(
            dict(CATALOG[event_type].json_schema), validate_formats=True
        )
    return _VALIDATORS[event_type]


def _run(
    request: pytest.FixtureRequest,
    world: World,
    op: Operation,
    setup: Setup,
    *,
    hosts_fail: bool = False,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> list[str]:
    """Set up, call `op`, check what it emitted (see the module doc); the emitted types."""
    RAN.add(request.node.nodeid)
    call = setup(world)
    world.quiesce()
    mark = world.last_seq()
    if hosts_fail:
        assert monkeypatch is not None
        world.hosts_fail(monkeypatch=monkeypatch)
    headers = {} if op.public else dict(call.auth or world.owner.headers)
    if op.idempotent:
        headers["Idempotency-Key"] = str(uuid.uuid4())
    headers.update(call.headers)
    response = world.client.request(op.method, op.path.format(**call.path), json=call.body, headers=headers)
    assert response.status_code == op.success_status, f"{op.operation_id}: {response.status_code} {response.text}"
    world.quiesce()
    rows = world.rows_after(mark)

    assert rows, f"{op.operation_id} declares x-emits {list(op.emits)} but emitted nothing"
    rejected = [(row.type, row.last_error) for row in rows if row.failed_at is not None or row.published_at is None]
    assert rejected == [], f"{op.operation_id}: outbox rows the relay did not publish: {rejected}"
    invalid = {}
    for row in rows:
        assert row.type in CATALOG, f"{op.operation_id} emitted {row.type!r}, which is not in the AsyncAPI contract"
        errors = [
            f"{'/'.join(map(str, e.instance_path)) or '(root)'}: {e.message}"
            for e in _validator(row.type).iter_errors(row.payload)
        ]
        if errors:
            invalid[row.type] = errors
    assert invalid == {}, f"{op.operation_id}: payloads that break their AsyncAPI schema: {invalid}"
    emitted = list(dict.fromkeys(row.type for row in rows))
    OBSERVED.update((op.operation_id, t) for t in emitted if t in op.emits)
    undeclared = [t for t in emitted if t not in op.emits]
    assert undeclared == [], (
        f"{op.operation_id} emitted {undeclared}, not in its x-emits {list(op.emits)} "
        f"(every event the call causes, the saga's included, must be declared on it)"
    )
    return emitted


@pytest.fixture
def world(client: Any, signup: Callable[..., Any], engine: Engine) -> World:
    return World(client=client, owner=signup(), engine=engine, signup=signup)


@pytest.mark.parametrize("operation_id", EMITTING)
def test_operation_emits_only_what_it_declares(request: pytest.FixtureRequest, operation_id: str, world: World) -> None:
    op = OPERATIONS[operation_id]
    setup = SETUPS.get(operation_id)
    if setup is None:
        pytest.fail(
            f"{operation_id} declares x-emits {list(op.emits)} but tests/events/test_emits.py has no set-up "
            "for it: add an entry to SETUPS that makes one successful call possible"
        )
    _run(request, world, op, setup)


@pytest.mark.parametrize("variant", VARIANTS)
def test_other_paths_emit_only_what_the_operation_declares(
    request: pytest.FixtureRequest, variant: Variant, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = OPERATIONS[variant.operation_id]
    emitted = _run(request, world, op, variant.setup, hosts_fail=variant.hosts_fail, monkeypatch=monkeypatch)
    missing = [t for t in variant.must_emit if t not in emitted]
    assert missing == [], f"{variant.operation_id} ({variant.name}) did not emit {missing}: {emitted}"


def test_every_operation_with_x_emits_has_a_case() -> None:
    """The parametrization comes from the spec; this keeps the set-up table honest too."""
    assert sorted(op for op in OPERATIONS if OPERATIONS[op].emits) == EMITTING
    stale = sorted(set(SETUPS) - set(EMITTING))
    assert stale == [], f"SETUPS has entries for operations without x-emits: {stale}"
    missing = sorted(set(EMITTING) - set(SETUPS))
    assert missing == [], f"operations with x-emits but no set-up in SETUPS: {missing}"
    for param in VARIANTS:
        (variant,) = param.values
        assert isinstance(variant, Variant) and variant.operation_id in EMITTING, variant
        assert set(variant.must_emit) <= set(OPERATIONS[variant.operation_id].emits), variant


def test_every_declared_event_was_observed(request: pytest.FixtureRequest) -> None:
    """Runs last in the module: every (operation, event) in any x-emits was emitted by some
    case above. Needs every case of the module to have run in this process."""
    here = request.node.module
    cases = [
        item.nodeid
        for item in request.session.items
        if getattr(item, "module", None) is here and item.nodeid != request.node.nodeid and "[" in item.nodeid
    ]
    expected = len(EMITTING) + len(VARIANTS)
    if len(cases) != expected or not set(cases) <= RAN:
        pytest.skip(
            f"COVERAGE NOT CHECKED: {len(set(cases) & RAN)} of {expected} cases ran in this process "
            "(deselected, or spread over xdist workers); run tests/events/test_emits.py whole"
        )
    declared = [(op, event) for op in EMITTING for event in OPERATIONS[op].emits]
    unseen = [pair for pair in declared if pair not in OBSERVED]
    assert unseen == [], f"declared in x-emits but never emitted by any case (operation, event): {unseen}"
    every_event = sorted({event for _, event in declared})
    assert every_event == sorted({event for _, event in OBSERVED}), "some declared event type was never observed"


# --------------------------------------------------------------------------- billing: ledger


def _operator_auth(w: World) -> dict[str, str]:
    """An operator organization's owner (admin:* scopes), made as `hangar-admin create-operator` does."""
    from handlers.identity.published import create_operator

    with Session(w.engine) as session:
        _, _, secret = create_operator(
            session, email=f"ops-{uuid.uuid4().hex[:8]}@example.com", organization_name="Ops", now=utcnow()
        )
        session.commit()
    return {"Authorization": f"Bearer {secret}"}


SETUPS.update(
    {
        "createCreditAdjustment": lambda w: Call(
            path=_org(w), body={"direction": "credit", "amount": 100, "reason": "goodwill"}, auth=_operator_auth(w)
        ),
    }
)
