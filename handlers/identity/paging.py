"""Keyset (cursor) pagination over (created_at, id).

Offsets skip or repeat rows when rows are inserted between pages; a keyset cursor does not.
The cursor is opaque to clients: url-safe base64 (matching the spec's `^[A-Za-z0-9_-]+$`)
of the last row's sort key. A cursor that does not decode is a 400, never a 500.

Kept local to the context until the runtime's shared pagination helper exists.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Row, Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from hangar.problems import BadRequest

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, row_id = json.loads(raw)
        moment = datetime.fromisoformat(when)
        if moment.tzinfo is None:
            raise ValueError("naive timestamp")
        return moment, uuid.UUID(row_id)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadRequest(
            "The cursor is not one this API returned.",
            slug="invalid-cursor",
            errors=[{"location": "query.cursor", "message": "not a valid cursor"}],
        ) from exc


def keyset_page(
    session: Session,
    query: Select[*tuple[Any, ...]],
    created_at: InstrumentedAttribute[datetime],
    row_id: InstrumentedAttribute[uuid.UUID],
    limit: int,
    cursor: str | None,
    *,
    newest_first: bool,
) -> Page[Row[*tuple[Any, ...]]]:
    """One page of `query` ordered by (created_at, id); the first entity in each row is the
    one whose key the cursor records."""
    if cursor:
        after_at, after_id = decode_cursor(cursor)
        if newest_first:
            query = query.where(or_(created_at < after_at, and_(created_at == after_at, row_id < after_id)))
        else:
            query = query.where(or_(created_at > after_at, and_(created_at == after_at, row_id > after_id)))
    order = (created_at.desc(), row_id.desc()) if newest_first else (created_at.asc(), row_id.asc())
    # One extra row tells whether another page exists without a COUNT.
    rows = list(session.execute(query.order_by(*order).limit(limit + 1)).all())
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    last = rows[-1][0]
    key_at = getattr(last, created_at.key)
    key_id = getattr(last, row_id.key)
    return Page(rows, encode_cursor(key_at, key_id))
