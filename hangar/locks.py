"""One writer per row at a time, on both databases — the lock every context that runs work on
its own rows (provisioning's instances, storage's volumes and snapshots) takes first, inside the
transaction that makes the change:
- PostgreSQL: `SELECT … FOR UPDATE` takes the row lock, so an API process and any number of
  workers queue up on one row; the one that waited then reads the committed row.
- SQLite: `FOR UPDATE` compiles to nothing and the driver runs reads outside a transaction,
  so two writers could both read the same row and both act on it. The compare-and-set of the
  row's `revision` that follows the read is the transaction's first write: it takes SQLite's
  database write lock (waiting out the busy timeout for any other writer) and matches only
  if nobody committed a change since our read. When it does not match, the row is read again
  — now under the write lock, so the second read is current and the second attempt wins.
PostgreSQL skips the compare-and-set: under the row lock it could never fail, and each step
saves a write. Either way, once `lock_row` returns, the caller holds the row exclusively until
it commits or rolls back, and the row it holds is the latest committed one.

The model needs `id`, `organization_id` and an integer `revision` column.
"""

from __future__ import annotations

import uuid
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

_ATTEMPTS = 3  # the second attempt always wins (see the module doc); one spare

Row = TypeVar("Row")


class LockLostError(RuntimeError):
    """The compare-and-set kept losing: only possible if something writes these rows while
    bypassing `lock_row`, a bug."""


def lock_row(
    session: Session, model: type[Row], row_id: uuid.UUID, *, organization_id: uuid.UUID | None = None
) -> Row | None:
    """The row, locked for this transaction and current, or None if there is no such row (in
    `organization_id`, when given: another tenant's id is simply not found)."""
    table: Any = model  # a mapped class with id, organization_id and revision
    for _ in range(_ATTEMPTS):
        stmt = select(table).where(table.id == row_id)
        if organization_id is not None:
            stmt = stmt.where(table.organization_id == organization_id)
        # populate_existing: a row already in this session's identity map is refreshed from
        # the database rather than served from memory.
        row = session.scalars(stmt.with_for_update().execution_options(populate_existing=True)).one_or_none()
        if row is None or session.get_bind().dialect.name == "postgresql":
            return cast("Row | None", row)  # the row lock is all it takes; the compare-and-set is for SQLite
        seen = row.revision
        bumped = cast(
            CursorResult[Any],
            session.execute(
                update(table)
                .where(table.id == row.id, table.revision == seen)
                .values(revision=seen + 1)
                .execution_options(synchronize_session=False)
            ),
        )
        if bumped.rowcount == 1:
            set_committed_value(row, "revision", seen + 1)
            return cast("Row", row)
    raise LockLostError(f"{table.__tablename__} {row_id}: lost the revision compare-and-set {_ATTEMPTS} times")
