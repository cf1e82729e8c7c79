"""Identity & Access use cases: the rules, on the tables, inside the caller's unit of work.

Each function takes the RequestContext (session, caller, clock, event outbox) and returns
table rows; operations.py turns them into the generated API models. Nothing here commits:
the runtime commits on success and rolls back on a raised Problem, so the state change and
its outbox events land together or not at all.

Tenant isolation has one shape throughout: rows are loaded by (id, caller's organization_id)
and anything else is NotFound — another tenant's id is indistinguishable from a missing one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload
from sqlalchemy.orm.attributes import set_committed_value

from handlers.identity import invitation_tokens, keys, passwords, policy
from handlers.identity.tables import ApiKey, Invitation, Membership, Organization, User
from hangar.context import RequestContext
from hangar.pagination import Page, paginate
from hangar.problems import Conflict, Forbidden, NotFound, Unprocessable

SIGNUP_KEY_NAME = "signup"
INVITATION_KEY_NAME = "invitation"
# One answer for every way an acceptance can fail (unknown, used or expired token, wrong
# password): which one it was would tell a token holder more than they should learn.
INVITATION_NOT_FOUND = "No pending invitation matches this token and password."


@dataclass(frozen=True)
class Member:
    membership: Membership
    user: User


@dataclass(frozen=True)
class InvitedMember:
    """A new membership and its invitation token (the token is shown to the inviter once)."""

    member: Member
    token: str
    expires_at: datetime


@dataclass(frozen=True)
class CreatedKey:
    api_key: ApiKey
    secret: str


@dataclass(frozen=True)
class SignupResult:
    organization: Organization
    user: User
    api_key: ApiKey
    secret: str


@dataclass(frozen=True)
class Me:
    user: User
    organization: Organization
    role: str
    api_key: ApiKey


def normalize_email(email: str) -> str:
    return email.strip().lower()


def iso(moment: datetime) -> str:
    """Event payload timestamps: RFC 3339 in UTC with a `Z`, like the envelope's."""
    return moment.isoformat().replace("+00:00", "Z")


# --- signup -----------------------------------------------------------------------------


