"""Consumer-side deduplication: a consumer records each event id it has handled in the same
transaction as its effects, so a redelivered event changes nothing (delivery is at least
once, effects are exactly once)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import String, Uuid, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from hangar.db import Base, UTCDateTime, utcnow


class ProcessedEvent(Base):
    __tablename__ = "processed_events"

    consumer: Mapped[str] = mapped_column(String(100), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime)


def already_processed(session: Session, consumer: str, event_id: uuid.UUID) -> bool:
    return (
        session.scalar(
            select(ProcessedEvent.event_id).where(
                ProcessedEvent.consumer == consumer, ProcessedEvent.event_id == event_id
            )
        )
        is not None
    )


def mark_processed(session: Session, consumer: str, event_id: uuid.UUID) -> None:
    """Add the marker to the consumer's transaction; a concurrent duplicate fails on the
    primary key and rolls back with it."""
    session.add(ProcessedEvent(consumer=consumer, event_id=event_id, processed_at=utcnow()))
