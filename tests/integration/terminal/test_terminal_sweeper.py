"""The sweeper, in-process on the test's database: pending sessions whose ticket expired are
written down as `ticket_expired` (no event: they never started), active sessions whose
gateway stopped writing heartbeats are ended `gateway_lost` with their session_ended event
(so a dead process never holds the organization's cap), and live sessions are left alone."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from handlers.terminal import services
from handlers.terminal.tables import TerminalSession
from hangar.db import make_engine, make_session_factory, utcnow
from hangar.outbox import OutboxEvent

pytestmark = pytest.mark.postgres


def _row(org: uuid.UUID, status: str, **values: Any) -> TerminalSession:
    now = utcnow()
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "organization_id": org,
        "instance_id": uuid.uuid4(),
        "api_key_id": uuid.uuid4(),
        "cols": 80,
        "rows": 24,
        "status": status,
        "ticket_hash": uuid.uuid4().hex,
        "ticket_expires_at": now + timedelta(seconds=30),
        "created_at": now,
        "bytes_in": 3,
        "bytes_out": 5,
    }
    fields.update(values)
    return TerminalSession(**fields)


def test_the_sweeper_ends_expired_tickets_and_sessions_of_dead_gateways(database_url: str) -> None:
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    org = uuid.uuid4()
    now = utcnow()
    expired = _row(org, "pending", ticket_expires_at=now - timedelta(seconds=1))
    waiting = _row(org, "pending")
    lost = _row(org, "active", started_at=now - timedelta(minutes=5), heartbeat_at=now - timedelta(minutes=2))
    alive = _row(org, "active", started_at=now - timedelta(minutes=5), heartbeat_at=now)
    try:
        with sessions() as db, db.begin():
            db.add_all([expired, waiting, lost, alive])
        assert services.sweep(sessions, lost_after=timedelta(seconds=30)) == 2
        with sessions() as db:
            got = {row.id: row for row in db.scalars(select(TerminalSession))}
            events = [e.payload for e in db.scalars(select(OutboxEvent).where(OutboxEvent.type.like("terminal.%")))]
        assert (got[expired.id].status, got[expired.id].end_reason) == ("ended", "ticket_expired")
        assert (got[lost.id].status, got[lost.id].end_reason) == ("ended", "gateway_lost")
        assert got[waiting.id].status == "pending" and got[alive.id].status == "active"
        assert [(e["type"], e["data"]["session_id"], e["data"]["reason"]) for e in events] == [
            ("terminal.session_ended", str(lost.id), "gateway_lost")
        ]
        assert services.sweep(sessions, lost_after=timedelta(seconds=30)) == 0  # idempotent
    finally:
        engine.dispose()