def sign_up(
    ctx: RequestContext, *, email: str, password: str, organization_name: str, name: str | None
) -> SignupResult:
    now = ctx.now
    session = ctx.session
    password_hash = passwords.hash_password(password)
    user = session.scalar(select(User).where(User.email_normalized == normalize_email(email)))
    if user is None:
        user = User(
            id=uuid.uuid4(),
            email=email,
            email_normalized=normalize_email(email),
            name=name,
            password_hash=password_hash,
            status="active",
            created_at=now,
            updated_at=now,
        )
        session.add(user)
        _flush_or_conflict(ctx, "email-taken", "A user with this e-mail address already exists.")
    else:
        # An invited person signing up claims their user; an active one already exists. The
        # conditional update makes two concurrent claims of the same invitation a 409, not two.
        claimed = session.execute(
            update(User)
            .where(User.id == user.id, User.status == "invited")
            .values(status="active", password_hash=password_hash, name=name or user.name, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict("A user with this e-mail address already exists.", slug="email-taken")
        session.refresh(user)

    return _found_organization(
        ctx, user, organization_name, billing_email=email, key_name=SIGNUP_KEY_NAME, operator=False
    )


def _found_organization(
    ctx: RequestContext, user: User, name: str, *, billing_email: str, key_name: str, operator: bool
) -> SignupResult:
    """A new organization with `user` as its active owner, its organization.created event, and
    the owner's first key holding every scope the owner role allows there (signUp and
    hangar-admin create-operator)."""
    now = ctx.now
    org = Organization(
        id=uuid.uuid4(), name=name, billing_email=billing_email, is_operator=operator, created_at=now, updated_at=now
    )
    ctx.session.add(org)
    ctx.session.flush()
    ctx.session.add(
        Membership(
            id=uuid.uuid4(),
            organization_id=org.id,
            user_id=user.id,
            role="owner",
            status="active",
            created_at=now,
            updated_at=now,
        )
    )
    ctx.emit(
        "organization.created", org.id, {"name": org.name, "owner_user_id": str(user.id), "owner_email": user.email}
    )
    created = _new_key(ctx, org.id, user.id, key_name, sorted(policy.caps("owner", operator=operator)), None)
    return SignupResult(organization=org, user=user, api_key=created.api_key, secret=created.secret)


OPERATOR_KEY_NAME = "operator bootstrap key"


def create_operator(ctx: RequestContext, *, email: str, organization_name: str) -> SignupResult:
    """The platform operator's organization, its owner and a first key holding every scope
    including admin:*. Not an API operation: run by `hangar-admin create-operator` on a
    machine with database access, so the power to operate the platform never travels through
    the public API. The owner has no password (keys only); an existing address is a 409."""
    session, now = ctx.session, ctx.now
    user = User(
        id=uuid.uuid4(),
        email=email,
        email_normalized=email.lower(),
        name=None,
        password_hash=None,
        status="active",
        created_at=now,
        updated_at=now,
    )
    session.add(user)
    _flush_or_conflict(ctx, "email-taken", "A user with this e-mail address already exists.")
    return _found_organization(
        ctx, user, organization_name, billing_email=email, key_name=OPERATOR_KEY_NAME, operator=True
    )


def get_me(ctx: RequestContext) -> Me:
    caller = ctx.caller
    key = _load_key(ctx, caller.api_key_id)
    user = ctx.session.get_one(User, caller.user_id)
    return Me(user=user, organization=_load_org(ctx, caller.organization_id), role=caller.role, api_key=key)


# --- organizations ----------------------------------------------------------------------


def get_organization(ctx: RequestContext, organization_id: uuid.UUID) -> Organization:
    return _load_org(ctx, organization_id)


def update_organization(
    ctx: RequestContext, organization_id: uuid.UUID, *, name: str | None = None, billing_email: str | None = None
) -> Organization:
    org = _load_org(ctx, organization_id)
    changed: list[str] = []
    if name is not None and name != org.name:
        org.name = name
        changed.append("name")
    if billing_email is not None and billing_email != org.billing_email:
        org.billing_email = billing_email
        changed.append("billing_email")
    if changed:  # a PATCH that changes nothing is not an event
        org.updated_at = ctx.now
        ctx.emit("organization.updated", org.id, {"changed": changed})
    return org


# --- members ----------------------------------------------------------------------------


def list_members(ctx: RequestContext, organization_id: uuid.UUID, limit: int, cursor: str | None) -> Page[Member]:
    org = _load_org(ctx, organization_id)
    query = select(Membership).where(Membership.organization_id == org.id).options(joinedload(Membership.user))
    page = paginate(ctx.session, query, (Membership.created_at, Membership.id), limit=limit, cursor=cursor)
    return Page([Member(membership=m, user=m.user) for m in page.items], page.next_cursor)


def invite_member(ctx: RequestContext, organization_id: uuid.UUID, *, email: str, role: str) -> InvitedMember:
    org = _load_org(ctx, organization_id)
    if not policy.may_grant(ctx.caller.role, role):
        raise Forbidden(f"Only owners can invite members with the role {role!r}.", slug="role-not-grantable")
    now = ctx.now
    user = ctx.session.scalar(select(User).where(User.email_normalized == normalize_email(email)))
    if user is None:
        user = User(
            id=uuid.uuid4(),
            email=email,
            email_normalized=normalize_email(email),
            status="invited",
            created_at=now,
            updated_at=now,
        )
        ctx.session.add(user)
        _flush_or_conflict(ctx, "already-member", "That person was invited concurrently.")
    elif _find_membership(ctx, org.id, user.id) is not None:
        raise Conflict(f"{email} is already a member of this organization.", slug="already-member")
    membership = Membership(
        id=uuid.uuid4(),
        organization_id=org.id,
        user_id=user.id,
        role=role,
        status="invited",
        created_at=now,
        updated_at=now,
    )
    ctx.session.add(membership)
    _flush_or_conflict(ctx, "already-member", f"{email} is already a member of this organization.")
    token = invitation_tokens.generate()
    expires_at = now + invitation_tokens.VALIDITY
    ctx.session.add(
        Invitation(
            id=uuid.uuid4(),
            membership_id=membership.id,
            token_hash=token.token_hash,
            created_at=now,
            expires_at=expires_at,
        )
    )
    ctx.emit(
        "member.invited",
        org.id,
        {"member_id": str(membership.id), "user_id": str(user.id), "email": user.email, "role": role},
    )
    return InvitedMember(member=Member(membership=membership, user=user), token=token.token, expires_at=expires_at)


def accept_invitation(ctx: RequestContext, *, token: str, password: str, name: str | None) -> SignupResult:
    """Join the organization `token` invites into; returns the membership's first API key.

    A person with no password yet (an `invited` user) sets `password` (and `name`); someone
    who has one must give it. Every failure is the same NotFound, and each path does one
    password hash's worth of work, so neither the answer nor its timing says which check
    failed. The token is single use even under concurrency: marking it accepted is a
    conditional UPDATE, and the loser of two racing acceptances matches nothing.
    """
    now = ctx.now
    session = ctx.session
    row = None
    if invitation_tokens.is_well_formed(token):  # garbage never reaches the database
        row = session.execute(
            select(Invitation, Membership, User)
            .join(Membership, Membership.id == Invitation.membership_id)
            .join(User, User.id == Membership.user_id)
            .where(Invitation.token_hash == invitation_tokens.hash_token(token))
        ).one_or_none()
    if row is None or row[0].accepted_at is not None or row[0].expires_at <= now:
        passwords.burn(password)
        raise NotFound(INVITATION_NOT_FOUND, slug="invitation-not-found")
    invitation, membership, user = row

    used = session.execute(
        update(Invitation)
        .where(Invitation.id == invitation.id, Invitation.accepted_at.is_(None))
        .values(accepted_at=now)
        .execution_options(synchronize_session=False)
    )
    if used.rowcount != 1:  # type: ignore[attr-defined]
        passwords.burn(password)
        raise NotFound(INVITATION_NOT_FOUND, slug="invitation-not-found")
    set_committed_value(invitation, "accepted_at", now)
    if not _claim_or_check_password(ctx, user, password, name):
        raise NotFound(INVITATION_NOT_FOUND, slug="invitation-not-found")

    membership.status, membership.updated_at = "active", now
    ctx.emit(
        "member.joined",
        membership.organization_id,
        {"member_id": str(membership.id), "user_id": str(user.id), "role": membership.role},
    )
    org = session.get_one(Organization, membership.organization_id)
    created = _new_key(ctx, org.id, user.id, INVITATION_KEY_NAME, sorted(policy.caps(membership.role)), None)
    return SignupResult(organization=org, user=user, api_key=created.api_key, secret=created.secret)


def get_member(ctx: RequestContext, organization_id: uuid.UUID, member_id: uuid.UUID) -> Member:
    return _load_member(ctx, organization_id, member_id)


def update_member(ctx: RequestContext, organization_id: uuid.UUID, member_id: uuid.UUID, *, role: str) -> Member:
    member = _load_member_locked(ctx, organization_id, member_id)
    membership = member.membership
    actor = ctx.caller.role
    if not policy.may_manage(actor, membership.role) or not policy.may_grant(actor, role):
        raise Forbidden("Only owners can grant, change or take away the owner role.", slug="owner-only")
    if role == membership.role:
        return member
    if membership.role == "owner":
        _ensure_not_last_owner(ctx, membership, "demoted")
    old_role, membership.role, membership.updated_at = membership.role, role, ctx.now
    ctx.emit(
        "member.role_changed",
        membership.organization_id,
        {"member_id": str(membership.id), "user_id": str(membership.user_id), "old_role": old_role, "new_role": role},
    )
    return member


def remove_member(ctx: RequestContext, organization_id: uuid.UUID, member_id: uuid.UUID) -> None:
    member = _load_member_locked(ctx, organization_id, member_id)
    membership = member.membership
    if not policy.may_manage(ctx.caller.role, membership.role):
        raise Forbidden("Only owners can remove an owner.", slug="owner-only")
    if membership.role == "owner":
        _ensure_not_last_owner(ctx, membership, "removed")
    live_keys = ctx.session.scalars(
        select(ApiKey).where(
            ApiKey.organization_id == membership.organization_id,
            ApiKey.user_id == membership.user_id,
            ApiKey.revoked_at.is_(None),
        )
    )
    for key in live_keys:
        _revoke(ctx, key, "member_removed")
    ctx.emit(
        "member.removed",
        membership.organization_id,
        {"member_id": str(membership.id), "user_id": str(membership.user_id), "role": membership.role},
    )
    ctx.session.delete(membership)


# --- API keys ---------------------------------------------------------------------------


def list_api_keys(ctx: RequestContext, limit: int, cursor: str | None) -> Page[ApiKey]:
    query = select(ApiKey).where(ApiKey.organization_id == ctx.caller.organization_id)
    if not policy.sees_all_keys(ctx.caller.role):
        query = query.where(ApiKey.user_id == ctx.caller.user_id)
    return paginate(ctx.session, query, (ApiKey.created_at, ApiKey.id), limit=limit, cursor=cursor, descending=True)


def create_api_key(ctx: RequestContext, *, name: str, scopes: list[str], expires_at: datetime | None) -> CreatedKey:
    caller = ctx.caller
    requested = set(scopes)
    # No escalation: a key can only hand out what its holder's role allows *and* what the
    # key making the request holds (caller.scopes is already key ∩ role).
    operator = _load_org(ctx, caller.organization_id).is_operator
    beyond = sorted((requested - policy.caps(caller.role, operator=operator)) | (requested - caller.scopes))
    if beyond:
        raise Forbidden(
            f"The new key cannot hold scopes that your role or your API key lacks: {', '.join(beyond)}.",
            slug="scope-escalation",
        )
    # The generated model only admits offset-aware datetimes, so this comparison is safe.
    if expires_at is not None and expires_at <= ctx.now:
        raise Unprocessable(
            "expires_at must be in the future.",
            slug="invalid-expiry",
            errors=[{"location": "body.expires_at", "message": "must be in the future"}],
        )
    return _new_key(ctx, caller.organization_id, caller.user_id, name, sorted(requested), expires_at)


def get_api_key(ctx: RequestContext, api_key_id: uuid.UUID) -> ApiKey:
    return _load_visible_key(ctx, api_key_id)


def revoke_api_key(ctx: RequestContext, api_key_id: uuid.UUID) -> None:
    key = _load_visible_key(ctx, api_key_id)
    if key.revoked_at is None:  # revoking twice succeeds and changes nothing
        _revoke(ctx, key, "revoked")


# --- helpers ----------------------------------------------------------------------------


def _new_key(
    ctx: RequestContext,
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    name: str,
    scopes: list[str],
    expires_at: datetime | None,
) -> CreatedKey:
    new = keys.generate()
    key = ApiKey(
        id=uuid.uuid4(),
        organization_id=org_id,
        user_id=user_id,
        name=name,
        prefix=new.prefix,
        key_hash=new.key_hash,
        scopes=scopes,
        created_at=ctx.now,
        expires_at=expires_at,
    )
    ctx.session.add(key)
    data: dict[str, object] = {
        "api_key_id": str(key.id),
        "user_id": str(user_id),
        "prefix": key.prefix,
        "scopes": scopes,
    }
    if expires_at is not None:
        data["expires_at"] = iso(expires_at)
    ctx.emit("api_key.created", org_id, data)
    return CreatedKey(api_key=key, secret=new.token)


def _claim_or_check_password(ctx: RequestContext, user: User, password: str, name: str | None) -> bool:
    """An invited user (no password yet) takes `password`; anyone else must match theirs."""
    if user.status == "invited":
        # Conditional, like signup's claim: if a signup or another acceptance claimed the
        # user in the meantime, fall through to checking the password they chose.
        claimed = ctx.session.execute(
            update(User)
            .where(User.id == user.id, User.status == "invited")
            .values(
                status="active",
                password_hash=passwords.hash_password(password),
                name=name or user.name,
                updated_at=ctx.now,
            )
            .execution_options(synchronize_session=False)
        )
        ctx.session.refresh(user)
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            return True
    if user.password_hash is None:  # cannot happen for an active user; fail closed anyway
        passwords.burn(password)
        return False
    return passwords.verify_password(user.password_hash, password)


def _revoke(ctx: RequestContext, key: ApiKey, reason: str) -> None:
    # Conditional, so two concurrent revokes of one key emit one event: the loser's UPDATE
    # waits for the winner's row lock, then matches nothing.
    result = ctx.session.execute(
        update(ApiKey)
        .where(ApiKey.id == key.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=ctx.now, revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return
    set_committed_value(key, "revoked_at", ctx.now)
    set_committed_value(key, "revoked_reason", reason)
    ctx.emit(
        "api_key.revoked",
        key.organization_id,
        {"api_key_id": str(key.id), "user_id": str(key.user_id), "reason": reason},
    )


def _load_org(ctx: RequestContext, organization_id: uuid.UUID) -> Organization:
    # Only the caller's own organization exists for them; every other id is the same 404.
    org = ctx.session.get(Organization, organization_id) if organization_id == ctx.caller.organization_id else None
    if org is None:
        raise NotFound(f"No organization with id {organization_id}.")
    return org


def _find_membership(ctx: RequestContext, org_id: uuid.UUID, user_id: uuid.UUID) -> Membership | None:
    return ctx.session.scalar(
        select(Membership).where(Membership.organization_id == org_id, Membership.user_id == user_id)
    )


def _load_member(ctx: RequestContext, organization_id: uuid.UUID, member_id: uuid.UUID) -> Member:
    org = _load_org(ctx, organization_id)
    row = ctx.session.execute(
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.id == member_id, Membership.organization_id == org.id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"No member with id {member_id}.")
    return Member(membership=row[0], user=row[1])


def _load_member_locked(ctx: RequestContext, organization_id: uuid.UUID, member_id: uuid.UUID) -> Member:
    """The member, loaded after taking the organization's membership lock.

    Role changes and removals in one organization are serialised, so the last-owner check
    cannot be raced (two owners demoting each other at once would leave none). A no-op
    UPDATE is the portable lock: a row lock on PostgreSQL, the write lock on SQLite (where
    SELECT … FOR UPDATE is a plain read). Loading after the lock sees the winner's commit.
    """
    org = _load_org(ctx, organization_id)
    ctx.session.execute(
        update(Organization)
        .where(Organization.id == org.id)
        .values(updated_at=Organization.updated_at)
        .execution_options(synchronize_session=False)
    )
    return _load_member(ctx, organization_id, member_id)


def _load_key(ctx: RequestContext, api_key_id: uuid.UUID) -> ApiKey:
    key = ctx.session.scalar(
        select(ApiKey).where(ApiKey.id == api_key_id, ApiKey.organization_id == ctx.caller.organization_id)
    )
    if key is None:
        raise NotFound(f"No API key with id {api_key_id}.")
    return key


def _load_visible_key(ctx: RequestContext, api_key_id: uuid.UUID) -> ApiKey:
    key = _load_key(ctx, api_key_id)
    # Someone else's key is a 404 for those who may only manage their own: its existence
    # is none of their business.
    if key.user_id != ctx.caller.user_id and not policy.sees_all_keys(ctx.caller.role):
        raise NotFound(f"No API key with id {api_key_id}.")
    return key


def _ensure_not_last_owner(ctx: RequestContext, membership: Membership, verb: str) -> None:
    # Callers hold the organization's membership lock (_load_member_locked).
    owners = ctx.session.scalar(
        select(func.count())
        .select_from(Membership)
        .where(Membership.organization_id == membership.organization_id, Membership.role == "owner")
    )
    if (owners or 0) <= 1:
        raise Conflict(f"The last owner of an organization cannot be {verb}.", slug="last-owner")


def _flush_or_conflict(ctx: RequestContext, slug: str, detail: str) -> None:
    # A unique constraint is the real guard against concurrent duplicates; the checks before
    # it only give the common case a clear message. The runtime rolls the transaction back.
    try:
        ctx.session.flush()
    except IntegrityError as exc:
        raise Conflict(detail, slug=slug) from exc
