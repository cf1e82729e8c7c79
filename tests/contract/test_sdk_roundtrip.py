"""An SDK round trip through every operation in the spec, in both SDK flavours:

- sync: `hangar_client` over real HTTP to a `hangar-server` process (tests/conftest.py's
  `live_server`, response validation on);
- async: `hangar_client`'s asyncio functions in-process, through `httpx.ASGITransport`.

The test is parametrized over generated.routing.OPERATIONS, so a new operation without a
round trip here fails. Each round trip asserts typed results (the SDK's attrs models, not
dicts), that what it wrote reads back, and that the spec's failure answers arrive as typed
`Problem`s.

Each flavour's world has a tenant (signed up through the SDK) and an operator organization
(made out of band in that server's database, as `hangar-admin create-operator` does), whose
owner drives the operator API. Instances launch on the `sim` driver with short delays and
are awaited with the SDK's own waiters; a round trip terminates what it launched, so the
small fleet of a fresh server keeps room for the next.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hangar_client import waiters as payment_waiters  # payments
from hangar_client.models import (
    Action,
    ActionList,
    ActionStatus,
    ActionType,
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyStatus,
    CapacityReport,
    CardBrand,
    Host,
    HostCreate,
    HostList,
    HostState,
    Image,
    ImageList,
    ImageStatus,
    Instance,
    InstanceActionRequest,
    InstanceActionRequestType,
    InstanceCreate,
    InstanceLaunch,
    InstanceList,
    InstanceState,
    InstanceType,
    InstanceTypeList,
    InventoryCreate,
    InventoryUpdate,
    InvitationAcceptance,
    Me,
    Member,
    MemberInvitation,
    MemberInvite,
    MemberList,
    MemberStatus,
    MemberUpdate,
    Organization,
    OrganizationUpdate,
    PaymentMethod,
    PaymentMethodCreate,
    PaymentMethodList,
    PaymentProvider,
    Problem,
    Refund,
    RefundCreate,
    RefundList,
    RefundStatus,
    Region,
    RegionAvailability,
    RegionCapacity,
    RegionList,
    ResourceCapacity,
    ResourceClass,
    Role,
    SandboxEvent,
    SandboxEventData,
    SandboxEventType,
    Scope,
    SignupRequest,
    SignupResult,
    TopUp,
    TopUpCreate,
    TopUpList,
    TopUpStatus,
    WebhookReceipt,
)
from hangar_client.types import UNSET, Response, Unset

from generated.routing import OPERATIONS
from handlers.payments import signing  # payments
from hangar.db import make_engine, make_session_factory
from hangar.dispatch import HangarApp
from tests.conftest import PAYMENTS_WEBHOOK_SECRET  # payments

from .coverage import COVERAGE
from .sdk import WAIT_TIMEOUT, Sdk, Target
from .support import PASSWORD, load_spec, make_operator, unique_email


@dataclass(frozen=True)
class World:
    """An organization signed up through the SDK, and its owner's key; and an operator
    organization's owner (admin:* scopes) on the same server."""

    owner: Sdk
    organization_id: uuid.UUID
    user_id: uuid.UUID
    api_key_id: uuid.UUID
    operator: Sdk


def _sign_up(anonymous: Sdk, organization: str) -> SignupResult:
    result = anonymous.call(
        "signUp", body=SignupRequest(email=unique_email("sdk"), password=PASSWORD, organization=organization)
    )
    assert isinstance(result, SignupResult)
    return result


def _operator_of(database_url: str) -> str:
    """An operator organization in the database at `database_url` (another process's): its
    owner's key. The engine lives just for this."""
    engine = make_engine(database_url)
    try:
        return make_operator(make_session_factory(engine), "SDK Operations")[1]
    finally:
        engine.dispose()


@pytest.fixture(scope="module", params=["sync", "async"])
def world(request: pytest.FixtureRequest, contract_app: HangarApp) -> Iterator[World]:
    if request.param == "sync":
        server = request.getfixturevalue("live_server")
        target = Target(str(server))
        operator_secret = _operator_of(server.database_url)
    else:
        loop = asyncio.new_event_loop()
        request.addfinalizer(loop.close)
        # No lifespan through ASGITransport: the stage's own (conftest `served`) runs the saga.
        target = Target("http://testserver", {"transport": httpx.ASGITransport(app=contract_app)}, loop)
        operator_secret = make_operator(contract_app.runtime.sessions, "SDK Operations")[1]
    signed_up = _sign_up(Sdk(request.param, target), "SDK Round Trip")
    yield World(
        owner=Sdk(request.param, target, signed_up.secret),
        organization_id=signed_up.organization.id,
        user_id=signed_up.user.id,
        api_key_id=signed_up.api_key.id,
        operator=Sdk(request.param, target, operator_secret),
    )


RoundTrip = Callable[[World], None]
ROUNDTRIPS: dict[str, RoundTrip] = {}


def roundtrip(operation_id: str) -> Callable[[RoundTrip], RoundTrip]:
    def register(func: RoundTrip) -> RoundTrip:
        assert operation_id not in ROUNDTRIPS, operation_id
        ROUNDTRIPS[operation_id] = func
        return func

    return register


@pytest.mark.parametrize("operation_id", sorted(OPERATIONS))
def test_sdk_roundtrip(operation_id: str, world: World) -> None:
    check = ROUNDTRIPS.get(operation_id)
    assert check is not None, f"{operation_id} has no SDK round trip in {__name__}: add one with @roundtrip"
    check(world)
    COVERAGE.roundtrip(operation_id)


def test_every_roundtrip_names_an_operation() -> None:
    assert set(ROUNDTRIPS) <= set(OPERATIONS), sorted(set(ROUNDTRIPS) - set(OPERATIONS))


