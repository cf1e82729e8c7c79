"""Metering persistence (docs/billing.md "Metering", ADR 0011): what runs, what was charged.

- `billing_meters`: one row per metered resource (an instance, a volume). It caches what the
  tick needs on its fast path — whether the resource was running at `charged_until`, at
  which rate — and the cumulative charge: `charged_units` (Σ rate × seconds) and
  `charged_amount` (= floor(charged_units / period_seconds)), so rounding never loses a
  cent across ticks. `pending` says edges arrived that the tick has not folded in yet
  (`dirty_from`: the earliest of them); `active` (running or pending) is the tick's query.
- `billing_meter_edges`: the resource's start/stop/end edges as the events told them, at
  whole seconds, idempotent per event. The running intervals are a fold of the edges in
  time order, so duplicate and out-of-order delivery give the same intervals.
- `billing_usage`: per resource per UTC day, the seconds, units and amount charged — written
  in the transaction that moves the money (usage_lines reads it).
- `billing_metering_orgs`: one row per organization: the lock a charge batch takes, the
  batch counter that makes transfer ids deterministic, the shortfall outstanding on
  platform:uncollected, and the low/depleted flags (emitted once per crossing).

Holds are not here: the ledger's open pending transfers are the truth for them (a hold's
reference names the instance it backs).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Date, Index, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from hangar.db import Base, UTCDateTime

RESOURCE_TYPES: tuple[str, ...] = ("instance", "volume")
EDGE_KINDS: tuple[str, ...] = ("start", "stop", "end")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Meter(Base):
    __tablename__ = "billing_meters"

    resource_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    resource_type: Mapped[str] = mapped_column(String(16))
    # What a usage line says: "cpu-2", "volume data-1 (100 GiB)"; `label` is a volume's name.
    description: Mapped[str] = mapped_column(String(255))
    label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    currency: Mapped[str] = mapped_column(String(3))
    # A rate is minor units per `period_seconds` (3600 for instances: the hourly price;
    # 730 × 3600 for volumes: the monthly price of the volume's size).
    period_seconds: Mapped[int] = mapped_column(BigInteger)
    running: Mapped[bool] = mapped_column(Boolean)
    rate: Mapped[int] = mapped_column(BigInteger)
    charged_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    charged_units: Mapped[int] = mapped_column(BigInteger)
    charged_amount: Mapped[int] = mapped_column(BigInteger)
    pending: Mapped[bool] = mapped_column(Boolean)
    dirty_from: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint(_in("resource_type", RESOURCE_TYPES), name="resource_type"),
        CheckConstraint("period_seconds > 0 AND rate >= 0 AND charged_units >= 0", name="amounts"),
        # The tick's query (active meters by organization) and an organization's meters.
        Index("ix_billing_meters_active_org", "active", "organization_id"),
        Index("ix_billing_meters_org", "organization_id"),
    )


class MeterEdge(Base):
    __tablename__ = "billing_meter_edges"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)  # from the event id: idempotent
    resource_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    at: Mapped[datetime] = mapped_column(UTCDateTime)  # whole seconds
    kind: Mapped[str] = mapped_column(String(8))
    rate: Mapped[int] = mapped_column(BigInteger)  # the rate a start runs at (0 otherwise)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint(_in("kind", EDGE_KINDS), name="kind"),
        Index("ix_billing_meter_edges_resource_at", "resource_id", "at"),
    )


class UsageRecord(Base):
    __tablename__ = "billing_usage"

    resource_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)  # UTC
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    resource_type: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(255))
    currency: Mapped[str] = mapped_column(String(3))
    seconds: Mapped[int] = mapped_column(BigInteger)
    units: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_billing_usage_org_day", "organization_id", "day"),)


class MeteringOrg(Base):
    __tablename__ = "billing_metering_orgs"

    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    # Bumped by every lock_orgs (a record of the locking; on SQLite its write is the lock).
    version: Mapped[int] = mapped_column(Integer)
    # Charge batches committed so far: the next batch's transfer ids derive from seq + 1.
    seq: Mapped[int] = mapped_column(BigInteger)
    # Usage charged but not collected (funded by platform:uncollected), still outstanding.
    uncollected: Mapped[int] = mapped_column(BigInteger)
    low: Mapped[bool] = mapped_column(Boolean)
    depleted: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (CheckConstraint("uncollected >= 0 AND seq >= 0", name="amounts"),)
