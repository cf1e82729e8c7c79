"""Per-organization quotas: how many vCPUs and GPUs an organization's allocations may hold.

The deployment's defaults (Settings.quota_vcpus / quota_gpus) are passed in by the caller:
this module never reads the environment. An `org_quotas` row exists once the organization
has claimed anything or an operator set an override; NULL limits mean "the default".

Concurrency: a claim starts with `lock()`, an upsert of the organization's row. On
PostgreSQL `INSERT … ON CONFLICT DO UPDATE` takes the row lock, so two claims of one
organization run one after the other and each sees the other's usage; on SQLite it is the
transaction's first write, which takes the database's write lock before anything is read.
Releases take the same lock before they touch a host, so the lock order is always
quota row → host row (no deadlocks between claims and releases).
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Integer, Table, Uuid, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from handlers.inventory.tables import OrgQuota
from hangar.config import Settings
from hangar.db import UTCDateTime

QUOTAS = cast(Table, OrgQuota.__table__)

# The Settings defaults, for callers that have no Settings at hand (tests, scripts).
DEFAULT_VCPUS: int = Settings.quota_vcpus
DEFAULT_GPUS: int = Settings.quota_gpus


@dataclass(frozen=True)
class Limits:
    vcpus: int
    gpus: int


@dataclass(frozen=True)
class Usage:
    vcpus: int
    gpus: int


@dataclass(frozen=True)
class Quota:
    organization_id: uuid.UUID
    limits: Limits
    usage: Usage
    overridden_vcpus: bool
    overridden_gpus: bool


def _limits(max_vcpus: int | None, max_gpus: int | None, defaults: Limits) -> Limits:
    return Limits(
        vcpus=defaults.vcpus if max_vcpus is None else max_vcpus,
        gpus=defaults.gpus if max_gpus is None else max_gpus,
    )


def _upsert(dialect: str, values: dict[str, Any], update_columns: dict[str, Any]) -> Any:
    """`INSERT … ON CONFLICT (organization_id) DO UPDATE … RETURNING *` on either backend."""
    if dialect == "postgresql":
        stmt: Any = pg_insert(QUOTAS).values(**values)
    elif dialect == "sqlite":
        stmt = sqlite_insert(QUOTAS).values(**values)
    else:  # pragma: no cover - only the two supported backends
        raise RuntimeError(f"unsupported database {dialect!r}")
    stmt = stmt.on_conflict_do_update(index_elements=[QUOTAS.c.organization_id], set_=update_columns)
    return stmt.returning(*QUOTAS.c)


@functools.lru_cache(maxsize=4)
def _lock_statement(dialect: str) -> Any:
    now = bindparam("p_now", type_=UTCDateTime)
    return _upsert(
        dialect,
        {
            "organization_id": bindparam("p_organization_id", type_=Uuid),
            "max_vcpus": None,
            "max_gpus": None,
            "vcpus_used": 0,
            "gpus_used": 0,
            "created_at": now,
            "updated_at": now,
        },
        # The write is what takes the lock; `updated_at` says when the row was last used.
        {"updated_at": now},
    )


def lock(session: Session, organization_id: uuid.UUID, now: datetime) -> Any:
    """Create the organization's row if needed and lock it for this transaction; the row."""
    stmt = _lock_statement(session.get_bind().dialect.name)
    return session.execute(stmt, {"p_organization_id": organization_id, "p_now": now}).one()


def get(session: Session, organization_id: uuid.UUID, defaults: Limits) -> Quota:
    """Limits and usage, without locking or creating anything."""
    row = session.execute(select(QUOTAS).where(QUOTAS.c.organization_id == organization_id)).one_or_none()
    if row is None:
        return Quota(organization_id, defaults, Usage(0, 0), False, False)
    return of_row(row, defaults)


def of_row(row: Any, defaults: Limits) -> Quota:
    return Quota(
        organization_id=row.organization_id,
        limits=_limits(row.max_vcpus, row.max_gpus, defaults),
        usage=Usage(row.vcpus_used, row.gpus_used),
        overridden_vcpus=row.max_vcpus is not None,
        overridden_gpus=row.max_gpus is not None,
    )


def shortfall(quota: Quota, *, vcpus: int, gpus: int, pending_vcpus: int = 0, pending_gpus: int = 0) -> str | None:
    """Why `vcpus`/`gpus` more (on top of usage and `pending`) break the quota, or None.
    A resource the request does not ask for is not checked, so a CPU launch is never
    refused because GPU usage sits above a lowered GPU limit."""
    reasons: list[str] = []
    for label, asked, used, pending, limit in (
        ("vCPUs", vcpus, quota.usage.vcpus, pending_vcpus, quota.limits.vcpus),
        ("GPUs", gpus, quota.usage.gpus, pending_gpus, quota.limits.gpus),
    ):
        if asked > 0 and used + pending + asked > limit:
            pending_note = f" and {pending} pending" if pending else ""
            reasons.append(
                f"{asked} more {label} would make {used + pending + asked}, above the organization's limit of "
                f"{limit} {label} ({used} in use{pending_note})"
            )
    return "; ".join(reasons) + "." if reasons else None


_ADD_USAGE = (
    update(QUOTAS)
    .where(QUOTAS.c.organization_id == bindparam("p_organization_id", type_=Uuid))
    .values(
        vcpus_used=QUOTAS.c.vcpus_used + bindparam("p_vcpus", type_=Integer),
        gpus_used=QUOTAS.c.gpus_used + bindparam("p_gpus", type_=Integer),
        updated_at=bindparam("p_now", type_=UTCDateTime),
    )
)


def add_usage(session: Session, organization_id: uuid.UUID, *, vcpus: int, gpus: int, now: datetime) -> None:
    """Move usage by (vcpus, gpus), negative for a release. The row exists: `lock` made it."""
    session.execute(_ADD_USAGE, {"p_organization_id": organization_id, "p_vcpus": vcpus, "p_gpus": gpus, "p_now": now})


def set_limits(
    session: Session,
    organization_id: uuid.UUID,
    *,
    max_vcpus: int | None,
    max_gpus: int | None,
    now: datetime,
    defaults: Limits,
) -> Quota:
    """Set (or, with None, clear back to the default) the organization's overrides."""
    stmt = _upsert(
        session.get_bind().dialect.name,
        {
            "organization_id": organization_id,
            "max_vcpus": max_vcpus,
            "max_gpus": max_gpus,
            "vcpus_used": 0,
            "gpus_used": 0,
            "created_at": now,
            "updated_at": now,
        },
        {"max_vcpus": max_vcpus, "max_gpus": max_gpus, "updated_at": now},
    )
    return of_row(session.execute(stmt).one(), defaults)