def test_the_registry_is_the_bundled_spec() -> None:
    # The parametrization above is over the routing registry; it must be every operationId
    # in generated/openapi.json (codegen's drift check keeps them in step; this says so here).
    spec_ids = {
        operation["operationId"]
        for item in load_spec()["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "operationId" in operation
    }
    assert spec_ids == set(OPERATIONS)


# -- helpers ------------------------------------------------------------------------------------


def _problem(sdk: Sdk, status: int, operation_id: str, *args: object, **kwargs: object) -> Problem:
    response = sdk.detailed(operation_id, *args, **kwargs)
    assert response.status_code == status, response.content
    assert isinstance(response.parsed, Problem), response.parsed
    assert response.parsed.status == status and response.parsed.request_id
    return response.parsed


def _invitation(w: World, role: Role = Role.MEMBER) -> MemberInvitation:
    invitation = w.owner.call(
        "inviteMember", w.organization_id, body=MemberInvite(email=unique_email("invitee"), role=role)
    )
    assert isinstance(invitation, MemberInvitation) and isinstance(invitation.member, Member)
    return invitation


def _invite(w: World, role: Role = Role.MEMBER) -> Member:
    return _invitation(w, role).member


def _create_key(w: World, *scopes: Scope, expires_at: dt.datetime | None = None) -> ApiKeyCreated:
    created = w.owner.call(
        "createApiKey",
        body=ApiKeyCreate(name="round-trip", scopes=list(scopes), expires_at=expires_at or UNSET),
    )
    assert isinstance(created, ApiKeyCreated)
    return created


# -- the round trips, one per operation ---------------------------------------------------------


@roundtrip("signUp")
def _sign_up_roundtrip(w: World) -> None:
    result = _sign_up(w.owner.as_key(None), "Fresh Org")
    assert isinstance(result.organization, Organization) and result.organization.name == "Fresh Org"
    assert result.secret.startswith(result.api_key.prefix + "_")
    assert result.api_key.status is ApiKeyStatus.ACTIVE
    me = w.owner.as_key(result.secret).call("getMe")
    assert isinstance(me, Me)
    assert me.organization.id == result.organization.id and me.role is Role.OWNER


@roundtrip("getMe")
def _get_me(w: World) -> None:
    me = w.owner.call("getMe")
    assert isinstance(me, Me)
    assert (me.user.id, me.organization.id, me.api_key.id) == (w.user_id, w.organization_id, w.api_key_id)
    assert me.role is Role.OWNER
    assert all(isinstance(scope, Scope) for scope in me.api_key.scopes)
    assert isinstance(me.api_key.created_at, dt.datetime)


@roundtrip("getOrganization")
def _get_organization(w: World) -> None:
    org = w.owner.call("getOrganization", w.organization_id)
    assert isinstance(org, Organization) and org.id == w.organization_id
    _problem(w.owner, 404, "getOrganization", uuid.uuid4())


@roundtrip("updateOrganization")
def _update_organization(w: World) -> None:
    name = f"Renamed {uuid.uuid4().hex[:6]}"
    billing = unique_email("billing")
    org = w.owner.call(
        "updateOrganization", w.organization_id, body=OrganizationUpdate(name=name, billing_email=billing)
    )
    assert isinstance(org, Organization) and (org.name, org.billing_email) == (name, billing)
    again = w.owner.call("getOrganization", w.organization_id)
    assert (again.name, again.billing_email) == (name, billing)


@roundtrip("listMembers")
def _list_members(w: World) -> None:
    invited = {_invite(w).id, _invite(w).id}
    # Walk every page by hand with limit=1, following next_cursor until it is null.
    members: list[Member] = []
    cursor: str | None = None
    while True:
        page = w.owner.call("listMembers", w.organization_id, limit=1, cursor=cursor or UNSET)
        assert isinstance(page, MemberList) and len(page.data) <= 1
        members.extend(page.data)
        if not isinstance(page.next_cursor, str):
            break
        cursor = page.next_cursor
    ids = [member.id for member in members]
    assert len(ids) == len(set(ids)) and invited <= set(ids)
    assert all(isinstance(member, Member) for member in members)
    assert w.user_id in {member.user_id for member in members}  # the owner


@roundtrip("inviteMember")
def _invite_member(w: World) -> None:
    invitation = _invitation(w, Role.VIEWER)
    member = invitation.member
    assert member.organization_id == w.organization_id
    assert (member.role, member.status) == (Role.VIEWER, MemberStatus.INVITED)
    assert invitation.invitation_token.startswith("hgi_")
    assert isinstance(invitation.invitation_expires_at, dt.datetime)
    assert invitation.invitation_expires_at > dt.datetime.now(dt.UTC) + dt.timedelta(days=6)


@roundtrip("acceptInvitation")
def _accept_invitation(w: World) -> None:
    invitation = _invitation(w, Role.VIEWER)
    body = InvitationAcceptance(token=invitation.invitation_token, password=PASSWORD, name="Invitee")
    anonymous = w.owner.as_key(None)
    joined = anonymous.call("acceptInvitation", body=body)
    assert isinstance(joined, SignupResult)
    assert joined.organization.id == w.organization_id and joined.user.id == invitation.member.user_id
    assert joined.secret.startswith(joined.api_key.prefix + "_")
    me = w.owner.as_key(joined.secret).call("getMe")
    assert isinstance(me, Me) and me.role is Role.VIEWER and me.organization.id == w.organization_id
    assert w.owner.call("getMember", w.organization_id, invitation.member.id).status is MemberStatus.ACTIVE
    problem = _problem(anonymous, 404, "acceptInvitation", body=body)  # single use
    assert problem.type_.endswith("/invitation-not-found")


@roundtrip("getMember")
def _get_member(w: World) -> None:
    member = _invite(w)
    got = w.owner.call("getMember", w.organization_id, member.id)
    assert isinstance(got, Member) and (got.id, got.email, got.role) == (member.id, member.email, member.role)


@roundtrip("updateMember")
def _update_member(w: World) -> None:
    member = _invite(w, Role.VIEWER)
    updated = w.owner.call("updateMember", w.organization_id, member.id, body=MemberUpdate(role=Role.ADMIN))
    assert isinstance(updated, Member) and updated.role is Role.ADMIN
    assert w.owner.call("getMember", w.organization_id, member.id).role is Role.ADMIN


@roundtrip("removeMember")
def _remove_member(w: World) -> None:
    member = _invite(w)
    assert w.owner.call("removeMember", w.organization_id, member.id) is None
    _problem(w.owner, 404, "getMember", w.organization_id, member.id)


@roundtrip("listApiKeys")
def _list_api_keys(w: World) -> None:
    created = {_create_key(w, Scope.API_KEYSREAD).api_key.id, _create_key(w, Scope.MEMBERSREAD).api_key.id}
    seen: list[uuid.UUID] = []
    cursor: str | None = None
    while True:
        page = w.owner.call("listApiKeys", limit=1, cursor=cursor or UNSET)
        assert isinstance(page, ApiKeyList) and len(page.data) <= 1
        assert all(isinstance(key, ApiKey) for key in page.data)
        seen.extend(key.id for key in page.data)
        if not isinstance(page.next_cursor, str):
            break
        cursor = page.next_cursor
    assert len(seen) == len(set(seen)) and created | {w.api_key_id} <= set(seen)


@roundtrip("createApiKey")
def _create_api_key(w: World) -> None:
    expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=30)
    created = _create_key(w, Scope.ORGANIZATIONREAD, Scope.API_KEYSREAD, expires_at=expires)
    key = created.api_key
    assert set(key.scopes) == {Scope.ORGANIZATIONREAD, Scope.API_KEYSREAD}
    assert key.expires_at == expires and key.status is ApiKeyStatus.ACTIVE
    assert created.secret.startswith(key.prefix + "_")
    # The new key works, as itself, and only within its scopes.
    as_new = w.owner.as_key(created.secret)
    assert as_new.call("getMe").api_key.id == key.id
    _problem(as_new, 403, "createApiKey", body=ApiKeyCreate(name="escalate", scopes=[Scope.API_KEYSWRITE]))


@roundtrip("getApiKey")
def _get_api_key(w: World) -> None:
    key = _create_key(w, Scope.VOLUMESREAD).api_key
    got = w.owner.call("getApiKey", key.id)
    assert isinstance(got, ApiKey) and (got.id, got.name, got.scopes) == (key.id, key.name, key.scopes)
    _problem(w.owner, 404, "getApiKey", uuid.uuid4())


@roundtrip("revokeApiKey")
def _revoke_api_key(w: World) -> None:
    created = _create_key(w, Scope.ORGANIZATIONREAD)
    assert w.owner.call("revokeApiKey", created.api_key.id) is None
    assert w.owner.call("getApiKey", created.api_key.id).status is ApiKeyStatus.REVOKED
    _problem(w.owner.as_key(created.secret), 401, "getMe")


# -- compute: helpers ---------------------------------------------------------------------------

LAUNCH_REGION, LAUNCH_TYPE, LAUNCH_IMAGE = "fra1", "cpu-1", "ubuntu-24.04"


def _instance_name() -> str:
    return f"rt-{uuid.uuid4().hex[:10]}"


def _launch(w: World, **overrides: str) -> InstanceLaunch:
    fields = {"region": LAUNCH_REGION, "instance_type": LAUNCH_TYPE, "image": LAUNCH_IMAGE, **overrides}
    launched = w.owner.call("createInstance", body=InstanceCreate(name=_instance_name(), **fields))
    assert isinstance(launched, InstanceLaunch)
    assert isinstance(launched.instance, Instance) and isinstance(launched.action, Action)
    return launched


def _running(w: World) -> Instance:
    """A fresh instance, awaited (the create action) until it runs."""
    launched = _launch(w)
    action = w.owner.wait_for_action(launched.action.id)
    assert action.status is ActionStatus.SUCCEEDED
    instance = w.owner.call("getInstance", launched.instance.id)
    assert isinstance(instance, Instance)
    assert instance.state is InstanceState.RUNNING and not instance.locked
    return instance


def _act(w: World, instance_id: uuid.UUID, kind: InstanceActionRequestType) -> Action:
    action = w.owner.call("createInstanceAction", instance_id, body=InstanceActionRequest(type_=kind))
    assert isinstance(action, Action) and action.instance_id == instance_id
    return action


def _settled(w: World, instance_id: uuid.UUID) -> Instance:
    """The instance once no action holds it (whatever state that leaves it in)."""
    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        instance = w.owner.call("getInstance", instance_id)
        assert isinstance(instance, Instance)
        if not instance.locked:
            return instance
        assert time.monotonic() < deadline, f"instance {instance_id} still {instance.state} (locked)"
        time.sleep(0.02)


def _dispose(w: World, instance_id: uuid.UUID) -> None:
    """Terminate one of the round trip's instances and wait until its capacity is released."""
    if _settled(w, instance_id).state is InstanceState.TERMINATED:
        return
    action = w.owner.call("terminateInstance", instance_id)
    assert isinstance(action, Action)
    w.owner.wait_for_action(action.id)


def _locked_out(w: World, act: Callable[[uuid.UUID], Response[Any]]) -> Problem:
    """`act` on an instance whose create action is still in flight: the documented 409
    `resource-locked`, as a typed Problem. (Creating takes a few simulated host steps; should
    one finish before the request lands, the request succeeds, and a fresh launch is tried.)"""
    for _ in range(5):
        launched = _launch(w)
        assert launched.instance.locked
        response = act(launched.instance.id)
        _dispose(w, launched.instance.id)
        if response.status_code == 409:
            problem = response.parsed
            assert isinstance(problem, Problem) and problem.status == 409 and problem.request_id
            assert problem.type_.endswith("/resource-locked"), problem.type_
            return problem
        assert response.status_code == 202, response.content
    raise AssertionError("the create action finished before every request: no 409 resource-locked seen")


