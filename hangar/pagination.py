"""Cursor pagination for list operations: `limit`, `cursor` → `data`, `next_cursor`.

Cursors are keyset positions, not offsets: a page stays correct while rows are inserted or
deleted before it, and fetching page N costs the same as page 1. A cursor is the sort key
of the last row served, as URL-safe base64 of a small JSON document, so it matches the
spec's `^[A-Za-z0-9_-]+$`. It is opaque to clients but not secret: the queries it feeds are
always filtered to the caller's organization, so a forged cursor can only move within the
caller's own rows.

A handler lists like this::

    stmt = select(ApiKey).where(ApiKey.organization_id == ctx.caller.organization_id)
    page = paginate(ctx.session, stmt, (ApiKey.created_at, ApiKey.id), limit=limit,
                    cursor=cursor, descending=True)
    return models.ApiKeyList(data=[to_model(k) for k in page.items], next_cursor=page.next_cursor)

The last order column must be unique (an id) so the order is total.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from hangar.problems import BadRequest

T = TypeVar("T")

_VERSION = 1
_LOCATION = "query.cursor"


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def _tag(value: Any) -> list[Any]:
    # Tagged so a decoded value has the type it was encoded with (a UUID, not its string).
    if isinstance(value, datetime):
        return ["dt", value.isoformat()]
    if isinstance(value, uuid.UUID):
        return ["uuid", str(value)]
    if isinstance(value, bool) or value is None:
        return ["v", value]
    if isinstance(value, int | float | str):
        return ["v", value]
    raise TypeError(f"cannot put a {type(value).__name__} in a cursor")


def _untag(item: Any) -> Any:
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
        raise ValueError("malformed position")
    kind, value = item
    if kind == "dt":
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("naive datetime")
        return parsed
    if kind == "uuid":
        return uuid.UUID(value)
    if kind == "v" and (value is None or isinstance(value, bool | int | float | str)):
        return value
    raise ValueError(f"unknown kind {kind!r}")


def encode_cursor(position: Sequence[Any]) -> str:
    raw = json.dumps({"v": _VERSION, "p": [_tag(v) for v in position]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, arity: int) -> tuple[Any, ...]:
    """The position in `cursor`; a 400 problem (location query.cursor) if it is not one of
    ours or was made for a list sorted on a different number of columns."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        doc = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(doc, dict) or doc.get("v") != _VERSION or not isinstance(doc.get("p"), list):
            raise ValueError("not a cursor")
        position = tuple(_untag(item) for item in doc["p"])
        if len(position) != arity:
            raise ValueError("cursor is for another list")
    except (ValueError, TypeError, UnicodeError, binascii.Error) as exc:
        raise BadRequest(
            "The cursor is not valid; pass a `next_cursor` from a previous page, unchanged.",
            slug="invalid-cursor",
            errors=[{"location": _LOCATION, "message": f"not a cursor issued by this list ({exc})"}],
        ) from None
    return position


def _after(columns: Sequence[InstrumentedAttribute[Any]], position: Sequence[Any], descending: bool) -> Any:
    # (a, b) > (x, y) spelled out as a > x OR (a = x AND b > y): portable across SQLite and
    # PostgreSQL, and each comparison binds with its column's type (UTCDateTime included).
    clauses = []
    for i, column in enumerate(columns):
        equal = [columns[j] == position[j] for j in range(i)]
        beyond = column < position[i] if descending else column > position[i]
        clauses.append(and_(*equal, beyond))
    return or_(*clauses)


def paginate(
    session: Session,
    stmt: Select[Any],
    order_by: Sequence[InstrumentedAttribute[Any]],
    *,
    limit: int,
    cursor: str | None,
    descending: bool = False,
) -> Page[Any]:
    """One page of the ORM entities `stmt` selects, ordered by `order_by` (all ascending or
    all descending), starting after `cursor`."""
    if not order_by:
        raise ValueError("paginate needs at least one order column")
    if cursor:
        stmt = stmt.where(_after(order_by, decode_cursor(cursor, len(order_by)), descending))
    stmt = stmt.order_by(*(c.desc() if descending else c.asc() for c in order_by)).limit(limit + 1)
    rows = list(session.scalars(stmt))
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    last = rows[-1]
    return Page(rows, encode_cursor([getattr(last, c.key) for c in order_by]))
