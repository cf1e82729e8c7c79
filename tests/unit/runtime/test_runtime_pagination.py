"""Keyset cursors: round trips, rejection of anything we did not issue, and pages that
walk a table exactly once in either direction (database-facing: SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from runtime_widgets import FULL, assert_problem
from sqlalchemy import select

from hangar.db import make_engine, make_session_factory
from hangar.outbox import OutboxEvent
from hangar.pagination import decode_cursor, encode_cursor, paginate
from hangar.problems import BadRequest

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def test_round_trip_keeps_types() -> None:
    position = (NOW, uuid.UUID("0b9f3a52-6c5e-4d8e-9a0e-0d3c8e2f7a11"), 7, "x", None)
    cursor = encode_cursor(position)
    assert cursor.replace("-", "").replace("_", "").isalnum()
    assert decode_cursor(cursor, 5) == position


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        "bm90IGpzb24",  # "not json"
        encode_cursor([1])[:-3],
        "eyJ2IjoyLCJwIjpbXX0",  # {"v":2,"p":[]}
        "eyJ2IjoxLCJwIjpbWyJkdCIsIjIwMjYtMTEtMjhUMTA6MDA6MDAiXV19",  # naive datetime
    ],
)
def test_foreign_cursors_are_400s(cursor: str) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_cursor(cursor, 1)
    assert caught.value.slug == "invalid-cursor"
    assert caught.value.errors and caught.value.errors[0]["location"] == "query.cursor"


def test_cursor_for_another_sort_is_a_400() -> None:
    with pytest.raises(BadRequest):
        decode_cursor(encode_cursor([NOW, 1]), 3)


@pytest.mark.postgres
@pytest.mark.parametrize("descending", [False, True])
def test_pages_walk_every_row_once(database_url: str, descending: bool) -> None:
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    org = uuid.uuid4()
    with sessions() as session:
        for n in range(7):
            # Pairs with the same timestamp: the id breaks the tie.
            when = NOW + timedelta(seconds=n // 2)
            session.add(
                OutboxEvent(
                    id=uuid.uuid4(), type="t", organization_id=org, payload={"n": n}, created_at=when, seq=n, attempts=0
                )
            )
        session.commit()
        expected = [
            e.id
            for e in session.scalars(
                select(OutboxEvent).order_by(
                    *(c.desc() if descending else c for c in (OutboxEvent.created_at, OutboxEvent.id))
                )
            )
        ]
        seen: list[uuid.UUID] = []
        cursor = None
        pages = 0
        while True:
            page = paginate(
                session,
                select(OutboxEvent).where(OutboxEvent.organization_id == org),
                (OutboxEvent.created_at, OutboxEvent.id),
                limit=3,
                cursor=cursor,
                descending=descending,
            )
            seen += [e.id for e in page.items]
            pages += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    engine.dispose()
    assert seen == expected and pages == 3


def test_the_api_pages_and_rejects_bad_cursors(widgets: Any) -> None:
    for n in range(5):
        assert widgets.post("/v1/widgets", headers=FULL, json={"name": f"w{n}", "size": n}).status_code == 201
    names: list[str] = []
    url = "/v1/widgets?limit=2"
    while True:
        body = widgets.get(url, headers=FULL).json()
        names += [w["name"] for w in body["data"]]
        if body["next_cursor"] is None:
            break
        url = f"/v1/widgets?limit=2&cursor={body['next_cursor']}"
    assert names == [f"w{n}" for n in range(5)]
    assert_problem(widgets.get("/v1/widgets?cursor=bm9wZQ", headers=FULL), 400, "invalid-cursor")
