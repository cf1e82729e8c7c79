"""Provisioning persistence: instances and the actions that change them.

The saga's whole state lives on the instance row (`step`, `step_started_at`, `next_run_at`,
`attempt`, `tried_hosts`, `fault_*`): a step reads it, does one idempotent thing and writes
where it got to, in one transaction. Nothing about an instance's progress is held in memory,
so any process may run the next step and a crash loses at most an uncommitted step, which
is simply run again (ADR 0008).

No foreign keys leave the context: `organization_id` is identity's and `host_id` is
inventory's; they travel as values, like events. `instances.action_id` (the lock) has no
foreign key either, because `instance_actions.instance_id` already points the other way and
a cycle would force every insert through two flushes; both are written together by
services.py and saga.py only.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from handlers.provisioning import states
from hangar.db import Base, UTCDateTime


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


ACTION_TYPES: tuple[str, ...] = ("create", "start", "stop", "reboot", "terminate")
ACTION_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed")


class Instance(Base):
    """A tenant's instance. The launch parameters (type, image, resources, price) are copied
    from the catalogue at create time, so a later catalogue change never alters what an
    existing instance is or costs."""

    __tablename__ = "instances"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    name: Mapped[str] = mapped_column(String(63))
    region: Mapped[str] = mapped_column(String(32))
    zone: Mapped[str | None] = mapped_column(String(40), nullable=True)
    instance_type: Mapped[str] = mapped_column(String(32))
    image: Mapped[str] = mapped_column(String(64))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    gpus: Mapped[int] = mapped_column(Integer)
    gpu_model: Mapped[str | None] = mapped_column(String(32), nullable=True)
    price_per_hour: Mapped[int] = mapped_column(BigInteger)  # minor units of `currency`
    currency: Mapped[str] = mapped_column(String(3))

    # Assigned only by states.transition / states.begin_life.
    state: Mapped[str] = mapped_column(String(20))
    state_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)

    # Placement of the current attempt (null while pending).
    host_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    host_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Create saga: attempt n runs on a host none of attempts 1..n-1 used (tried_hosts holds
    # their ids as strings, in order).
    attempt: Mapped[int] = mapped_column(Integer)
    tried_hosts: Mapped[list[str]] = mapped_column(JSON)

    # The running action: the lock. Another action is a 409 `resource-locked` while it is set.
    action_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    # Where the saga is: the next step to run (saga.py names them), when the current step
    # began (what the driver is polled `since`), and when the next one is due (null: nothing
    # to do — every stable instance).
    step: Mapped[str | None] = mapped_column(String(32), nullable=True)
    step_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Consecutive steps that raised (the runner's backoff) and the last such error.
    step_errors: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The failure being compensated, remembered across the compensation steps so the final
    # answer (retry, or fail with this code) is known when they are done.
    fault_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    fault_message: Mapped[str | None] = mapped_column(String(500), nullable=True)
    fault_retryable: Mapped[bool] = mapped_column(default=False)
    # Bumped by locks.lock_instance on SQLite: the compare-and-set that makes a step exclusive
    # there, where SELECT … FOR UPDATE is a no-op (PostgreSQL's row lock needs no counter).
    revision: Mapped[int] = mapped_column(Integer, default=0)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    launched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    terminated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        CheckConstraint(_in("state", states.STATES), name="state"),
        CheckConstraint("attempt >= 1", name="attempt"),
        # Newest-first pages of an organization's instances, unfiltered and by state/region.
        Index("ix_instances_org_created", "organization_id", "created_at", "id"),
        Index("ix_instances_org_state_created", "organization_id", "state", "created_at", "id"),
        Index("ix_instances_org_region_created", "organization_id", "region", "created_at", "id"),
        # The runner's due-work query: stable instances have next_run_at NULL, so the index
        # holds only the few instances with work in flight near its low end.
        Index("ix_instances_next_run_at", "next_run_at"),
    )


class Action(Base):
    """A long-running operation on an instance (create, start, stop, reboot, terminate).
    Finished actions stay, so an instance's history can be read."""

    __tablename__ = "instance_actions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    instance_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("instances.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    progress: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        CheckConstraint(_in("type", ACTION_TYPES), name="type"),
        CheckConstraint(_in("status", ACTION_STATUSES), name="status"),
        CheckConstraint("progress >= 0 AND progress <= 100", name="progress"),
        # Newest-first pages of one instance's actions (and its latest terminate action).
        Index("ix_instance_actions_instance_created", "instance_id", "created_at", "id"),
    )