def _walk(fetch: Callable[[str | Unset], Any]) -> list[Any]:
    """Every item of a listing, following next_cursor until it is null."""
    items: list[Any] = []
    cursor: str | Unset = UNSET
    while True:
        page = fetch(cursor)
        items.extend(page.data)
        if not isinstance(page.next_cursor, str):
            return items
        cursor = page.next_cursor


def _host_name() -> str:
    return f"rt-{uuid.uuid4().hex[:16]}"


def _create_host(w: World, region: str = "ams1", zone: str | None = None, **inventory: Any) -> Host:
    """A host of the round trip's own (the seeded fleet is left alone): CPU-only by default."""
    vcpu = {"total": 64, "reserved": 2, "allocation_ratio": 2.0, **inventory}
    body = HostCreate(
        name=_host_name(),
        region=region,
        zone=zone or f"{region}-b",
        traits=["ssd", "nvme"],
        inventories=[
            InventoryCreate(resource_class=ResourceClass.VCPU, **vcpu),
            InventoryCreate(resource_class=ResourceClass.MEMORY_MB, total=262144),
            InventoryCreate(resource_class=ResourceClass.DISK_GB, total=2000, reserved=100),
        ],
    )
    host = w.operator.call("createHost", body=body)
    assert isinstance(host, Host)
    return host


def _inventory(host: Host, resource_class: ResourceClass) -> Any:
    (found,) = [inv for inv in host.inventories if inv.resource_class is resource_class]
    return found


def _region_report(w: World, region: str) -> RegionCapacity:
    report = w.operator.call("getCapacityReport", region=region)
    assert isinstance(report, CapacityReport) and isinstance(report.generated_at, dt.datetime)
    (entry,) = report.regions
    assert isinstance(entry, RegionCapacity) and entry.region == region
    return entry


def _resource(entry: RegionCapacity, resource_class: ResourceClass) -> ResourceCapacity:
    (found,) = [r for r in entry.resources if r.resource_class is resource_class]
    assert isinstance(found, ResourceCapacity)
    return found


# -- compute: the public catalogue --------------------------------------------------------------


@roundtrip("listRegions")
def _list_regions(w: World) -> None:
    anonymous = w.owner.as_key(None)
    regions = _walk(lambda cursor: anonymous.call("listRegions", limit=1, cursor=cursor))
    assert all(isinstance(region, Region) for region in regions)
    slugs = [region.slug for region in regions]
    assert slugs == sorted(set(slugs)) and {"fra1", "ams1", "nyc1"} <= set(slugs)
    for region in regions:
        assert region.zones and all(zone.startswith(region.slug + "-") for zone in region.zones)
    page = anonymous.call("listRegions")
    assert isinstance(page, RegionList) and [r.slug for r in page.data] == slugs


@roundtrip("listInstanceTypes")
def _list_instance_types(w: World) -> None:
    anonymous = w.owner.as_key(None)
    kinds = {k.slug: k for k in _walk(lambda cursor: anonymous.call("listInstanceTypes", limit=2, cursor=cursor))}
    assert all(isinstance(kind, InstanceType) for kind in kinds.values())
    cpu = kinds[LAUNCH_TYPE]
    assert (cpu.vcpus, cpu.gpus, cpu.gpu_model, cpu.currency) == (1, 0, None, "USD")
    assert all(isinstance(a, RegionAvailability) for a in cpu.availability)
    # Launchable now: the fleet has room for one in the region the round trips launch in.
    assert {a.region: a.available for a in cpu.availability}[LAUNCH_REGION] is True
    h100 = kinds["gpu-h100x1"]
    assert h100.gpus == 1 and h100.gpu_model == "h100"
    # The region filter: only the types offered there.
    in_ams1 = anonymous.call("listInstanceTypes", region="ams1")
    assert isinstance(in_ams1, InstanceTypeList) and in_ams1.data
    assert all("ams1" in {a.region for a in kind.availability} for kind in in_ams1.data)
    assert "gpu-h100x1" not in {kind.slug for kind in in_ams1.data}  # offered in fra1 and nyc1 only
    assert anonymous.call("listInstanceTypes", region="nowhere1").data == []


@roundtrip("listImages")
def _list_images(w: World) -> None:
    anonymous = w.owner.as_key(None)
    images = {i.slug: i for i in _walk(lambda cursor: anonymous.call("listImages", limit=2, cursor=cursor))}
    assert all(isinstance(image, Image) for image in images.values())
    ubuntu = images[LAUNCH_IMAGE]
    assert (ubuntu.os_family, ubuntu.gpu_ready, ubuntu.status) == ("ubuntu", False, ImageStatus.ACTIVE)
    assert images["pytorch-2.5-cuda12"].gpu_ready is True
    page = anonymous.call("listImages", limit=200)
    assert isinstance(page, ImageList) and page.next_cursor is None and len(page.data) == len(images)


# -- compute: instances and actions -------------------------------------------------------------


@roundtrip("createInstance")
def _create_instance(w: World) -> None:
    launched = _launch(w)
    instance, action = launched.instance, launched.action
    assert instance.state is InstanceState.PENDING and instance.locked
    assert (instance.region, instance.instance_type, instance.image) == (LAUNCH_REGION, LAUNCH_TYPE, LAUNCH_IMAGE)
    assert (instance.vcpus, instance.gpus, instance.launched_at) == (1, 0, None)
    assert (action.type_, action.status, action.instance_id) == (ActionType.CREATE, ActionStatus.QUEUED, instance.id)
    done = w.owner.wait_for_action(action.id)
    assert done.status is ActionStatus.SUCCEEDED and done.progress == 100 and done.error is None
    assert isinstance(done.completed_at, dt.datetime)
    running = w.owner.wait_for_instance(instance.id, "running")
    assert running.state is InstanceState.RUNNING and running.zone and running.zone.startswith(LAUNCH_REGION)
    assert isinstance(running.launched_at, dt.datetime)
    # Retried with the same Idempotency-Key, a launch launches once.
    key = f"rt-{uuid.uuid4()}"
    body = InstanceCreate(name=_instance_name(), region=LAUNCH_REGION, instance_type=LAUNCH_TYPE, image=LAUNCH_IMAGE)
    first = w.owner.call("createInstance", body=body, idempotency_key=key)
    again = w.owner.call("createInstance", body=body, idempotency_key=key)
    assert isinstance(first, InstanceLaunch) and isinstance(again, InstanceLaunch)
    assert (again.instance.id, again.action.id) == (first.instance.id, first.action.id)
    # The catalogue's rules, as typed problems naming the field.
    unknown = _problem(
        w.owner,
        422,
        "createInstance",
        body=InstanceCreate(name="nowhere", region="nowhere1", instance_type=LAUNCH_TYPE, image=LAUNCH_IMAGE),
    )
    assert unknown.type_.endswith("/unknown-region")
    not_offered = _problem(
        w.owner,
        422,
        "createInstance",
        body=InstanceCreate(name="gpu", region="ams1", instance_type="gpu-h100x1", image="pytorch-2.5-cuda12"),
    )
    assert not_offered.type_.endswith("/instance-type-not-offered")
    for launched_id in (instance.id, first.instance.id):
        _dispose(w, launched_id)


@roundtrip("getInstance")
def _get_instance(w: World) -> None:
    instance = _running(w)
    got = w.owner.call("getInstance", instance.id)
    assert isinstance(got, Instance) and (got.id, got.name, got.state) == (instance.id, instance.name, instance.state)
    assert isinstance(got.created_at, dt.datetime) and got.terminated_at is None
    _problem(w.owner, 404, "getInstance", uuid.uuid4())
    _dispose(w, instance.id)


@roundtrip("listInstances")
def _list_instances(w: World) -> None:
    older, newer = _running(w), _running(w)
    listed = _walk(lambda cursor: w.owner.call("listInstances", limit=1, cursor=cursor))
    assert all(isinstance(instance, Instance) for instance in listed)
    ids = [instance.id for instance in listed]
    assert len(ids) == len(set(ids))
    assert ids.index(newer.id) < ids.index(older.id)  # newest first
    running = w.owner.call("listInstances", state=InstanceState.RUNNING, region=LAUNCH_REGION, limit=200)
    assert isinstance(running, InstanceList) and {older.id, newer.id} <= {i.id for i in running.data}
    assert all(i.state is InstanceState.RUNNING and i.region == LAUNCH_REGION for i in running.data)
    _dispose(w, older.id)
    terminated = w.owner.call("listInstances", state=InstanceState.TERMINATED, limit=200)
    assert older.id in {i.id for i in terminated.data}  # terminated instances stay listed
    assert newer.id not in {i.id for i in terminated.data}
    _dispose(w, newer.id)


