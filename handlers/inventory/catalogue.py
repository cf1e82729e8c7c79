"""The catalogue seed: regions, instance types and images every deployment starts with, and
the hosts a fresh deployment needs to launch anything.

`ensure_catalogue` runs at every start-up, possibly in several processes at once (API
workers, `hangar-worker`), so every write is `INSERT … ON CONFLICT DO NOTHING` on a natural
key: slugs for reference data, and for seeded hosts an id derived from the host's name
(uuid5), so two processes seeding the same host write the same rows and one of them wins
without an error. Existing rows are never updated: an operator's change to a price or a
host survives a restart.

Hosts: driver "local" gets a small fleet (two CPU hosts per region and a GPU host per GPU
model the region offers, sized so a laptop runs a handful of instances), and only when the
database has no host at all, so an operator's own fleet is never topped up. Driver "sim"
gets them only when the caller asks (`seed_hosts=True`, as the platform's start-up does);
bigger simulated fleets come from `hangar.drivers.sim.sim_fleet(...)` through
`load_sim_fleet` (`hangar-admin load-sim-fleet`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from handlers.inventory.placement import InventoryFields, inventory_errors, new_host_rows
from handlers.inventory.tables import (
    RESOURCE_CLASSES,
    Host,
    HostTrait,
    Image,
    InstanceType,
    InstanceTypeRegion,
    Inventory,
    Region,
)

# Seeded host ids are uuid5(HOST_NAMESPACE, name): the same in every process.
HOST_NAMESPACE = uuid.UUID("6f1c3a52-8d0e-4b7a-9a43-2f5d7c1e9b10")

_CHUNK = 1000  # rows per multi-row INSERT when loading a fleet


@dataclass(frozen=True)
class RegionSeed:
    slug: str
    name: str
    country: str
    zones: tuple[str, ...]


@dataclass(frozen=True)
class ImageSeed:
    slug: str
    name: str
    os_family: str
    version: str
    min_disk_gb: int
    gpu_ready: bool
    status: str = "active"


@dataclass(frozen=True)
class TypeSeed:
    slug: str
    description: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    price_per_hour: int  # US cents
    regions: tuple[str, ...]
    gpus: int = 0
    gpu_model: str | None = None
    currency: str = "USD"

    @property
    def required_traits(self) -> list[str]:
        return [f"gpu:{self.gpu_model}"] if self.gpu_model else []


# Three zones per region, like the simulated fleet (hangar.drivers.sim: <region>-a/b/c).
REGIONS: tuple[RegionSeed, ...] = (
    RegionSeed("fra1", "Frankfurt", "DE", ("fra1-a", "fra1-b", "fra1-c")),
    RegionSeed("ams1", "Amsterdam", "NL", ("ams1-a", "ams1-b", "ams1-c")),
    RegionSeed("nyc1", "New York", "US", ("nyc1-a", "nyc1-b", "nyc1-c")),
)
_ALL = tuple(r.slug for r in REGIONS)

GIB = 1024  # MiB per GiB
INSTANCE_TYPES: tuple[TypeSeed, ...] = (
    TypeSeed("cpu-1", "1 vCPU, 2 GiB RAM, 25 GB disk", 1, 2 * GIB, 25, 1, _ALL),
    TypeSeed("cpu-2", "2 vCPUs, 4 GiB RAM, 50 GB disk", 2, 4 * GIB, 50, 3, _ALL),
    TypeSeed("cpu-4", "4 vCPUs, 8 GiB RAM, 80 GB disk", 4, 8 * GIB, 80, 6, _ALL),
    TypeSeed("cpu-8", "8 vCPUs, 16 GiB RAM, 160 GB disk", 8, 16 * GIB, 160, 12, _ALL),
    TypeSeed("mem-4", "4 vCPUs, 32 GiB RAM, 80 GB disk (memory-optimised)", 4, 32 * GIB, 80, 17, _ALL),
    TypeSeed(
        "gpu-a100x1", "1× NVIDIA A100 80GB, 12 vCPUs, 85 GiB RAM", 12, 85 * GIB, 500, 149, ("ams1", "nyc1"), 1, "a100"
    ),
    TypeSeed(
        "gpu-h100x1",
        "1× NVIDIA H100 80GB, 24 vCPUs, 240 GiB RAM",
        24,
        240 * GIB,
        1000,
        249,
        ("fra1", "nyc1"),
        1,
        "h100",
    ),
    TypeSeed(
        "gpu-h100x8",
        "8× NVIDIA H100 80GB, 192 vCPUs, 1920 GiB RAM",
        192,
        1920 * GIB,
        8000,
        1992,
        ("fra1", "nyc1"),
        8,
        "h100",
    ),
)

IMAGES: tuple[ImageSeed, ...] = (
    ImageSeed("ubuntu-24.04", "Ubuntu 24.04 LTS", "ubuntu", "24.04", 10, False),
    ImageSeed("ubuntu-22.04", "Ubuntu 22.04 LTS", "ubuntu", "22.04", 10, False),
    ImageSeed("debian-12", "Debian 12 (bookworm)", "debian", "12", 10, False),
    ImageSeed("rocky-9", "Rocky Linux 9", "rocky", "9", 10, False),
    ImageSeed("ubuntu-24.04-cuda12", "Ubuntu 24.04 LTS with NVIDIA driver and CUDA 12", "ubuntu", "24.04", 30, True),
    ImageSeed("pytorch-2.5-cuda12", "PyTorch 2.5 on Ubuntu 24.04, CUDA 12", "ubuntu", "24.04", 50, True),
)


@dataclass(frozen=True)
class LocalHost:
    """A host of the `local` driver's fleet (the same attributes `load_sim_fleet` reads)."""

    name: str
    region: str
    zone: str
    traits: tuple[str, ...]
    inventories: dict[str, int]


