"""Identity & Access services on a real database built by the migrations (SQLite by default;
PostgreSQL in the `-m postgres` run)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from identity_support import World
from sqlalchemy import select

from handlers.identity import passwords, policy, published, services
from handlers.identity.tables import ApiKey, Membership, User
from hangar.problems import BadRequest, Conflict, Forbidden, NotFound, Unprocessable

pytestmark = pytest.mark.postgres

Validate = Callable[[dict[str, Any]], None]


# --- signup -----------------------------------------------------------------------------


def test_signup_creates_org_owner_and_a_full_key(world: World, event_validator: Validate) -> None:
    result = world.signup("Ada@Example.com", "Acme")
    assert result.organization.name == "Acme"
    assert result.organization.billing_email == "Ada@Example.com"
    assert result.user.status == "active"
    assert result.user.password_hash and result.user.password_hash.startswith("$argon2id$")
    assert passwords.verify_password(result.user.password_hash, "correct-horse-battery")
    assert "correct-horse-battery" not in result.user.password_hash
    membership = world.session.scalar(select(Membership).where(Membership.user_id == result.user.id))
    assert membership is not None and membership.role == "owner"
    assert set(result.api_key.scopes) == policy.caps("owner")
    assert result.api_key.key_hash != result.secret and result.secret.startswith(result.api_key.prefix + "_")

    principal = world.principal(result.secret)
    assert principal.organization_id == result.organization.id
    assert principal.role == "owner" and principal.scopes == policy.TENANT_SCOPES

    events = world.events()
    assert [e["type"] for e in events] == ["organization.created", "api_key.created"]
    for event in events:
        event_validator(event)
        assert event["organization_id"] == str(result.organization.id)
    assert events[0]["data"] == {
        "name": "Acme",
        "owner_user_id": str(result.user.id),
        "owner_email": "Ada@Example.com",
    }
    assert events[1]["data"]["prefix"] == result.api_key.prefix
    assert result.secret not in str(events)  # never the secret in an event


def test_signup_email_is_unique_case_insensitively(world: World) -> None:
    world.signup("grace@example.com")
    with pytest.raises(Conflict) as err:
        world.signup("GRACE@example.COM")
    assert err.value.slug == "email-taken"


def test_an_invited_person_signing_up_claims_their_user(world: World) -> None:
    owner = world.signup()
    ctx = world.ctx(owner.secret)
    invited = services.invite_member(ctx, ctx.caller.organization_id, email="lin@example.com", role="member").member
    world.session.flush()
    assert invited.user.status == "invited" and invited.user.password_hash is None

    theirs = world.signup("Lin@example.com", "Lin's org")
    assert theirs.user.id == invited.user.id
    world.session.refresh(invited.user)
    world.session.refresh(invited.membership)
    assert invited.user.status == "active"
    # Their place in Acme waits for them to accept the invitation (with this password).
    assert invited.membership.status == "invited"
    with pytest.raises(Conflict):  # and the address cannot be claimed twice
        world.signup("lin@example.com")


# --- authenticate -----------------------------------------------------------------------


def test_authenticate_rejects_wrong_revoked_expired_and_removed(world: World) -> None:
    owner = world.signup()
    session = world.session
    now = world.anonymous().now
    assert published.authenticate(session, "hgr_nonsense", now) is None
    # The last character changed (to one it is not): the checksum no longer matches.
    tampered = owner.secret[:-1] + ("x" if owner.secret[-1] != "x" else "y")
    assert published.authenticate(session, tampered, now) is None

    ctx = world.ctx(owner.secret)
    soon = services.create_api_key(ctx, name="short", scopes=["instances:read"], expires_at=now + timedelta(hours=1))
    session.flush()
    assert published.authenticate(session, soon.secret, now) is not None
    assert published.authenticate(session, soon.secret, now + timedelta(hours=1)) is None  # expired

    services.revoke_api_key(ctx, soon.api_key.id)
    session.flush()
    assert published.authenticate(session, soon.secret, now) is None

    member, secret = world.member_with_key(owner.secret, "member")
    assert published.authenticate(session, secret, now) is not None
    services.remove_member(world.ctx(owner.secret), ctx.caller.organization_id, member.membership.id)
    session.flush()
    assert published.authenticate(session, secret, now) is None


def test_demotion_takes_power_from_existing_keys_at_once(world: World) -> None:
    owner = world.signup()
    member, secret = world.member_with_key(owner.secret, "admin")
    assert world.principal(secret).scopes == policy.TENANT_SCOPES
    ctx = world.ctx(owner.secret)
    services.update_member(ctx, ctx.caller.organization_id, member.membership.id, role="viewer")
    world.session.flush()
    principal = world.principal(secret)
    assert principal.role == "viewer"
    assert principal.scopes == policy.caps("viewer")
    # The stored key still lists its scopes; only their effect changed.
    assert set(world.session.get_one(ApiKey, principal.api_key_id).scopes) == policy.TENANT_SCOPES


def test_last_used_at_is_written_at_most_once_a_minute(world: World) -> None:
    owner = world.signup()
    session = world.session
    t0 = world.anonymous().now
    key_id = world.principal(owner.secret, t0).api_key_id
    session.flush()
    key = session.get_one(ApiKey, key_id)
    session.refresh(key)
    assert key.last_used_at == t0

    world.principal(owner.secret, t0 + timedelta(seconds=59))
    session.flush()
    session.refresh(key)
    assert key.last_used_at == t0  # throttled: no write

    world.principal(owner.secret, t0 + timedelta(seconds=61))
    session.flush()
    session.refresh(key)
    assert key.last_used_at == t0 + timedelta(seconds=61)


# --- API keys ---------------------------------------------------------------------------


def test_create_key_within_role_and_key(world: World, event_validator: Validate) -> None:
    owner = world.signup()
    ctx = world.ctx(owner.secret)
    expires = ctx.now + timedelta(days=30)
    created = services.create_api_key(ctx, name="ci", scopes=["instances:read", "api-keys:read"], expires_at=expires)
    assert created.api_key.user_id == ctx.caller.user_id
    assert created.api_key.scopes == ["api-keys:read", "instances:read"]
    event = world.events("api_key.created")[-1]
    event_validator(event)
    assert event["data"]["expires_at"].endswith("Z") and event["data"]["scopes"] == ["api-keys:read", "instances:read"]

    # A key can only hand out what it holds itself (no escalation through a weaker key).
    weak = world.ctx(created.secret)
    with pytest.raises(Forbidden) as err:
        services.create_api_key(weak, name="x", scopes=["instances:read", "instances:write"], expires_at=None)
    assert "instances:write" in err.value.detail and err.value.slug == "scope-escalation"
    assert "instances:read" not in err.value.detail


def test_create_key_beyond_role_is_forbidden_naming_the_scopes(world: World) -> None:
    owner = world.signup()
    _member, secret = world.member_with_key(owner.secret, "billing")
    ctx = world.ctx(secret)
    with pytest.raises(Forbidden) as err:
        services.create_api_key(
            ctx, name="x", scopes=["billing:read", "instances:write", "members:write"], expires_at=None
        )
    assert "instances:write" in err.value.detail and "members:write" in err.value.detail
    assert "billing:read" not in err.value.detail


def test_expiry_must_be_in_the_future(world: World) -> None:
    ctx = world.ctx(world.signup().secret)
    for when in (ctx.now, ctx.now - timedelta(seconds=1)):
        with pytest.raises(Unprocessable) as err:
            services.create_api_key(ctx, name="x", scopes=["instances:read"], expires_at=when)
        assert err.value.errors == [{"location": "body.expires_at", "message": "must be in the future"}]


def test_list_keys_newest_first_in_pages(world: World) -> None:
    owner = world.signup()
    base = world.anonymous().now
    names = []
    for i in range(5):
        ctx = world.ctx(owner.secret, base + timedelta(seconds=i + 1))
        services.create_api_key(ctx, name=f"k{i}", scopes=["instances:read"], expires_at=None)
        names.append(f"k{i}")
    world.session.flush()
    ctx = world.ctx(owner.secret, base + timedelta(seconds=10))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = services.list_api_keys(ctx, 2, cursor)
        seen += [k.name for k in page.items]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [*reversed(names), services.SIGNUP_KEY_NAME]
    assert pages == 3


def test_an_invalid_cursor_is_a_400(world: World) -> None:
    ctx = world.ctx(world.signup().secret)
    for cursor in ("not-a-cursor", "eyJ4IjoxfQ", "AAAA"):
        with pytest.raises(BadRequest):
            services.list_api_keys(ctx, 10, cursor)


def test_members_see_and_revoke_only_their_own_keys(world: World) -> None:
    owner = world.signup()
    _m, member_secret = world.member_with_key(owner.secret, "member")
    _a, admin_secret = world.member_with_key(owner.secret, "admin")
    owner_key_id = world.principal(owner.secret).api_key_id

    member = world.ctx(member_secret)
    listed = services.list_api_keys(member, 50, None).items
    assert [k.user_id for k in listed] == [member.caller.user_id]
    with pytest.raises(NotFound):  # 404, not 403: the key's existence is not theirs to know
        services.get_api_key(member, owner_key_id)
    with pytest.raises(NotFound):
        services.revoke_api_key(member, owner_key_id)

    admin = world.ctx(admin_secret)
    assert len(services.list_api_keys(admin, 50, None).items) == 3
    assert services.get_api_key(admin, owner_key_id).id == owner_key_id


def test_revoke_is_idempotent_and_emits_once(world: World, event_validator: Validate) -> None:
    owner = world.signup()
    ctx = world.ctx(owner.secret)
    created = services.create_api_key(ctx, name="x", scopes=["instances:read"], expires_at=None)
    services.revoke_api_key(ctx, created.api_key.id)
    first = created.api_key.revoked_at
    services.revoke_api_key(ctx, created.api_key.id)
    assert created.api_key.revoked_at == first
    events = world.events("api_key.revoked")
    assert len(events) == 1
    event_validator(events[0])
    assert events[0]["data"] == {
        "api_key_id": str(created.api_key.id),
        "user_id": str(ctx.caller.user_id),
        "reason": "revoked",
    }
    assert created.api_key.status(ctx.now) == "revoked"


# --- members ----------------------------------------------------------------------------


def test_invite_creates_an_invited_user_and_emits(world: World, event_validator: Validate) -> None:
    owner = world.signup()
    ctx = world.ctx(owner.secret)
    org_id = ctx.caller.organization_id
    member = services.invite_member(ctx, org_id, email="Bo@Example.com", role="viewer").member
    assert member.user.status == "invited" and member.membership.role == "viewer"
    event = world.events("member.invited")[-1]
    event_validator(event)
    assert event["data"] == {
        "member_id": str(member.membership.id),
        "user_id": str(member.user.id),
        "email": "Bo@Example.com",
        "role": "viewer",
    }
    with pytest.raises(Conflict) as err:
        services.invite_member(ctx, org_id, email="bo@example.com", role="member")
    assert err.value.slug == "already-member"


def test_inviting_an_existing_user_reuses_them(world: World) -> None:
    other = world.signup("eve@example.com", "Other")
    owner = world.signup()
    ctx = world.ctx(owner.secret)
    member = services.invite_member(ctx, ctx.caller.organization_id, email="EVE@example.com", role="member").member
    assert member.user.id == other.user.id
    assert world.session.scalars(select(User).where(User.email_normalized == "eve@example.com")).all() == [member.user]


def test_only_owners_grant_or_touch_owner(world: World) -> None:
    owner = world.signup()
    _a, admin_secret = world.member_with_key(owner.secret, "admin")
    admin = world.ctx(admin_secret)
    org_id = admin.caller.organization_id
    with pytest.raises(Forbidden):
        services.invite_member(admin, org_id, email="new-owner@example.com", role="owner")
    owner_member = world.session.scalar(select(Membership).where(Membership.user_id == owner.user.id))
    assert owner_member is not None
    with pytest.raises(Forbidden):
        services.update_member(admin, org_id, owner_member.id, role="viewer")
    with pytest.raises(Forbidden):
        services.remove_member(admin, org_id, owner_member.id)
    viewer = services.invite_member(admin, org_id, email="v@example.com", role="viewer").member
    with pytest.raises(Forbidden):
        services.update_member(admin, org_id, viewer.membership.id, role="owner")
    assert services.update_member(admin, org_id, viewer.membership.id, role="member").membership.role == "member"


def test_role_change_emits_and_last_owner_cannot_be_demoted(world: World, event_validator: Validate) -> None:
    owner = world.signup()
    ctx = world.ctx(owner.secret)
    org_id = ctx.caller.organization_id
    owner_member = world.session.scalar(select(Membership).where(Membership.user_id == owner.user.id))
    assert owner_member is not None
    with pytest.raises(Conflict) as err:
        services.update_member(ctx, org_id, owner_member.id, role="admin")
    assert err.value.slug == "last-owner"

    second = services.invite_member(ctx, org_id, email="co@example.com", role="owner").member
    services.update_member(ctx, org_id, owner_member.id, role="admin")  # now allowed: another owner exists
    event = world.events("member.role_changed")[-1]
    event_validator(event)
    assert event["data"] == {
        "member_id": str(owner_member.id),
        "user_id": str(owner.user.id),
        "old_role": "owner",
        "new_role": "admin",
    }
    with pytest.raises(Conflict):
        services.remove_member(ctx, org_id, second.membership.id)  # the last owner again

    # Setting the same role again changes nothing and emits nothing.
    before = len(world.events("member.role_changed"))
    services.update_member(ctx, org_id, second.membership.id, role="owner")
    assert len(world.events("member.role_changed")) == before


def test_removing_a_member_revokes_their_keys_here(world: World, event_validator: Validate) -> None:
    owner = world.signup()
    member, secret = world.member_with_key(owner.secret, "member")
    as_member = world.ctx(secret)
    extra = services.create_api_key(as_member, name="second", scopes=["instances:read"], expires_at=None)
    services.revoke_api_key(as_member, extra.api_key.id)  # already revoked: no second event
    world.session.flush()
    revoked_before = len(world.events("api_key.revoked"))

    ctx = world.ctx(owner.secret)
    services.remove_member(ctx, ctx.caller.organization_id, member.membership.id)
    world.session.flush()
    assert world.session.get(Membership, member.membership.id) is None
    revoked = world.events("api_key.revoked")[revoked_before:]
    assert [e["data"]["reason"] for e in revoked] == ["member_removed"]
    for event in revoked:
        event_validator(event)
    removed = world.events("member.removed")[-1]
    event_validator(removed)
    assert removed["data"] == {"member_id": str(member.membership.id), "user_id": str(member.user.id), "role": "member"}
    keys = world.session.scalars(select(ApiKey).where(ApiKey.user_id == member.user.id)).all()
    assert keys and all(k.revoked_at is not None for k in keys)


def test_member_list_oldest_first_in_pages(world: World) -> None:
    owner = world.signup()
    base = world.anonymous().now
    for i in range(4):
        ctx = world.ctx(owner.secret, base + timedelta(seconds=i + 1))
        services.invite_member(ctx, ctx.caller.organization_id, email=f"p{i}@example.com", role="viewer")
    ctx = world.ctx(owner.secret)
    first = services.list_members(ctx, ctx.caller.organization_id, 3, None)
    assert first.next_cursor
    rest = services.list_members(ctx, ctx.caller.organization_id, 3, first.next_cursor)
    assert rest.next_cursor is None
    emails = [m.user.email for m in first.items + rest.items]
    assert emails == [owner.user.email] + [f"p{i}@example.com" for i in range(4)]


# --- organizations and tenant isolation -------------------------------------------------


def test_update_organization_emits_changed_fields(world: World, event_validator: Validate) -> None:
    ctx = world.ctx(world.signup().secret)
    org_id = ctx.caller.organization_id
    org = services.update_organization(ctx, org_id, name="Acme Robotics")
    assert org.name == "Acme Robotics"
    org = services.update_organization(ctx, org_id, name="Acme Robotics", billing_email="bills@example.com")
    events = world.events("organization.updated")
    assert [e["data"]["changed"] for e in events] == [["name"], ["billing_email"]]
    for event in events:
        event_validator(event)
    services.update_organization(ctx, org_id, name="Acme Robotics")  # no change, no event
    assert len(world.events("organization.updated")) == 2


def test_another_tenants_ids_are_404(world: World) -> None:
    a = world.signup(organization="A")
    b = world.signup(organization="B")
    ctx_a = world.ctx(a.secret)
    b_org = b.organization.id
    b_member = world.session.scalar(select(Membership).where(Membership.user_id == b.user.id))
    assert b_member is not None
    attempts: list[Callable[[], object]] = [
        lambda: services.get_organization(ctx_a, b_org),
        lambda: services.update_organization(ctx_a, b_org, name="pwned"),
        lambda: services.list_members(ctx_a, b_org, 10, None),
        lambda: services.invite_member(ctx_a, b_org, email="x@example.com", role="owner"),
        lambda: services.get_member(ctx_a, b_org, b_member.id),
        # B's member id under A's own organization id: still not found.
        lambda: services.get_member(ctx_a, ctx_a.caller.organization_id, b_member.id),
        lambda: services.update_member(ctx_a, ctx_a.caller.organization_id, b_member.id, role="viewer"),
        lambda: services.remove_member(ctx_a, ctx_a.caller.organization_id, b_member.id),
        lambda: services.get_api_key(ctx_a, b.api_key.id),
        lambda: services.revoke_api_key(ctx_a, b.api_key.id),
        lambda: services.get_organization(ctx_a, uuid.uuid4()),
    ]
    for attempt in attempts:
        with pytest.raises(NotFound):
            attempt()
    assert b.organization.name == "B" and b.api_key.revoked_at is None
    assert b.api_key.id not in {k.id for k in services.list_api_keys(ctx_a, 200, None).items}


def test_get_me(world: World) -> None:
    owner = world.signup()
    me = services.get_me(world.ctx(owner.secret))
    assert (me.user.id, me.organization.id, me.role, me.api_key.id) == (
        owner.user.id,
        owner.organization.id,
        "owner",
        owner.api_key.id,
    )
