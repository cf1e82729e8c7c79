"""Identity & Access operation handlers, one per operationId (see docs/architecture.md).

Each takes the generated request model, calls a service and returns the generated response
model. Translation between table rows and API models lives in the `_`-prefixed helpers
(public functions in this module are handlers by definition).
"""

from __future__ import annotations

import uuid

from generated import models
from handlers.identity import services
from handlers.identity.tables import ApiKey, Organization, User
from hangar.context import RequestContext


def sign_up(ctx: RequestContext, body: models.SignupRequest) -> models.SignupResult:
    result = services.sign_up(
        ctx,
        email=body.email,
        password=body.password.get_secret_value(),
        organization_name=body.organization,
        name=body.name,
    )
    return _credentials(ctx, result)


def accept_invitation(ctx: RequestContext, body: models.InvitationAcceptance) -> models.SignupResult:
    result = services.accept_invitation(
        ctx, token=body.token, password=body.password.get_secret_value(), name=body.name
    )
    return _credentials(ctx, result)


def get_me(ctx: RequestContext) -> models.Me:
    me = services.get_me(ctx)
    return models.Me(
        user=_user(me.user),
        organization=_organization(me.organization),
        role=models.Role(me.role),
        api_key=_api_key(ctx, me.api_key),
    )


def get_organization(ctx: RequestContext, organization_id: uuid.UUID) -> models.Organization:
    return _organization(services.get_organization(ctx, organization_id))


def update_organization(
    ctx: RequestContext, organization_id: uuid.UUID, body: models.OrganizationUpdate
) -> models.Organization:
    org = services.update_organization(ctx, organization_id, name=body.name, billing_email=body.billing_email)
    return _organization(org)


def list_members(ctx: RequestContext, organization_id: uuid.UUID, limit: int, cursor: str | None) -> models.MemberList:
    page = services.list_members(ctx, organization_id, limit, cursor)
    return models.MemberList(data=[_member(m) for m in page.items], next_cursor=page.next_cursor)


def invite_member(
    ctx: RequestContext, organization_id: uuid.UUID, body: models.MemberInvite
) -> models.MemberInvitation:
    invited = services.invite_member(ctx, organization_id, email=body.email, role=body.role.value)
    return models.MemberInvitation(
        member=_member(invited.member),
        invitation_token=invited.token,
        invitation_expires_at=invited.expires_at,
    )


def get_member(ctx: RequestContext, organization_id: uuid.UUID, member_id: uuid.UUID) -> models.Member:
    return _member(services.get_member(ctx, organization_id, member_id))


def update_member(
    ctx: RequestContext, organization_id: uuid.UUID, member_id: uuid.UUID, body: models.MemberUpdate
) -> models.Member:
    return _member(services.update_member(ctx, organization_id, member_id, role=body.role.value))


def remove_member(ctx: RequestContext, organization_id: uuid.UUID, member_id: uuid.UUID) -> None:
    services.remove_member(ctx, organization_id, member_id)


def list_api_keys(ctx: RequestContext, limit: int, cursor: str | None) -> models.ApiKeyList:
    page = services.list_api_keys(ctx, limit, cursor)
    return models.ApiKeyList(data=[_api_key(ctx, k) for k in page.items], next_cursor=page.next_cursor)


def create_api_key(ctx: RequestContext, body: models.ApiKeyCreate) -> models.ApiKeyCreated:
    created = services.create_api_key(
        ctx, name=body.name, scopes=[s.value for s in body.scopes], expires_at=body.expires_at
    )
    return models.ApiKeyCreated(api_key=_api_key(ctx, created.api_key), secret=created.secret)


def get_api_key(ctx: RequestContext, api_key_id: uuid.UUID) -> models.ApiKey:
    return _api_key(ctx, services.get_api_key(ctx, api_key_id))


def revoke_api_key(ctx: RequestContext, api_key_id: uuid.UUID) -> None:
    services.revoke_api_key(ctx, api_key_id)


# --- rows → API models (explicit fields: nothing leaks by accident, e.g. key_hash) ------


def _credentials(ctx: RequestContext, result: services.SignupResult) -> models.SignupResult:
    """What signing up and accepting an invitation both return: the caller's new key, once."""
    return models.SignupResult(
        organization=_organization(result.organization),
        user=_user(result.user),
        api_key=_api_key(ctx, result.api_key),
        secret=result.secret,
    )


def _organization(org: Organization) -> models.Organization:
    return models.Organization(
        id=org.id,
        name=org.name,
        billing_email=org.billing_email,
        created_at=org.created_at,
        updated_at=org.updated_at,
    )


def _user(user: User) -> models.User:
    return models.User(id=user.id, email=user.email, name=user.name, created_at=user.created_at)


def _member(member: services.Member) -> models.Member:
    m, user = member.membership, member.user
    return models.Member(
        id=m.id,
        organization_id=m.organization_id,
        user_id=m.user_id,
        email=user.email,
        role=models.Role(m.role),
        status=models.MemberStatus(m.status),
        created_at=m.created_at,
        updated_at=m.updated_at,
    )


def _api_key(ctx: RequestContext, key: ApiKey) -> models.ApiKey:
    return models.ApiKey(
        id=key.id,
        organization_id=key.organization_id,
        user_id=key.user_id,
        name=key.name,
        prefix=key.prefix,
        scopes=[models.Scope(s) for s in key.scopes],
        status=models.ApiKeyStatus(key.status(ctx.now)),
        created_at=key.created_at,
        expires_at=key.expires_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
    )
