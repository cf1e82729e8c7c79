"""The storage events' `data`, built in one place from the rows (specs/asyncapi/storage.yaml).
Each records its event in the session's outbox, in the caller's transaction, at `now`.
Billing meters volumes from volume.created / volume.resized / volume.deleted."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.orm import Session

from handlers.storage.tables import Snapshot, Volume
from hangar import outbox


def volume_created(session: Session, volume: Volume, now: datetime) -> None:
    outbox.record(
        session,
        "volume.created",
        volume.organization_id,
        {
            "volume_id": str(volume.id),
            "name": volume.name,
            "region": volume.region,
            "size_gib": volume.size_gib,
            "snapshot_id": str(volume.snapshot_id) if volume.snapshot_id else None,
        },
        occurred_at=now,
    )


def volume_attached(session: Session, volume: Volume, instance_id: uuid.UUID, now: datetime) -> None:
    outbox.record(
        session,
        "volume.attached",
        volume.organization_id,
        {"volume_id": str(volume.id), "instance_id": str(instance_id)},
        occurred_at=now,
    )


def volume_detached(
    session: Session, volume: Volume, instance_id: uuid.UUID, now: datetime, reason: str | None = None
) -> None:
    outbox.record(
        session,
        "volume.detached",
        volume.organization_id,
        {"volume_id": str(volume.id), "instance_id": str(instance_id), "reason": reason},
        occurred_at=now,
    )


def volume_resized(session: Session, volume: Volume, previous_size_gib: int, now: datetime) -> None:
    outbox.record(
        session,
        "volume.resized",
        volume.organization_id,
        {"volume_id": str(volume.id), "size_gib": volume.size_gib, "previous_size_gib": previous_size_gib},
        occurred_at=now,
    )


def volume_deleted(session: Session, volume: Volume, now: datetime) -> None:
    outbox.record(session, "volume.deleted", volume.organization_id, {"volume_id": str(volume.id)}, occurred_at=now)


def snapshot_completed(session: Session, snapshot: Snapshot, now: datetime) -> None:
    outbox.record(
        session,
        "snapshot.completed",
        snapshot.organization_id,
        {"snapshot_id": str(snapshot.id), "volume_id": str(snapshot.volume_id), "size_gib": snapshot.size_gib},
        occurred_at=now,
    )


def snapshot_deleted(session: Session, snapshot: Snapshot, now: datetime) -> None:
    outbox.record(
        session, "snapshot.deleted", snapshot.organization_id, {"snapshot_id": str(snapshot.id)}, occurred_at=now
    )