@roundtrip("terminateInstance")
def _terminate_instance(w: World) -> None:
    instance = _running(w)
    action = w.owner.call("terminateInstance", instance.id)
    assert isinstance(action, Action)
    assert (action.type_, action.instance_id) == (ActionType.TERMINATE, instance.id)
    # Idempotent: terminating again answers with the same action.
    again = w.owner.call("terminateInstance", instance.id)
    assert isinstance(again, Action) and again.id == action.id
    assert w.owner.wait_for_action(action.id).status is ActionStatus.SUCCEEDED
    gone = w.owner.wait_for_instance(instance.id, "terminated")
    assert gone.state is InstanceState.TERMINATED and isinstance(gone.terminated_at, dt.datetime)
    assert w.owner.call("terminateInstance", instance.id).id == action.id  # still the same action
    _problem(w.owner, 404, "terminateInstance", uuid.uuid4())
    # While the create action runs, the instance is locked.
    problem = _locked_out(w, lambda instance_id: w.owner.detailed("terminateInstance", instance_id))
    assert "locked" in problem.detail


@roundtrip("createInstanceAction")
def _create_instance_action(w: World) -> None:
    instance = _running(w)
    stop = _act(w, instance.id, InstanceActionRequestType.STOP)
    assert (stop.type_, stop.status) == (ActionType.STOP, ActionStatus.QUEUED)
    assert w.owner.wait_for_action(stop.id).status is ActionStatus.SUCCEEDED
    assert w.owner.wait_for_instance(instance.id, "stopped").state is InstanceState.STOPPED
    # An action the state does not allow: stopping a stopped instance.
    invalid = _problem(
        w.owner, 409, "createInstanceAction", instance.id, body=InstanceActionRequest(InstanceActionRequestType.STOP)
    )
    assert invalid.type_.endswith("/invalid-state")
    start = _act(w, instance.id, InstanceActionRequestType.START)
    assert start.type_ is ActionType.START and w.owner.wait_for_action(start.id).status is ActionStatus.SUCCEEDED
    reboot = _act(w, instance.id, InstanceActionRequestType.REBOOT)
    assert reboot.type_ is ActionType.REBOOT and w.owner.wait_for_action(reboot.id).status is ActionStatus.SUCCEEDED
    assert w.owner.call("getInstance", instance.id).state is InstanceState.RUNNING
    _problem(
        w.owner, 404, "createInstanceAction", uuid.uuid4(), body=InstanceActionRequest(InstanceActionRequestType.STOP)
    )
    # While another action runs (the create), the instance is locked.
    _locked_out(
        w,
        lambda instance_id: w.owner.detailed(
            "createInstanceAction", instance_id, body=InstanceActionRequest(InstanceActionRequestType.STOP)
        ),
    )
    _dispose(w, instance.id)


@roundtrip("listInstanceActions")
def _list_instance_actions(w: World) -> None:
    instance = _running(w)
    for kind in (InstanceActionRequestType.STOP, InstanceActionRequestType.START):
        w.owner.wait_for_action(_act(w, instance.id, kind).id)
    actions = _walk(lambda cursor: w.owner.call("listInstanceActions", instance.id, limit=1, cursor=cursor))
    assert all(isinstance(action, Action) and action.instance_id == instance.id for action in actions)
    # Newest first, every one finished.
    assert [a.type_ for a in actions] == [ActionType.START, ActionType.STOP, ActionType.CREATE]
    assert all(a.status is ActionStatus.SUCCEEDED for a in actions)
    page = w.owner.call("listInstanceActions", instance.id)
    assert isinstance(page, ActionList) and [a.id for a in page.data] == [a.id for a in actions]
    _problem(w.owner, 404, "listInstanceActions", uuid.uuid4())
    _dispose(w, instance.id)


@roundtrip("getAction")
def _get_action(w: World) -> None:
    launched = _launch(w)
    action = w.owner.call("getAction", launched.action.id)
    assert isinstance(action, Action)
    assert (action.id, action.type_, action.instance_id) == (
        launched.action.id,
        ActionType.CREATE,
        launched.instance.id,
    )
    done = w.owner.wait_for_action(action.id)
    assert done.status is ActionStatus.SUCCEEDED and done.progress == 100
    assert isinstance(done.started_at, dt.datetime) and isinstance(done.completed_at, dt.datetime)
    assert done.created_at <= done.started_at <= done.completed_at
    _problem(w.owner, 404, "getAction", uuid.uuid4())
    _dispose(w, launched.instance.id)


# -- compute: the operator API ------------------------------------------------------------------


@roundtrip("createHost")
def _create_host_roundtrip(w: World) -> None:
    host = _create_host(w, region="nyc1", zone="nyc1-c")
    assert (host.region, host.zone, host.state) == ("nyc1", "nyc1-c", HostState.ACTIVE)
    assert host.traits == ["nvme", "ssd"] and host.allocations == 0
    assert [inv.resource_class for inv in host.inventories] == [
        ResourceClass.VCPU,
        ResourceClass.MEMORY_MB,
        ResourceClass.DISK_GB,
    ]
    vcpu = _inventory(host, ResourceClass.VCPU)
    assert (vcpu.total, vcpu.reserved, vcpu.allocation_ratio, vcpu.capacity, vcpu.used) == (64, 2, 2.0, 124, 0)
    assert w.operator.call("getHost", host.id).name == host.name
    taken = HostCreate(
        name=host.name,
        region="nyc1",
        zone="nyc1-a",
        inventories=[InventoryCreate(resource_class=ResourceClass.VCPU, total=8)],
    )
    assert _problem(w.operator, 409, "createHost", body=taken).type_.endswith("/host-name-taken")
    elsewhere = HostCreate(
        name=_host_name(),
        region="nyc1",
        zone="fra1-a",
        inventories=[InventoryCreate(resource_class=ResourceClass.VCPU, total=8)],
    )
    assert _problem(w.operator, 422, "createHost", body=elsewhere).type_.endswith("/unknown-zone")
    # A tenant, however privileged in its own organization, cannot reach the operator API.
    _problem(w.owner, 403, "createHost", body=taken)
    # The largest inventory the spec allows: its capacity, 1e8 × 16, fits what the server
    # stores on either database.
    largest = InventoryCreate(resource_class=ResourceClass.GPU, total=100_000_000, allocation_ratio=16.0)
    big = w.operator.call(
        "createHost", body=HostCreate(name=_host_name(), region="nyc1", zone="nyc1-b", inventories=[largest])
    )
    assert isinstance(big, Host) and _inventory(big, ResourceClass.GPU).capacity == 1_600_000_000


@roundtrip("getHost")
def _get_host(w: World) -> None:
    host = _create_host(w)
    got = w.operator.call("getHost", host.id)
    assert isinstance(got, Host)
    assert (got.id, got.name, got.generation, got.traits) == (host.id, host.name, host.generation, host.traits)
    assert [(i.resource_class, i.total, i.capacity) for i in got.inventories] == [
        (i.resource_class, i.total, i.capacity) for i in host.inventories
    ]
    _problem(w.operator, 404, "getHost", uuid.uuid4())
    _problem(w.owner, 403, "getHost", host.id)


@roundtrip("listHosts")
def _list_hosts(w: World) -> None:
    ours = {_create_host(w, region="ams1").id, _create_host(w, region="ams1").id}
    hosts = _walk(lambda cursor: w.operator.call("listHosts", region="ams1", limit=50, cursor=cursor))
    assert all(isinstance(host, Host) and host.region == "ams1" for host in hosts)
    names = [host.name for host in hosts]
    assert names == sorted(names) and len(set(names)) == len(names)  # by name, each once
    assert ours <= {host.id for host in hosts}
    drained = w.operator.call("drainHost", min(ours))
    draining = w.operator.call("listHosts", region="ams1", state=HostState.DRAINING, limit=200)
    assert isinstance(draining, HostList) and drained.id in {h.id for h in draining.data}
    assert all(h.state is HostState.DRAINING for h in draining.data)
    active = _walk(lambda cursor: w.operator.call("listHosts", state=HostState.ACTIVE, limit=200, cursor=cursor))
    assert max(ours) in {h.id for h in active} and drained.id not in {h.id for h in active}


@roundtrip("updateHostInventory")
def _update_host_inventory(w: World) -> None:
    host = _create_host(w)
    seen = host.generation
    updated = w.operator.call(
        "updateHostInventory",
        host.id,
        ResourceClass.VCPU,
        body=InventoryUpdate(total=32, reserved=0, allocation_ratio=4.0, generation=seen),
    )
    assert isinstance(updated, Host) and updated.generation > seen
    vcpu = _inventory(updated, ResourceClass.VCPU)
    assert (vcpu.total, vcpu.reserved, vcpu.capacity) == (32, 0, 128)
    assert _inventory(w.operator.call("getHost", host.id), ResourceClass.VCPU).total == 32
    # The generation read before is stale now: a conditional write is refused.
    stale = _problem(
        w.operator,
        409,
        "updateHostInventory",
        host.id,
        ResourceClass.VCPU,
        body=InventoryUpdate(total=16, generation=seen),
    )
    assert stale.type_.endswith("/concurrent-update")
    # A class the host has none of yet: created; without a generation, written unconditionally.
    with_gpu = w.operator.call("updateHostInventory", host.id, ResourceClass.GPU, body=InventoryUpdate(total=8))
    assert _inventory(with_gpu, ResourceClass.GPU).total == 8 and with_gpu.generation > updated.generation
    invalid = _problem(
        w.operator, 422, "updateHostInventory", host.id, ResourceClass.GPU, body=InventoryUpdate(total=2, reserved=3)
    )
    assert invalid.type_.endswith("/invalid-inventory")
    _problem(w.operator, 404, "updateHostInventory", uuid.uuid4(), ResourceClass.VCPU, body=InventoryUpdate(total=1))


