"""An SDK round trip through every operation in the spec, in both SDK flavours:

- sync: `hangar_client` over real HTTP to a `hangar-server` process (tests/conftest.py's
  `live_server`, response validation on);
- async: `hangar_client`'s asyncio functions in-process, through `httpx.ASGITransport`.

The test is parametrized over generated.routing.OPERATIONS, so a new operation without a
round trip here fails. Each round trip asserts typed results (the SDK's attrs models, not
dicts), that what it wrote reads back, and that the spec's failure answers arrive as typed
`Problem`s.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from hangar_client.models import (
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyStatus,
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
    Problem,
    Role,
    Scope,
    SignupRequest,
    SignupResult,
)
from hangar_client.types import UNSET

from generated.routing import OPERATIONS
from hangar.dispatch import HangarApp

from .coverage import COVERAGE
from .sdk import Sdk, Target
from .support import PASSWORD, load_spec, unique_email


@dataclass(frozen=True)
class World:
    """An organization signed up through the SDK, and its owner's key."""

    owner: Sdk
    organization_id: uuid.UUID
    user_id: uuid.UUID
    api_key_id: uuid.UUID


def _sign_up(anonymous: Sdk, organization: str) -> SignupResult:
    result = anonymous.call(
        "signUp", body=SignupRequest(email=unique_email("sdk"), password=PASSWORD, organization=organization)
    )
    assert isinstance(result, SignupResult)
    return result


@pytest.fixture(scope="module", params=["sync", "async"])
def world(request: pytest.FixtureRequest, contract_app: HangarApp) -> Iterator[World]:
    if request.param == "sync":
        target = Target(str(request.getfixturevalue("live_server")))
    else:
        loop = asyncio.new_event_loop()
        request.addfinalizer(loop.close)
        target = Target("http://testserver", {"transport": httpx.ASGITransport(app=contract_app)}, loop)
    signed_up = _sign_up(Sdk(request.param, target), "SDK Round Trip")
    yield World(
        owner=Sdk(request.param, target, signed_up.secret),
        organization_id=signed_up.organization.id,
        user_id=signed_up.user.id,
        api_key_id=signed_up.api_key.id,
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
