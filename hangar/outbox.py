"""The transactional outbox: events are rows written in the same transaction as the state
change they describe; the relay (hangar.relay) publishes them after commit.

The envelope is the AsyncAPI contract's: {id, type, occurred_at, organization_id, data}.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, Session, mapped_column

from hangar.db import Base, UTCDateTime, utcnow


class OutboxEvent(Base):
    __tablename__ = "outbox_events"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    organization_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Monotonic per database: the relay publishes in this order.
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Set by the relay (hangar.relay): a payload that breaks its AsyncAPI schema is never
    # published (failed_at); a publish that failed waits for next_attempt_at (backoff).
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_outbox_events_unpublished", "published_at", "seq"),)


def record(
    session: Session,
    event_type: str,
    organization_id: uuid.UUID | None,
    data: dict[str, Any],
    *,
    occurred_at: datetime | None = None,
) -> uuid.UUID:
    """Add an event to the session's transaction and return its id."""
    event_id = uuid.uuid4()
    when = occurred_at or utcnow()
    envelope = {
        "id": str(event_id),
        "type": event_type,
        "occurred_at": when.isoformat().replace("+00:00", "Z"),
        "organization_id": str(organization_id) if organization_id else None,
        "data": data,
    }
    session.add(
        OutboxEvent(
            id=event_id,
            type=event_type,
            organization_id=organization_id,
            payload=envelope,
            created_at=when,
            seq=_next_seq(),
            attempts=0,
        )
    )
    return event_id


def _next_seq() -> int:
    # Nanosecond clock: monotonic enough across processes to order the relay's batches;
    # consumers must not rely on global order anyway (delivery is at least once).
    import time

    return time.time_ns()
