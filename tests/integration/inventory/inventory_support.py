"""Test helpers for Inventory & Placement (a uniquely named module: test modules and the
conftest import it).

The inventory tables are built with `Base.metadata.create_all` on a database of their own
(an SQLite file, or a PostgreSQL schema of its own with --db=postgresql), not by alembic:
the revision that adds them is generated when the context is integrated.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, func, make_url, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

import hangar.outbox
from handlers.inventory import tables
from handlers.inventory.placement import FREE_COLUMNS, InventoryFields
from handlers.inventory.services import create_host
from hangar.db import Base, make_engine

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TABLES = [
    Base.metadata.tables[name]
    for name in (
        hangar.outbox.OutboxEvent.__tablename__,
        tables.Region.__tablename__,
        tables.Image.__tablename__,
        tables.InstanceType.__tablename__,
        tables.InstanceTypeRegion.__tablename__,
        tables.Host.__tablename__,
        tables.HostTrait.__tablename__,
        tables.Inventory.__tablename__,
        tables.Allocation.__tablename__,
        tables.OrgQuota.__tablename__,
    )
]


class UnreachableError(Exception):
    pass


@contextmanager
def fresh_database(pg_url: str | None, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database holding the inventory tables (and the outbox)."""
    if pg_url is None:
        url = f"sqlite:///{tmp_path / 'inventory.db'}"
        engine = make_engine(url)
        Base.metadata.create_all(engine, tables=TABLES)
        engine.dispose()
        yield url
        return
    schema = f"inventory_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        raise UnreachableError(str(exc)) from exc
    url = (
        make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    )
    try:
        engine = make_engine(url)
        Base.metadata.create_all(engine, tables=TABLES)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def add_host(
    session: Session,
    name: str,
    *,
    region: str = "fra1",
    zone: str | None = None,
    vcpu: int = 16,
    memory_mb: int = 65536,
    disk_gb: int = 1000,
    gpu: int = 0,
    traits: Iterable[str] = (),
    vcpu_ratio: float | None = None,
    **vcpu_fields: Any,
) -> uuid.UUID:
    """A host through the operator service (so it is built as production builds it)."""
    inventories = {
        "VCPU": InventoryFields(total=vcpu, allocation_ratio=vcpu_ratio, **vcpu_fields),
        "MEMORY_MB": InventoryFields(total=memory_mb),
        "DISK_GB": InventoryFields(total=disk_gb),
    }
    if gpu:
        inventories["GPU"] = InventoryFields(total=gpu)
    view = create_host(
        session, name=name, region=region, zone=zone or f"{region}-a", inventories=inventories, traits=traits, now=NOW
    )
    return view.host.id


def add_type(
    session: Session,
    slug: str,
    *,
    vcpus: int,
    memory_mb: int = 1024,
    disk_gb: int | None = None,
    gpus: int = 0,
    gpu_model: str | None = None,
    regions: Iterable[str] = ("fra1",),
    price: int = 5,
) -> None:
    session.add(
        tables.InstanceType(
            slug=slug,
            description=slug,
            vcpus=vcpus,
            memory_mb=memory_mb,
            disk_gb=disk_gb if disk_gb is not None else (60 if gpus else 10),  # GPU images need 50 GB
            gpus=gpus,
            gpu_model=gpu_model,
            required_traits=[f"gpu:{gpu_model}"] if gpu_model else [],
            price_per_hour=price,
            currency="USD",
            created_at=NOW,
        )
    )
    session.flush()
    for region in regions:
        session.add(tables.InstanceTypeRegion(instance_type=slug, region=region))
    session.flush()


def check_invariants(session: Session) -> None:
    """Everything denormalised agrees with its source: inventories.used = Σ allocations,
    used ≤ capacity, capacity = floor((total − reserved) × ratio), the host summary =
    capacity − used, and each organization's quota usage = Σ its allocations."""
    from handlers.inventory.placement import capacity, summary

    sums = {
        (host_id, rc): amount
        for host_id, rc, amount in session.execute(
            select(tables.Allocation.host_id, tables.Allocation.resource_class, func.sum(tables.Allocation.amount))
            .group_by(tables.Allocation.host_id, tables.Allocation.resource_class)
            .execution_options(populate_existing=True)
        )
    }
    stock: dict[uuid.UUID, dict[str, tuple[int, int]]] = {}
    for inv in session.scalars(select(tables.Inventory).execution_options(populate_existing=True)):
        assert inv.used == sums.get((inv.host_id, inv.resource_class), 0), (inv.host_id, inv.resource_class)
        assert 0 <= inv.used <= inv.capacity
        assert inv.capacity == capacity(inv.total, inv.reserved, inv.allocation_ratio)
        stock.setdefault(inv.host_id, {})[inv.resource_class] = (inv.capacity, inv.used)
    for host in session.scalars(select(tables.Host).execution_options(populate_existing=True)):
        expected = summary(stock.get(host.id, {}))
        for column in [*FREE_COLUMNS.values(), "vcpu_capacity", "has_gpu"]:
            assert getattr(host, column) == expected[column], (host.name, column)
        assert abs(host.vcpu_load - expected["vcpu_load"]) < 1e-9, host.name
    usage: dict[uuid.UUID, dict[str, int]] = {}
    for org, rc, amount in session.execute(
        select(
            tables.Allocation.organization_id, tables.Allocation.resource_class, func.sum(tables.Allocation.amount)
        ).group_by(tables.Allocation.organization_id, tables.Allocation.resource_class)
    ):
        usage.setdefault(org, {})[rc] = amount
    for quota in session.scalars(select(tables.OrgQuota).execution_options(populate_existing=True)):
        assert quota.vcpus_used == usage.get(quota.organization_id, {}).get("VCPU", 0)
        assert quota.gpus_used == usage.get(quota.organization_id, {}).get("GPU", 0)


def engine_for(url: str) -> Engine:
    return make_engine(url)
