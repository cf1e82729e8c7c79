"""Inventory & Placement persistence, modelled on OpenStack Placement.

Reference data (regions, images, instance types) is keyed by its public slug: the slug is
what clients send and what other contexts store, it never changes, and the catalogue seed
can upsert by it from several processes at once.

A host is a resource provider. `inventories` (one row per host and resource class) is the
source of truth for what a host has; `allocations` for what consumers hold. Two things are
kept denormalised *in the same transaction* as every write, because placement must decide
in one indexed query over the `hosts` table without joining or summing anything:

- `inventories.capacity` = floor((total − reserved) × allocation_ratio) and
  `inventories.used` = the sum of the host's allocations of that class;
- the host's placement summary: `<class>_free` (capacity − used) per class, `vcpu_capacity`,
  `vcpu_load` (used ÷ capacity of VCPU, the spread key) and `has_gpu`.

`hosts.generation` is bumped by every write that changes what placement would decide about
the host (inventories, allocations, traits, state); claims compare-and-swap it.
CHECK constraints make an overcommitted inventory impossible to store whatever the code does.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from hangar.db import Base, UTCDateTime

RESOURCE_CLASSES: tuple[str, ...] = ("VCPU", "MEMORY_MB", "DISK_GB", "GPU")
HOST_STATES: tuple[str, ...] = ("active", "draining", "down")
IMAGE_STATUSES: tuple[str, ...] = ("active", "deprecated")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Region(Base):
    __tablename__ = "regions"

    slug: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    country: Mapped[str] = mapped_column(String(2))  # ISO 3166-1 alpha-2
    zones: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Image(Base):
    __tablename__ = "images"

    slug: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    os_family: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(32))
    min_disk_gb: Mapped[int] = mapped_column(Integer)
    gpu_ready: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint(_in("status", IMAGE_STATUSES), name="status"),
        CheckConstraint("min_disk_gb >= 0", name="min_disk_gb"),
    )


class InstanceType(Base):
    __tablename__ = "instance_types"

    slug: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(String(255))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    gpus: Mapped[int] = mapped_column(Integer)
    gpu_model: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Traits every host running this type must have, e.g. ["gpu:h100"].
    required_traits: Mapped[list[str]] = mapped_column(JSON)
    price_per_hour: Mapped[int] = mapped_column(Integer)  # minor units (cents) of `currency`
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("vcpus >= 1 AND memory_mb >= 1 AND disk_gb >= 1 AND gpus >= 0", name="resources"),
        CheckConstraint("(gpus = 0) = (gpu_model IS NULL)", name="gpu_model"),
        CheckConstraint("price_per_hour >= 0", name="price"),
    )


class InstanceTypeRegion(Base):
    """Where an instance type is offered."""

    __tablename__ = "instance_type_regions"

    instance_type: Mapped[str] = mapped_column(String(64), ForeignKey("instance_types.slug", ondelete="CASCADE"))
    region: Mapped[str] = mapped_column(String(32), ForeignKey("regions.slug", ondelete="CASCADE"), index=True)

    __table_args__ = (PrimaryKeyConstraint("instance_type", "region"),)


class Host(Base):
    """A resource provider. The columns after `state` are the placement summary (see the
    module docstring): derived from `inventories`, rewritten in the same transaction."""

    __tablename__ = "hosts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    region: Mapped[str] = mapped_column(String(32), ForeignKey("regions.slug"))
    zone: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    generation: Mapped[int] = mapped_column(Integer)
    has_gpu: Mapped[bool] = mapped_column(Boolean)
    vcpu_capacity: Mapped[int] = mapped_column(Integer)
    vcpu_free: Mapped[int] = mapped_column(Integer)
    memory_mb_free: Mapped[int] = mapped_column(Integer)
    disk_gb_free: Mapped[int] = mapped_column(Integer)
    gpu_free: Mapped[int] = mapped_column(Integer)
    # VCPU used ÷ capacity (1.0 when the host has no VCPU): CPU requests spread by it.
    vcpu_load: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint(_in("state", HOST_STATES), name="state"),
        CheckConstraint(
            "vcpu_free >= 0 AND memory_mb_free >= 0 AND disk_gb_free >= 0 AND gpu_free >= 0 "
            "AND vcpu_free <= vcpu_capacity",
            name="free",
        ),
        # Spread (CPU requests): walk the region's active hosts CPU-only first, least loaded
        # first, and stop at the first few that fit.
        Index("ix_hosts_spread", "region", "state", "has_gpu", "vcpu_load"),
        # Pack (GPU requests): start at the fewest free GPUs that still fit.
        Index("ix_hosts_pack", "region", "state", "gpu_free", "vcpu_load"),
    )


class HostTrait(Base):
    __tablename__ = "host_traits"

    host_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("hosts.id", ondelete="CASCADE"))
    trait: Mapped[str] = mapped_column(String(255))

    __table_args__ = (PrimaryKeyConstraint("host_id", "trait"),)


class Inventory(Base):
    __tablename__ = "inventories"

    host_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("hosts.id", ondelete="CASCADE"))
    resource_class: Mapped[str] = mapped_column(String(16))
    total: Mapped[int] = mapped_column(Integer)
    reserved: Mapped[int] = mapped_column(Integer)
    min_unit: Mapped[int] = mapped_column(Integer)
    max_unit: Mapped[int] = mapped_column(Integer)
    step_size: Mapped[int] = mapped_column(Integer)
    allocation_ratio: Mapped[float] = mapped_column(Float)
    capacity: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        PrimaryKeyConstraint("host_id", "resource_class"),
        CheckConstraint(_in("resource_class", RESOURCE_CLASSES), name="resource_class"),
        CheckConstraint("total >= 0 AND reserved >= 0 AND reserved <= total", name="total"),
        CheckConstraint("min_unit >= 1 AND max_unit >= min_unit AND step_size >= 1", name="units"),
        CheckConstraint("allocation_ratio > 0", name="allocation_ratio"),
        CheckConstraint("used >= 0 AND used <= capacity", name="used"),
    )

    @property
    def free(self) -> int:
        return self.capacity - self.used


class Allocation(Base):
    """What a consumer (an instance) holds on a host, one row per resource class it asked
    for. The primary key makes a consumer's second claim of a class impossible; all of a
    consumer's rows are written by one claim, on one host."""

    __tablename__ = "allocations"

    consumer_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    resource_class: Mapped[str] = mapped_column(String(16))
    host_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("hosts.id"), index=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    amount: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        PrimaryKeyConstraint("consumer_id", "resource_class"),
        CheckConstraint(_in("resource_class", RESOURCE_CLASSES), name="resource_class"),
        CheckConstraint("amount > 0", name="amount"),
    )


class OrgQuota(Base):
    """An organization's quota row, created by its first claim (or an operator override).
    `max_*` NULL means "the deployment default" (Settings.quota_*), so changing the default
    reaches every organization without an override. `*_used` are the sums of the
    organization's allocations, kept in the claim's and release's transaction; claims lock
    this row first, which is what makes the quota hold under concurrency."""

    __tablename__ = "org_quotas"

    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    max_vcpus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_gpus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    vcpus_used: Mapped[int] = mapped_column(Integer)
    gpus_used: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("vcpus_used >= 0 AND gpus_used >= 0", name="used"),
        CheckConstraint("(max_vcpus IS NULL OR max_vcpus >= 0) AND (max_gpus IS NULL OR max_gpus >= 0)", name="max"),
    )