@roundtrip("drainHost")
def _drain_host(w: World) -> None:
    host = _create_host(w)
    drained = w.operator.call("drainHost", host.id)
    assert isinstance(drained, Host) and drained.state is HostState.DRAINING and drained.generation > host.generation
    again = w.operator.call("drainHost", host.id)  # idempotent
    assert again.state is HostState.DRAINING and again.generation == drained.generation
    assert w.operator.call("getHost", host.id).state is HostState.DRAINING
    _problem(w.operator, 404, "drainHost", uuid.uuid4())


@roundtrip("markHostDown")
def _mark_host_down(w: World) -> None:
    host = _create_host(w)
    down = w.operator.call("markHostDown", host.id)
    assert isinstance(down, Host) and down.state is HostState.DOWN
    assert w.operator.call("markHostDown", host.id).generation == down.generation  # idempotent
    assert w.operator.call("getHost", host.id).state is HostState.DOWN
    _problem(w.operator, 404, "markHostDown", uuid.uuid4())


@roundtrip("activateHost")
def _activate_host(w: World) -> None:
    host = _create_host(w)
    w.operator.call("markHostDown", host.id)
    active = w.operator.call("activateHost", host.id)
    assert isinstance(active, Host) and active.state is HostState.ACTIVE
    assert w.operator.call("activateHost", host.id).generation == active.generation  # idempotent
    assert w.operator.call("getHost", host.id).state is HostState.ACTIVE
    _problem(w.operator, 404, "activateHost", uuid.uuid4())


@roundtrip("getCapacityReport")
def _get_capacity_report(w: World) -> None:
    report = w.operator.call("getCapacityReport")
    assert isinstance(report, CapacityReport)
    assert {"fra1", "ams1", "nyc1"} <= {entry.region for entry in report.regions}
    for entry in report.regions:
        assert {r.resource_class for r in entry.resources} == set(ResourceClass)
    # A host of known size in a region moves the region's numbers by exactly that; its state
    # moves the host counts. (`used` and `free` are left alone: instances come and go.)
    before = _region_report(w, "nyc1")
    host = _create_host(w, region="nyc1", total=100, reserved=4, allocation_ratio=2.0)
    added = _region_report(w, "nyc1")
    assert (added.hosts_active, added.hosts_draining, added.hosts_down) == (
        before.hosts_active + 1,
        before.hosts_draining,
        before.hosts_down,
    )
    grown = _resource(added, ResourceClass.VCPU)
    was = _resource(before, ResourceClass.VCPU)
    assert (grown.total, grown.reserved, grown.capacity) == (was.total + 100, was.reserved + 4, was.capacity + 192)
    w.operator.call("drainHost", host.id)
    drained = _region_report(w, "nyc1")
    assert (drained.hosts_active, drained.hosts_draining) == (before.hosts_active, before.hosts_draining + 1)
    assert _resource(drained, ResourceClass.VCPU).total == was.total + 100  # draining hosts still count
    w.operator.call("markHostDown", host.id)
    down = _region_report(w, "nyc1")
    assert (down.hosts_draining, down.hosts_down) == (before.hosts_draining, before.hosts_down + 1)
    # `total`, `reserved` and `capacity` are Σ over active and draining hosts: one that is down
    # is out of the fleet.
    gone = _resource(down, ResourceClass.VCPU)
    assert (gone.total, gone.reserved, gone.capacity) == (was.total, was.reserved, was.capacity)
    assert _problem(w.operator, 404, "getCapacityReport", region="nowhere1").status == 404
    _problem(w.owner, 403, "getCapacityReport")


# -- storage: volumes, volume actions, snapshots -------------------------------------

import hangar_client.models as sm  # noqa: E402 - storage's block keeps its imports with it
from hangar_client import waiters as storage_waiters  # noqa: E402


def _wait_storage(w: World, thing: str, thing_id: uuid.UUID, **kwargs: Any) -> Any:
    """hangar_client.waiters.wait_for_<thing>[_async] for the owner (volume, volume_action, snapshot)."""
    client = w.owner._authenticated()
    options = {"timeout": WAIT_TIMEOUT, "interval": 0.02, "max_interval": 0.2, **kwargs}
    if w.owner.flavour == "sync":
        return getattr(storage_waiters, f"wait_for_{thing}")(client, thing_id, **options)
    assert w.owner.target.loop is not None
    return w.owner.target.loop.run_until_complete(
        getattr(storage_waiters, f"wait_for_{thing}_async")(client, thing_id, **options)
    )


def _volume_name() -> str:
    return f"vol-{uuid.uuid4().hex[:10]}"


def _new_volume(w: World, size_gib: int = 10, **extra: Any) -> sm.Volume:
    launched = w.owner.call(
        "createVolume", body=sm.VolumeCreate(name=_volume_name(), region=LAUNCH_REGION, size_gib=size_gib, **extra)
    )
    assert isinstance(launched, sm.VolumeLaunch)
    done = _wait_storage(w, "volume_action", launched.action.id)
    assert done.status is sm.VolumeActionStatus.SUCCEEDED
    volume = w.owner.call("getVolume", launched.volume.id)
    assert isinstance(volume, sm.Volume) and volume.state is sm.VolumeState.AVAILABLE
    return volume


def _volume_act(w: World, volume_id: uuid.UUID, kind: sm.VolumeActionRequestType, **extra: Any) -> sm.VolumeAction:
    action = w.owner.call("createVolumeAction", volume_id, body=sm.VolumeActionRequest(type_=kind, **extra))
    assert isinstance(action, sm.VolumeAction) and action.volume_id == volume_id
    done = _wait_storage(w, "volume_action", action.id)
    assert done.status is sm.VolumeActionStatus.SUCCEEDED
    return action


def _new_snapshot(w: World, volume_id: uuid.UUID) -> sm.Snapshot:
    snapshot = w.owner.call("createSnapshot", volume_id, body=sm.SnapshotCreate(name=_volume_name()))
    assert isinstance(snapshot, sm.Snapshot) and snapshot.state is sm.SnapshotState.PENDING
    done = _wait_storage(w, "snapshot", snapshot.id)
    assert done.state is sm.SnapshotState.AVAILABLE
    return done


def _remove_volume(w: World, volume_id: uuid.UUID) -> None:
    volume = _wait_storage(w, "volume", volume_id, state="available")
    assert volume.instance_id is UNSET
    action = w.owner.call("deleteVolume", volume_id)
    assert _wait_storage(w, "volume_action", action.id).status is sm.VolumeActionStatus.SUCCEEDED


@roundtrip("createVolume")
def _create_volume(w: World) -> None:
    name = _volume_name()
    launched = w.owner.call("createVolume", body=sm.VolumeCreate(name=name, region=LAUNCH_REGION, size_gib=10))
    assert isinstance(launched, sm.VolumeLaunch)
    assert launched.volume.state is sm.VolumeState.CREATING and launched.volume.locked
    assert (launched.action.type_, launched.action.size_gib) == (sm.VolumeActionType.CREATE, 10)
    volume = _wait_storage(w, "volume", launched.volume.id)
    assert volume.state is sm.VolumeState.AVAILABLE and volume.name == name and volume.snapshot_id is UNSET
    # Idempotent with a key; the name is taken in the region until the volume is deleted.
    key = f"rt-{uuid.uuid4()}"
    body = sm.VolumeCreate(name=_volume_name(), region=LAUNCH_REGION, size_gib=5)
    first = w.owner.call("createVolume", body=body, idempotency_key=key)
    again = w.owner.call("createVolume", body=body, idempotency_key=key)
    assert (first.volume.id, first.action.id) == (again.volume.id, again.action.id)
    taken = _problem(w.owner, 409, "createVolume", body=sm.VolumeCreate(name=name, region=LAUNCH_REGION, size_gib=1))
    assert taken.type_.endswith("/volume-name-taken")
    for volume_id in (volume.id, first.volume.id):
        _remove_volume(w, volume_id)


