"""Storage persistence: volumes, the actions that change them, and snapshots.

Like provisioning's instances (ADR 0008), the runner's whole state lives on the row it drives:
`step` ("begin" → "wait"), `step_started_at` (what the driver is polled `since`) and
`next_run_at` (null when nothing is due). A volume carries the running action's id in
`action_id` (the lock: a second action is a 409 `resource-locked`); a snapshot drives itself.

The attachment is a column (`instance_id`): a volume has one attachment at most, and it is
set from the moment the attach is accepted (attaching) until the detach completes, so the
8-per-instance count and the `instance_id` filter see in-flight attachments too.

No foreign keys leave the context: `organization_id` is identity's, `instance_id`
provisioning's; they travel as values.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from handlers.storage import states
from hangar.db import Base, UTCDateTime

ACTION_TYPES: tuple[str, ...] = ("create", "attach", "detach", "resize", "delete")
ACTION_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed")
MAX_SIZE_GIB = 16384


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


_LIVE_NAME = text("state <> 'deleted'")
_ATTACHED = _in("state", tuple(sorted(states.ATTACHED)))


class Volume(Base):
    __tablename__ = "volumes"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    name: Mapped[str] = mapped_column(String(63))
    region: Mapped[str] = mapped_column(String(32))
    size_gib: Mapped[int] = mapped_column(Integer)
    # The snapshot it was restored from (null: created empty).
    snapshot_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)

    # Assigned only by states.transition.
    state: Mapped[str] = mapped_column(String(20))
    state_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    instance_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    attached_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    # The running action (the lock) and the runner's position in it.
    action_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    step: Mapped[str | None] = mapped_column(String(16), nullable=True)
    step_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    step_errors: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Bumped by every lock on SQLite (compare-and-set; see locks.py).
    revision: Mapped[int] = mapped_column(Integer, default=0)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        CheckConstraint(_in("state", states.STATES), name="state"),
        CheckConstraint(f"size_gib >= 1 AND size_gib <= {MAX_SIZE_GIB}", name="size_gib"),
        # A volume is attached exactly while it is attaching, in_use or detaching.
        CheckConstraint(
            f"(instance_id IS NULL AND NOT {_ATTACHED}) OR (instance_id IS NOT NULL AND {_ATTACHED})",
            name="attachment",
        ),
        # The name is unique per organization and region among volumes not deleted.
        Index(
            "uq_volumes_live_name",
            "organization_id",
            "region",
            "name",
            unique=True,
            sqlite_where=_LIVE_NAME,
            postgresql_where=_LIVE_NAME,
        ),
        Index("ix_volumes_org_created", "organization_id", "created_at", "id"),
        Index("ix_volumes_instance", "instance_id"),
        Index("ix_volumes_next_run_at", "next_run_at"),
    )


class VolumeAction(Base):
    """A long-running operation on a volume; finished ones stay (the volume's history)."""

    __tablename__ = "volume_actions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    volume_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("volumes.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[int] = mapped_column(Integer, default=0)
    instance_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)  # attach, detach
    size_gib: Mapped[int | None] = mapped_column(Integer, nullable=True)  # create, resize: the new size
    previous_size_gib: Mapped[int | None] = mapped_column(Integer, nullable=True)  # resize
    reason: Mapped[str | None] = mapped_column(String(200), nullable=True)  # why the platform started it
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        CheckConstraint(_in("type", ACTION_TYPES), name="type"),
        CheckConstraint(_in("status", ACTION_STATUSES), name="status"),
        CheckConstraint("progress >= 0 AND progress <= 100", name="progress"),
        Index("ix_volume_actions_volume_created", "volume_id", "created_at", "id"),
    )


class Snapshot(Base):
    __tablename__ = "volume_snapshots"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    volume_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("volumes.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    region: Mapped[str] = mapped_column(String(32))
    size_gib: Mapped[int] = mapped_column(Integer)

    state: Mapped[str] = mapped_column(String(20))
    state_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    step: Mapped[str | None] = mapped_column(String(16), nullable=True)
    step_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    step_errors: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        CheckConstraint(_in("state", states.SNAPSHOT_STATES), name="state"),
        Index("ix_volume_snapshots_org_created", "organization_id", "created_at", "id"),
        Index("ix_volume_snapshots_volume", "volume_id"),
        Index("ix_volume_snapshots_next_run_at", "next_run_at"),
    )
