"""The identity context's published interface: the only thing the runtime imports from it.

`authenticate` turns a bearer token into a Principal. It is on every request's hot path, so
it does one indexed lookup and writes at most once per minute per key.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from handlers.identity import keys, policy
from handlers.identity.tables import ApiKey, Membership, Organization
from hangar.context import Principal

# How stale `last_used_at` may be. Writing it on every request would turn every read into
# a write (and serialise SQLite); a minute is precise enough to spot unused keys.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def authenticate(session: Session, bearer_token: str, now: datetime) -> Principal | None:
    """The principal for a presented API key, or None if it is malformed, unknown, wrong,
    revoked, expired, or its holder is no longer (or not yet: invited) an active member.

    Scopes are the key's scopes ∩ what the holder's *current* role allows, so a demotion
    takes effect on the next request. The `last_used_at` update is added to `session`; the
    caller's commit persists it.
    """
    prefix = keys.parse_prefix(bearer_token)
    if prefix is None:  # malformed or bad checksum: no database round trip
        return None
    row = session.execute(
        select(ApiKey, Membership.role, Organization.is_operator)
        .join(
            Membership, (Membership.organization_id == ApiKey.organization_id) & (Membership.user_id == ApiKey.user_id)
        )
        .join(Organization, Organization.id == ApiKey.organization_id)
        .where(ApiKey.prefix == prefix, Membership.status == "active")
    ).one_or_none()
    if row is None:
        return None
    key, role, is_operator = row
    if not keys.matches(bearer_token, key.key_hash) or key.status(now) != "active":
        return None
    _touch(session, key, now)
    return Principal(
        organization_id=key.organization_id,
        user_id=key.user_id,
        api_key_id=key.id,
        role=role,
        scopes=policy.effective_scopes(key.scopes, role, operator=is_operator),
    )


def _touch(session: Session, key: ApiKey, now: datetime) -> None:
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_RESOLUTION:
        return
    # Conditional, so concurrent requests that all saw a stale value write once between them.
    session.execute(
        update(ApiKey)
        .where(
            ApiKey.id == key.id,
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - LAST_USED_RESOLUTION),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    # Reflect it in the loaded row without marking it dirty (no second, unconditional UPDATE).
    set_committed_value(key, "last_used_at", now)


def create_operator(session: Session, *, email: str, organization_name: str, now: datetime) -> tuple[str, str, str]:
    """Create the platform operator's organization (see services.create_operator) in
    `session`'s transaction; the caller commits. Returns (organization id, user e-mail, the
    first key's secret — shown once)."""
    from handlers.identity import services  # the hot path above does not need the services
    from hangar.context import RequestContext

    ctx = RequestContext(request_id="hangar-admin", session=session, now=now)
    result = services.create_operator(ctx, email=email, organization_name=organization_name)
    return str(result.organization.id), result.user.email, result.secret
