"""One writer per volume (and per snapshot) at a time, on both databases — the scheme of
hangar/locks.py (shared with provisioning): `SELECT … FOR UPDATE` on PostgreSQL; on SQLite, where that is a
no-op, a compare-and-set of `revision` that is the transaction's first write (it takes the
database's write lock, and a lost race re-reads the row under it)."""

from __future__ import annotations

import uuid
from typing import TypeVar

from sqlalchemy.orm import Session

from handlers.storage.tables import Snapshot, Volume
from hangar.locks import LockLostError, lock_row

__all__ = ["LockLostError", "lock"]

Row = TypeVar("Row", Volume, Snapshot)


def lock(
    session: Session, model: type[Row], row_id: uuid.UUID, *, organization_id: uuid.UUID | None = None
) -> Row | None:
    """The row, locked for this transaction and current, or None (absent, or another tenant's)."""
    return lock_row(session, model, row_id, organization_id=organization_id)