@roundtrip("getVolume")
def _get_volume(w: World) -> None:
    volume = _new_volume(w)
    got = w.owner.call("getVolume", volume.id)
    assert isinstance(got, sm.Volume) and (got.id, got.size_gib, got.region) == (volume.id, 10, LAUNCH_REGION)
    assert isinstance(got.created_at, dt.datetime) and got.deleted_at is None and not got.locked
    _problem(w.owner, 404, "getVolume", uuid.uuid4())
    _remove_volume(w, volume.id)


@roundtrip("listVolumes")
def _list_volumes(w: World) -> None:
    older, newer = _new_volume(w), _new_volume(w)
    listed = _walk(lambda cursor: w.owner.call("listVolumes", limit=1, cursor=cursor))
    ids = [v.id for v in listed]
    assert all(isinstance(v, sm.Volume) for v in listed) and len(ids) == len(set(ids))
    assert ids.index(newer.id) < ids.index(older.id)
    available = w.owner.call("listVolumes", state=sm.VolumeState.AVAILABLE, region=LAUNCH_REGION, limit=200)
    assert isinstance(available, sm.VolumeList) and {older.id, newer.id} <= {v.id for v in available.data}
    assert w.owner.call("listVolumes", instance_id=uuid.uuid4()).data == []
    for volume in (older, newer):
        _remove_volume(w, volume.id)


@roundtrip("deleteVolume")
def _delete_volume(w: World) -> None:
    volume = _new_volume(w)
    action = w.owner.call("deleteVolume", volume.id)
    assert isinstance(action, sm.VolumeAction) and action.type_ is sm.VolumeActionType.DELETE
    assert w.owner.call("deleteVolume", volume.id).id == action.id  # idempotent
    assert _wait_storage(w, "volume_action", action.id).status is sm.VolumeActionStatus.SUCCEEDED
    gone = _wait_storage(w, "volume", volume.id, state="deleted")
    assert isinstance(gone.deleted_at, dt.datetime)
    _problem(w.owner, 404, "deleteVolume", uuid.uuid4())


@roundtrip("createVolumeAction")
def _create_volume_action(w: World) -> None:
    instance = _running(w)
    volume = _new_volume(w)
    attach = _volume_act(w, volume.id, sm.VolumeActionRequestType.ATTACH, instance_id=instance.id)
    assert (attach.type_, attach.instance_id) == (sm.VolumeActionType.ATTACH, instance.id)
    in_use = _wait_storage(w, "volume", volume.id, state="in_use")
    assert in_use.instance_id == instance.id and isinstance(in_use.attached_at, dt.datetime)
    again = _problem(
        w.owner, 409, "createVolumeAction", volume.id,
        body=sm.VolumeActionRequest(type_=sm.VolumeActionRequestType.ATTACH, instance_id=instance.id),
    )  # fmt: skip
    assert again.type_.endswith("/invalid-state")
    resize = _volume_act(w, volume.id, sm.VolumeActionRequestType.RESIZE, size_gib=20)
    assert resize.size_gib == 20 and w.owner.call("getVolume", volume.id).size_gib == 20
    shrink = _problem(
        w.owner, 409, "createVolumeAction", volume.id,
        body=sm.VolumeActionRequest(type_=sm.VolumeActionRequestType.RESIZE, size_gib=5),
    )  # fmt: skip
    assert shrink.type_.endswith("/cannot-shrink")
    _volume_act(w, volume.id, sm.VolumeActionRequestType.DETACH)
    assert _wait_storage(w, "volume", volume.id).instance_id is UNSET
    _problem(
        w.owner, 404, "createVolumeAction", uuid.uuid4(),
        body=sm.VolumeActionRequest(type_=sm.VolumeActionRequestType.DETACH),
    )  # fmt: skip
    _remove_volume(w, volume.id)
    _dispose(w, instance.id)


@roundtrip("listVolumeActions")
def _list_volume_actions(w: World) -> None:
    volume = _new_volume(w)
    _volume_act(w, volume.id, sm.VolumeActionRequestType.RESIZE, size_gib=11)
    actions = _walk(lambda cursor: w.owner.call("listVolumeActions", volume.id, limit=1, cursor=cursor))
    assert all(isinstance(a, sm.VolumeAction) and a.volume_id == volume.id for a in actions)
    assert [a.type_ for a in actions] == [sm.VolumeActionType.RESIZE, sm.VolumeActionType.CREATE]
    page = w.owner.call("listVolumeActions", volume.id)
    assert isinstance(page, sm.VolumeActionList) and [a.id for a in page.data] == [a.id for a in actions]
    _problem(w.owner, 404, "listVolumeActions", uuid.uuid4())
    _remove_volume(w, volume.id)


@roundtrip("getVolumeAction")
def _get_volume_action(w: World) -> None:
    launched = w.owner.call("createVolume", body=sm.VolumeCreate(name=_volume_name(), region=LAUNCH_REGION, size_gib=1))
    action = w.owner.call("getVolumeAction", launched.action.id)
    assert isinstance(action, sm.VolumeAction) and (action.id, action.volume_id) == (
        launched.action.id,
        launched.volume.id,
    )
    done = _wait_storage(w, "volume_action", action.id)
    assert done.progress == 100 and isinstance(done.completed_at, dt.datetime) and done.error is None
    _problem(w.owner, 404, "getVolumeAction", uuid.uuid4())
    _remove_volume(w, launched.volume.id)


@roundtrip("createSnapshot")
def _create_snapshot(w: World) -> None:
    volume = _new_volume(w, size_gib=3)
    snapshot = _new_snapshot(w, volume.id)
    assert (snapshot.volume_id, snapshot.size_gib, snapshot.region) == (volume.id, 3, LAUNCH_REGION)
    restored = _new_volume(w, size_gib=4, snapshot_id=snapshot.id)
    assert restored.snapshot_id == snapshot.id
    small = _problem(
        w.owner, 422, "createVolume",
        body=sm.VolumeCreate(name=_volume_name(), region=LAUNCH_REGION, size_gib=1, snapshot_id=snapshot.id),
    )  # fmt: skip
    assert small.type_.endswith("/volume-too-small")
    _problem(w.owner, 404, "createSnapshot", uuid.uuid4(), body=sm.SnapshotCreate(name="nope"))
    for volume_id in (volume.id, restored.id):
        _remove_volume(w, volume_id)


@roundtrip("getSnapshot")
def _get_snapshot(w: World) -> None:
    volume = _new_volume(w)
    snapshot = _new_snapshot(w, volume.id)
    got = w.owner.call("getSnapshot", snapshot.id)
    assert isinstance(got, sm.Snapshot) and got.id == snapshot.id and isinstance(got.completed_at, dt.datetime)
    _problem(w.owner, 404, "getSnapshot", uuid.uuid4())
    _remove_volume(w, volume.id)


@roundtrip("listSnapshots")
def _list_snapshots(w: World) -> None:
    volume = _new_volume(w)
    first, second = _new_snapshot(w, volume.id), _new_snapshot(w, volume.id)
    listed = _walk(lambda cursor: w.owner.call("listSnapshots", volume_id=volume.id, limit=1, cursor=cursor))
    assert [s.id for s in listed] == [second.id, first.id]
    page = w.owner.call("listSnapshots", state=sm.SnapshotState.AVAILABLE, region=LAUNCH_REGION, limit=200)
    assert isinstance(page, sm.SnapshotList) and {first.id, second.id} <= {s.id for s in page.data}
    _remove_volume(w, volume.id)


@roundtrip("deleteSnapshot")
def _delete_snapshot(w: World) -> None:
    volume = _new_volume(w)
    snapshot = _new_snapshot(w, volume.id)
    deleting = w.owner.call("deleteSnapshot", snapshot.id)
    assert isinstance(deleting, sm.Snapshot) and deleting.state in (sm.SnapshotState.DELETING, sm.SnapshotState.DELETED)
    deadline = time.monotonic() + WAIT_TIMEOUT
    while (state := w.owner.call("getSnapshot", snapshot.id).state) is not sm.SnapshotState.DELETED:
        assert time.monotonic() < deadline, state
        time.sleep(0.02)
    assert w.owner.call("deleteSnapshot", snapshot.id).state is sm.SnapshotState.DELETED  # idempotent
    _problem(w.owner, 404, "deleteSnapshot", uuid.uuid4())
    _remove_volume(w, volume.id)


# -- payments: payment methods, top-ups, refunds, the sandbox webhook -------------------

GOOD_CARD, DECLINED_CARD = "4242424242424242", "4000000000000002"


def _top_up(w: World, amount: int = 2500, **extra: Any) -> TopUp:
    body = TopUpCreate(amount=amount, card=extra.pop("card", GOOD_CARD), **extra)
    top_up = w.owner.call("createTopUp", body=body, idempotency_key=f"rt-{uuid.uuid4()}")
    assert isinstance(top_up, TopUp)
    return top_up


