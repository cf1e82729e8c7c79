"""One writer per volume (and per snapshot) at a time, on both databases — the same scheme as
handlers/provisioning/locks.py: `SELECT … FOR UPDATE` on PostgreSQL; on SQLite, where that is a
no-op, a compare-and-set of `revision` that is the transaction's first write (it takes the
database's write lock, and a lost race re-reads the row under it)."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from handlers.storage.tables import Snapshot, Volume

_ATTEMPTS = 3
Row = TypeVar("Row", Volume, Snapshot)


class LockLostError(RuntimeError):
    """The compare-and-set kept losing: something writes these rows bypassing the lock."""


def lock(
    session: Session, model: type[Row], row_id: uuid.UUID, *, organization_id: uuid.UUID | None = None
) -> Row | None:
    """The row, locked for this transaction and current, or None (absent, or another tenant's)."""
    for _ in range(_ATTEMPTS):
        stmt = select(model).where(model.id == row_id)
        if organization_id is not None:
            stmt = stmt.where(model.organization_id == organization_id)
        row = session.scalars(stmt.with_for_update().execution_options(populate_existing=True)).one_or_none()
        if row is None or session.get_bind().dialect.name == "postgresql":
            return row
        seen = row.revision
        bumped = cast(
            CursorResult[Any],
            session.execute(
                update(model)
                .where(model.id == row.id, model.revision == seen)
                .values(revision=seen + 1)
                .execution_options(synchronize_session=False)
            ),
        )
        if bumped.rowcount == 1:
            set_committed_value(row, "revision", seen + 1)
            return row
    raise LockLostError(f"{model.__tablename__} {row_id}: lost the revision compare-and-set {_ATTEMPTS} times")
