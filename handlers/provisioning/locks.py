"""One writer per instance at a time, on both databases (the mechanism is hangar/locks.py's lock_row).

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

from sqlalchemy.orm import Session

from handlers.provisioning.tables import Instance
from hangar.locks import LockLostError, lock_row

__all__ = ["LockLostError", "lock_instance"]


def lock_instance(
    session: Session, instance_id: uuid.UUID, *, organization_id: uuid.UUID | None = None
) -> Instance | None:
    """The instance, locked for this transaction and current, or None if there is no such
    instance (in `organization_id`, when given: another tenant's id is simply not found)."""
    return lock_row(session, Instance, instance_id, organization_id=organization_id)