def _succeeded(w: World, top_up_id: uuid.UUID) -> TopUp:
    """The top-up once the provider's webhook made it succeed (hangar_client's waiter)."""
    client = w.owner._authenticated()
    if w.owner.flavour == "sync":
        done = payment_waiters.wait_for_top_up(client, top_up_id, timeout=WAIT_TIMEOUT, interval=0.05, max_interval=0.2)
    else:
        assert w.owner.target.loop is not None
        done = w.owner.target.loop.run_until_complete(
            payment_waiters.wait_for_top_up_async(
                client, top_up_id, timeout=WAIT_TIMEOUT, interval=0.05, max_interval=0.2
            )
        )
    assert isinstance(done, TopUp) and done.status is TopUpStatus.SUCCEEDED
    return done


def _payment_method(w: World) -> PaymentMethod:
    method = w.owner.call(
        "createPaymentMethod",
        body=PaymentMethodCreate(number=GOOD_CARD, exp_month=12, exp_year=2099, cvc="123"),
        idempotency_key=f"rt-{uuid.uuid4()}",
    )
    assert isinstance(method, PaymentMethod)
    return method


@roundtrip("createPaymentMethod")
def _create_payment_method(w: World) -> None:
    method = _payment_method(w)
    assert (method.brand, method.last4, method.provider) == (CardBrand.VISA, "4242", PaymentProvider.SANDBOX)
    unknown = _problem(
        w.owner,
        422,
        "createPaymentMethod",
        body=PaymentMethodCreate(number="4111111111111111", exp_month=1, exp_year=2099, cvc="123"),
    )
    assert unknown.type_.endswith("/unknown-test-card") and "4111111111111111" not in unknown.detail


@roundtrip("getPaymentMethod")
def _get_payment_method(w: World) -> None:
    method = _payment_method(w)
    got = w.owner.call("getPaymentMethod", method.id)
    assert isinstance(got, PaymentMethod) and (got.id, got.last4) == (method.id, "4242")
    _problem(w.owner, 404, "getPaymentMethod", uuid.uuid4())


@roundtrip("listPaymentMethods")
def _list_payment_methods(w: World) -> None:
    method = _payment_method(w)
    page = w.owner.call("listPaymentMethods", limit=200)
    assert isinstance(page, PaymentMethodList) and method.id in {m.id for m in page.data}


@roundtrip("deletePaymentMethod")
def _delete_payment_method(w: World) -> None:
    method = _payment_method(w)
    assert w.owner.detailed("deletePaymentMethod", method.id).status_code == 204
    _problem(w.owner, 404, "getPaymentMethod", method.id)
    _problem(w.owner, 404, "deletePaymentMethod", method.id)


@roundtrip("createTopUp")
def _create_top_up(w: World) -> None:
    top_up = _top_up(w, 2500)
    assert top_up.status is TopUpStatus.PROCESSING and top_up.processing and top_up.card_last4 == "4242"
    done = _succeeded(w, top_up.id)
    assert isinstance(done.balance_after, int) and done.balance_after >= 2500
    declined = _top_up(w, 2500, card=DECLINED_CARD)
    assert declined.status is TopUpStatus.FAILED and declined.failure_code == "card_declined"
    missing = _problem(w.owner, 422, "createTopUp", body=TopUpCreate(amount=2500))
    assert missing.type_.endswith("/payment-source-required")
    method = _payment_method(w)
    paid = _top_up(w, 100, card=UNSET, payment_method=method.id)
    assert paid.payment_method == method.id


@roundtrip("getTopUp")
def _get_top_up(w: World) -> None:
    top_up = _top_up(w, 100, confirm=False)
    got = w.owner.call("getTopUp", top_up.id)
    assert isinstance(got, TopUp) and got.status is TopUpStatus.REQUIRES_CONFIRMATION and got.processing is False
    _problem(w.owner, 404, "getTopUp", uuid.uuid4())


@roundtrip("listTopUps")
def _list_top_ups(w: World) -> None:
    top_up = _top_up(w, 100, confirm=False)
    page = w.owner.call("listTopUps", limit=200, status=TopUpStatus.REQUIRES_CONFIRMATION)
    assert isinstance(page, TopUpList) and top_up.id in {t.id for t in page.data}
    assert all(t.status is TopUpStatus.REQUIRES_CONFIRMATION for t in page.data)


@roundtrip("confirmTopUp")
def _confirm_top_up(w: World) -> None:
    top_up = _top_up(w, 100, confirm=False)
    confirmed = w.owner.call("confirmTopUp", top_up.id)
    assert isinstance(confirmed, TopUp) and confirmed.status is TopUpStatus.PROCESSING
    assert _problem(w.owner, 409, "confirmTopUp", top_up.id).type_.endswith("/invalid-top-up-state")
    _succeeded(w, top_up.id)


@roundtrip("cancelTopUp")
def _cancel_top_up(w: World) -> None:
    top_up = _top_up(w, 100, confirm=False)
    canceled = w.owner.call("cancelTopUp", top_up.id)
    assert isinstance(canceled, TopUp) and canceled.status is TopUpStatus.CANCELED
    assert _problem(w.owner, 409, "cancelTopUp", top_up.id).type_.endswith("/invalid-top-up-state")


@roundtrip("createRefund")
def _create_refund(w: World) -> None:
    top_up = _succeeded(w, _top_up(w, 1000).id)
    refund = w.owner.call(
        "createRefund", top_up.id, body=RefundCreate(amount=400), idempotency_key=f"rt-{uuid.uuid4()}"
    )
    assert isinstance(refund, Refund) and (refund.amount, refund.status) == (400, RefundStatus.SUCCEEDED)
    too_much = _problem(w.owner, 409, "createRefund", top_up.id, body=RefundCreate(amount=601))
    assert too_much.type_.endswith("/refund-exceeds-top-up")
    assert w.owner.call("getTopUp", top_up.id).amount_refunded == 400


@roundtrip("listRefunds")
def _list_refunds(w: World) -> None:
    top_up = _succeeded(w, _top_up(w, 1000).id)
    w.owner.call("createRefund", top_up.id, body=RefundCreate(), idempotency_key=f"rt-{uuid.uuid4()}")
    page = w.owner.call("listRefunds", top_up.id)
    assert isinstance(page, RefundList) and [r.amount for r in page.data] == [1000]


@roundtrip("receiveSandboxWebhook")
def _receive_sandbox_webhook(w: World) -> None:
    """The provider's side, by hand: a signed event for a processing top-up. The SDK sends
    `body` as httpx's compact JSON, so the signature is computed over exactly those bytes."""
    top_up = w.owner.call("confirmTopUp", _top_up(w, 100, confirm=False).id)
    event = SandboxEvent(
        id="evt_" + uuid.uuid4().hex,
        type_=SandboxEventType.TOP_UP_SUCCEEDED,
        created=int(time.time()),
        data=SandboxEventData(top_up_id=top_up.id, amount=100, currency="USD"),
    )
    raw = json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    header = signing.sign(raw, PAYMENTS_WEBHOOK_SECRET, int(time.time()))
    anonymous = w.owner.as_key(None)
    receipt = anonymous.call("receiveSandboxWebhook", body=event, hangar_signature=header)
    # The sandbox's own event for this top-up may have been delivered first: then ours is ignored.
    assert isinstance(receipt, WebhookReceipt) and receipt.status is TopUpStatus.SUCCEEDED
    assert receipt.top_up_id == top_up.id and receipt.event_id == event.id
    replayed = _problem(anonymous, 409, "receiveSandboxWebhook", body=event, hangar_signature=header)
    assert replayed.type_.endswith("/webhook-event-replayed")
    forged = signing.sign(raw, "whsec_not_the_secret_000000000000", int(time.time()))
    bad = _problem(anonymous, 400, "receiveSandboxWebhook", body=event, hangar_signature=forged)
    assert bad.type_.endswith("/webhook-signature-invalid")


# -- billing: ledger -------------------------------------------------------------------


def _wallet_known(w: World) -> Any:
    """The tenant's balance as the operator sees it, once billing has opened the wallet (on
    organization.created, delivered just after the signup)."""
    from hangar_client.models import BillingBalance

    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        response = w.operator.detailed("getOrganizationBalance", w.organization_id)
        if response.status_code == 200:
            assert isinstance(response.parsed, BillingBalance)
            return response.parsed
        assert response.status_code == 404 and time.monotonic() < deadline, response.content
        time.sleep(0.05)


@roundtrip("getBalance")
def _get_balance(w: World) -> None:
    from hangar_client.models import BillingBalance

    _wallet_known(w)
    b = w.owner.call("getBalance")
    assert isinstance(b, BillingBalance) and b.currency == "USD"
    assert b.available == b.balance - b.held + b.credit_limit


