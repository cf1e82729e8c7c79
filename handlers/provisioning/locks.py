"""One writer per instance at a time, on both databases.

Every change to an instance — an API call starting an action, a saga step — begins with
`lock_instance`, inside the transaction that makes the change:

- PostgreSQL: `SELECT … FOR UPDATE` takes the row lock, so an API process and any number of
  saga workers queue up on one instance; the one that waited then reads the committed row.
- SQLite: `FOR UPDATE` compiles to nothing and the driver runs reads outside a transaction,
  so two writers could both read the same row and both act on it. The compare-and-set of
  `revision` that follows the read is the transaction's first write: it takes SQLite's
  database write lock (waiting out the busy timeout for any other writer) and matches only
  if nobody committed a change since our read. When it does not match, the row is read again
  — now under the write lock, so the second read is current and the second attempt wins.

PostgreSQL skips the compare-and-set: under the row lock it could never fail, and each step
saves a write. Either way, once `lock_instance` returns, the caller holds the instance
exclusively until it commits or rolls back, and the row it holds is the latest committed one.
"""

from __future__ import annotations

import uuid
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from handlers.provisioning.tables import Instance

_ATTEMPTS = 3  # the second attempt always wins (see the module doc); one spare


class LockLostError(RuntimeError):
    """The compare-and-set kept losing: only possible if something writes instances while
    bypassing `lock_instance`, a bug."""


def lock_instance(
    session: Session, instance_id: uuid.UUID, *, organization_id: uuid.UUID | None = None
) -> Instance | None:
    """The instance, locked for this transaction and current, or None if there is no such
    instance (in `organization_id`, when given: another tenant's id is simply not found)."""
    for _ in range(_ATTEMPTS):
        stmt = select(Instance).where(Instance.id == instance_id)
        if organization_id is not None:
            stmt = stmt.where(Instance.organization_id == organization_id)
        # populate_existing: a row already in this session's identity map is refreshed from
        # the database rather than served from memory.
        instance = session.scalars(stmt.with_for_update().execution_options(populate_existing=True)).one_or_none()
        if instance is None or session.get_bind().dialect.name == "postgresql":
            return instance  # the row lock is all it takes; the compare-and-set is for SQLite
        seen = instance.revision
        bumped = cast(
            CursorResult[Any],
            session.execute(
                update(Instance)
                .where(Instance.id == instance.id, Instance.revision == seen)
                .values(revision=seen + 1)
                .execution_options(synchronize_session=False)
            ),
        )
        if bumped.rowcount == 1:
            set_committed_value(instance, "revision", seen + 1)
            return instance
    raise LockLostError(f"instance {instance_id}: lost the revision compare-and-set {_ATTEMPTS} times")