_LOCAL_GPU_SHAPES: dict[str, dict[str, int]] = {
    # Big enough for the largest type of each model (gpu-h100x8; 4× gpu-a100x1).
    "h100": {"VCPU": 192, "MEMORY_MB": 2048 * GIB, "DISK_GB": 8000, "GPU": 8},
    "a100": {"VCPU": 48, "MEMORY_MB": 360 * GIB, "DISK_GB": 2000, "GPU": 4},
}
# Every GPU model a region offers a type of has a host there.
_LOCAL_GPU_MODELS: dict[str, tuple[str, ...]] = {"fra1": ("h100",), "ams1": ("a100",), "nyc1": ("h100", "a100")}


def local_fleet() -> list[LocalHost]:
    """Two small CPU hosts per region and a GPU host per GPU model the region offers: every
    offered type can be launched, and the totals keep it to a handful of instances (the
    local driver runs real processes on this machine)."""
    hosts: list[LocalHost] = []
    for region in REGIONS:
        for i, zone in enumerate(region.zones[:2], start=1):
            hosts.append(
                LocalHost(
                    f"{region.slug}-local-cpu-{i}",
                    region.slug,
                    zone,
                    ("ssd",),
                    {"VCPU": 8, "MEMORY_MB": 32 * GIB, "DISK_GB": 500},
                )
            )
        for model in _LOCAL_GPU_MODELS[region.slug]:
            hosts.append(
                LocalHost(
                    f"{region.slug}-local-{model}-1",
                    region.slug,
                    region.zones[0],
                    (f"gpu:{model}", "nvme"),
                    dict(_LOCAL_GPU_SHAPES[model]),
                )
            )
    return hosts


# --- writing ---------------------------------------------------------------------------------