@roundtrip("listTransactions")
def _list_transactions(w: World) -> None:
    from hangar_client.models import (
        CreditAdjustmentCreate,
        CreditAdjustmentDirection,
        Transaction,
        TransactionList,
        TransactionStatus,
    )

    _wallet_known(w)
    w.operator.call(
        "createCreditAdjustment",
        w.organization_id,
        body=CreditAdjustmentCreate(direction=CreditAdjustmentDirection.CREDIT, amount=11, reason="round trip"),
    )
    rows = _walk(lambda cursor: w.owner.call("listTransactions", limit=1, cursor=cursor))
    assert rows and all(isinstance(r, Transaction) for r in rows)
    assert all(isinstance(r.status, TransactionStatus) for r in rows)
    only = w.owner.call("listTransactions", code="adjustment")
    assert isinstance(only, TransactionList) and only.data and {r.code for r in only.data} == {"adjustment"}


@roundtrip("listUsage")
def _list_usage(w: World) -> None:
    from hangar_client.models import UsageList

    usage = w.owner.call("listUsage")
    assert isinstance(usage, UsageList) and usage.currency == "USD"
    assert usage.total == sum(line.amount for line in usage.data) or usage.next_cursor
    problem = _problem(w.owner, 422, "listUsage", from_=dt.date(2026, 1, 1), to=dt.date(2026, 6, 1))
    assert problem.type_.endswith("range-too-long")


@roundtrip("listStatements")
def _list_statements(w: World) -> None:
    from hangar_client.models import StatementList, StatementStatus

    _wallet_known(w)
    page = w.owner.call("listStatements")
    assert isinstance(page, StatementList) and page.data
    assert page.data[0].status is StatementStatus.OPEN and page.data[0].finalized_at is None


@roundtrip("getStatement")
def _get_statement(w: World) -> None:
    from hangar_client.models import Statement

    _wallet_known(w)
    first = w.owner.call("listStatements").data[0]
    statement = w.owner.call("getStatement", first.id)
    assert isinstance(statement, Statement) and statement.period == first.period
    assert sum(line.amount for line in statement.lines) == statement.closing_balance - statement.opening_balance
    _problem(w.owner, 404, "getStatement", uuid.uuid4())


@roundtrip("listStatementLines")
def _list_statement_lines(w: World) -> None:
    from hangar_client.models import StatementLine

    _wallet_known(w)
    first = w.owner.call("listStatements").data[0]
    lines = _walk(lambda cursor: w.owner.call("listStatementLines", first.id, limit=1, cursor=cursor))
    assert all(isinstance(line, StatementLine) for line in lines)
    assert len(lines) == len(w.owner.call("getStatement", first.id).lines)
    _problem(w.owner, 404, "listStatementLines", uuid.uuid4())


@roundtrip("getOrganizationBalance")
def _get_organization_balance(w: World) -> None:
    seen = _wallet_known(w)
    assert seen.balance == w.owner.call("getBalance").balance
    _problem(w.operator, 404, "getOrganizationBalance", uuid.uuid4())
    _problem(w.owner, 403, "getOrganizationBalance", w.organization_id)


@roundtrip("setCreditLimit")
def _set_credit_limit(w: World) -> None:
    from hangar_client.models import BillingBalance, CreditLimitUpdate

    _wallet_known(w)
    raised = w.operator.call("setCreditLimit", w.organization_id, body=CreditLimitUpdate(credit_limit=1_000))
    assert isinstance(raised, BillingBalance) and raised.credit_limit == 1_000
    assert w.owner.call("getBalance").credit_limit == 1_000
    back = w.operator.call("setCreditLimit", w.organization_id, body=CreditLimitUpdate(credit_limit=0))
    assert back.credit_limit == 0
    _problem(w.operator, 404, "setCreditLimit", uuid.uuid4(), body=CreditLimitUpdate(credit_limit=1))


@roundtrip("createCreditAdjustment")
def _create_credit_adjustment(w: World) -> None:
    from hangar_client.models import CreditAdjustment, CreditAdjustmentCreate, CreditAdjustmentDirection

    before = _wallet_known(w)
    credit = w.operator.call(
        "createCreditAdjustment",
        w.organization_id,
        body=CreditAdjustmentCreate(direction=CreditAdjustmentDirection.CREDIT, amount=250, reason="round trip"),
    )
    assert isinstance(credit, CreditAdjustment) and credit.amount == 250
    assert credit.balance.balance == before.balance + 250
    debit = w.operator.call(
        "createCreditAdjustment",
        w.organization_id,
        body=CreditAdjustmentCreate(direction=CreditAdjustmentDirection.DEBIT, amount=250, reason="round trip"),
    )
    assert debit.balance.balance == before.balance
    too_much = CreditAdjustmentCreate(
        direction=CreditAdjustmentDirection.DEBIT, amount=debit.balance.available + 1, reason="round trip"
    )
    problem = _problem(w.operator, 409, "createCreditAdjustment", w.organization_id, body=too_much)
    assert problem.type_.endswith("insufficient-funds")


# --- terminal -------------------------------------------------------------------


def _terminal_models() -> Any:
    import hangar_client.models as m

    return m


@roundtrip("createTerminalSession")
def _create_terminal_session(w: World) -> None:
    m = _terminal_models()
    instance = _running(w)
    created = w.owner.call(
        "createTerminalSession", instance.id, body=m.TerminalSessionCreate(command=["uname", "-a"], cols=100, rows=30)
    )
    assert isinstance(created, m.TerminalSessionCreated)
    assert created.instance_id == instance.id and created.status is m.TerminalSessionStatus.PENDING
    assert created.ticket.startswith("hgt_") and created.ticket not in created.url
    assert created.url.endswith(f"/v1/terminal-sessions/{created.id}/stream") and created.url.startswith("ws")
    assert (created.cols, created.rows, created.command) == (100, 30, ["uname", "-a"])
    assert created.expires_at > created.created_at
    _problem(w.owner, 404, "createTerminalSession", uuid.uuid4(), body=m.TerminalSessionCreate())
    w.owner.wait_for_action(_act(w, instance.id, InstanceActionRequestType.STOP).id)
    stopped = _problem(w.owner, 409, "createTerminalSession", instance.id, body=m.TerminalSessionCreate())
    assert stopped.type_.endswith("/instance-not-running")
    _dispose(w, instance.id)


@roundtrip("listTerminalSessions")
def _list_terminal_sessions(w: World) -> None:
    m = _terminal_models()
    instance = _running(w)
    first = w.owner.call("createTerminalSession", instance.id, body=m.TerminalSessionCreate())
    second = w.owner.call("createTerminalSession", instance.id, body=m.TerminalSessionCreate(command=["true"]))
    listed = _walk(lambda cursor: w.owner.call("listTerminalSessions", limit=1, cursor=cursor, instance_id=instance.id))
    assert all(isinstance(s, m.TerminalSession) for s in listed)
    assert [s.id for s in listed] == [second.id, first.id]  # newest first
    w.owner.call("deleteTerminalSession", first.id)
    ended = w.owner.call("listTerminalSessions", instance_id=instance.id, status=m.TerminalSessionStatus.ENDED)
    assert isinstance(ended, m.TerminalSessionList) and [s.id for s in ended.data] == [first.id]
    pending = w.owner.call("listTerminalSessions", instance_id=instance.id, status=m.TerminalSessionStatus.PENDING)
    assert [s.id for s in pending.data] == [second.id]
    w.owner.call("deleteTerminalSession", second.id)
    _dispose(w, instance.id)


@roundtrip("getTerminalSession")
def _get_terminal_session(w: World) -> None:
    m = _terminal_models()
    instance = _running(w)
    created = w.owner.call("createTerminalSession", instance.id, body=m.TerminalSessionCreate())
    got = w.owner.call("getTerminalSession", created.id)
    assert isinstance(got, m.TerminalSession) and got.id == created.id
    assert got.status is m.TerminalSessionStatus.PENDING and got.api_key_id == w.api_key_id
    assert got.bytes_in == 0 and got.bytes_out == 0 and got.started_at is None and got.end_reason is None
    _problem(w.owner, 404, "getTerminalSession", uuid.uuid4())
    w.owner.call("deleteTerminalSession", created.id)
    _dispose(w, instance.id)


@roundtrip("deleteTerminalSession")
def _delete_terminal_session(w: World) -> None:
    m = _terminal_models()
    instance = _running(w)
    created = w.owner.call("createTerminalSession", instance.id, body=m.TerminalSessionCreate())
    assert w.owner.call("deleteTerminalSession", created.id) is None
    got = w.owner.call("getTerminalSession", created.id)
    assert got.status is m.TerminalSessionStatus.ENDED and got.end_reason == "closed"
    assert w.owner.call("deleteTerminalSession", created.id) is None  # closing an ended session changes nothing
    _problem(w.owner, 404, "deleteTerminalSession", uuid.uuid4())
    _dispose(w, instance.id)