def insert_ignoring_conflicts(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Multi-row `INSERT … ON CONFLICT DO NOTHING` on SQLite or PostgreSQL."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt: Any = pg_insert(table)
    elif dialect == "sqlite":
        stmt = sqlite_insert(table)
    else:  # pragma: no cover - only the two supported backends
        raise RuntimeError(f"unsupported database {dialect!r}")
    session.execute(stmt.on_conflict_do_nothing(), [dict(row) for row in rows])


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


def ensure_catalogue(session: Session, *, driver: str, now: datetime, seed_hosts: bool | None = None) -> None:
    """Insert whatever of the reference catalogue is missing and, on an empty fleet, the small
    local fleet when `seed_hosts` (default: only for the `local` driver). The platform's
    start-up (background.prepare) seeds it for `sim` too, so a fresh `sim` deployment can
    launch at once; bigger fleets come from `hangar-admin load-sim-fleet`. Idempotent and
    safe to run concurrently; the caller commits."""
    if driver not in ("local", "sim"):
        raise ValueError(f"unknown host driver {driver!r}")
    insert_ignoring_conflicts(
        session,
        _table(Region),
        [
            {"slug": r.slug, "name": r.name, "country": r.country, "zones": list(r.zones), "created_at": now}
            for r in REGIONS
        ],
    )
    insert_ignoring_conflicts(
        session,
        _table(Image),
        [
            {
                "slug": i.slug,
                "name": i.name,
                "os_family": i.os_family,
                "version": i.version,
                "min_disk_gb": i.min_disk_gb,
                "gpu_ready": i.gpu_ready,
                "status": i.status,
                "created_at": now,
            }
            for i in IMAGES
        ],
    )
    insert_ignoring_conflicts(
        session,
        _table(InstanceType),
        [
            {
                "slug": t.slug,
                "description": t.description,
                "vcpus": t.vcpus,
                "memory_mb": t.memory_mb,
                "disk_gb": t.disk_gb,
                "gpus": t.gpus,
                "gpu_model": t.gpu_model,
                "required_traits": t.required_traits,
                "price_per_hour": t.price_per_hour,
                "currency": t.currency,
                "created_at": now,
            }
            for t in INSTANCE_TYPES
        ],
    )
    insert_ignoring_conflicts(
        session,
        _table(InstanceTypeRegion),
        [{"instance_type": t.slug, "region": region} for t in INSTANCE_TYPES for region in t.regions],
    )
    if seed_hosts is None:
        seed_hosts = driver == "local"
    if seed_hosts and not _any_host(session):
        load_sim_fleet(session, local_fleet(), now=now)


def _any_host(session: Session) -> bool:
    return session.scalar(select(Host.id).limit(1)) is not None


class HostDescription(Protocol):
    """What `load_sim_fleet` reads from each host (hangar.drivers.sim.SimHost has it).
    `inventories` maps a resource class to its total, or to an InventoryFields."""

    @property
    def name(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def zone(self) -> str: ...
    @property
    def traits(self) -> Iterable[str]: ...
    @property
    def inventories(self) -> Mapping[str, int | InventoryFields]: ...


def host_id_for(name: str) -> uuid.UUID:
    return uuid.uuid5(HOST_NAMESPACE, name)


def load_sim_fleet(session: Session, hosts: Iterable[HostDescription], *, now: datetime) -> int:
    """Insert the described hosts (active, default allocation ratios unless an
    InventoryFields says otherwise) in multi-row INSERTs; the number newly inserted. A host
    whose name exists already is skipped, so loading the same fleet twice, or from two
    processes, is harmless. Raises ValueError naming the host on an unknown region or zone,
    resource class, or an invalid inventory. The caller commits."""
    zones = {slug: set(z) for slug, z in session.execute(select(Region.slug, Region.zones))}
    inserted = 0
    chunk: list[HostDescription] = []
    for host in hosts:
        chunk.append(host)
        if len(chunk) == _CHUNK:
            inserted += _load_chunk(session, chunk, zones, now)
            chunk = []
    if chunk:
        inserted += _load_chunk(session, chunk, zones, now)
    return inserted


def _fields(host: str, rc: str, given: int | InventoryFields) -> InventoryFields:
    if rc not in RESOURCE_CLASSES:
        raise ValueError(f"host {host}: unknown resource class {rc!r}")
    fields = (given if isinstance(given, InventoryFields) else InventoryFields(total=int(given))).resolved(rc)
    errors = inventory_errors(fields)
    if errors:
        raise ValueError(f"host {host}: {rc} " + "; ".join(f"{f} {m}" for f, m in errors))
    return fields


def _load_chunk(
    session: Session, chunk: Sequence[HostDescription], zones: Mapping[str, set[str]], now: datetime
) -> int:
    hosts: list[dict[str, Any]] = []
    inventories: dict[uuid.UUID, list[dict[str, Any]]] = {}
    traits: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for described in chunk:
        if described.region not in zones:
            raise ValueError(f"host {described.name}: unknown region {described.region!r}")
        if described.zone not in zones[described.region]:
            raise ValueError(f"host {described.name}: zone {described.zone!r} is not in {described.region}")
        host_id = host_id_for(described.name)
        row, inventory_rows, trait_rows = new_host_rows(
            host_id=host_id,
            name=described.name,
            region=described.region,
            zone=described.zone,
            traits=described.traits,
            inventories={rc: _fields(described.name, rc, v) for rc, v in described.inventories.items()},
            now=now,
        )
        hosts.append(row)
        inventories[host_id] = inventory_rows
        traits[host_id] = trait_rows
    ids = list(inventories)
    existing = set(session.scalars(select(Host.id).where(Host.id.in_(ids))))
    insert_ignoring_conflicts(session, _table(Host), [h for h in hosts if h["id"] not in existing])
    # Only hosts that are ours now: a name taken by an operator's host (another id) is skipped.
    ours = set(session.scalars(select(Host.id).where(Host.id.in_(ids))))
    insert_ignoring_conflicts(session, _table(Inventory), [r for i in ids if i in ours for r in inventories[i]])
    insert_ignoring_conflicts(session, _table(HostTrait), [r for i in ids if i in ours for r in traits[i]])
    return len(ours - existing)
