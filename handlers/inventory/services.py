"""Inventory & Placement use cases behind the HTTP operations: catalogue reads for every
caller, and the operator's fleet management (hosts, inventories, traits, states, quotas,
capacity report).

Functions take the unit of work's Session and clock (`ctx.session`, `ctx.now`) and return
table rows or the small views below; operations.py turns them into API models. Nothing
here commits, and operator actions emit no events (the contract has none).

Every write that changes what placement would decide about a host — inventory, traits,
state — bumps the host's generation with a compare-and-swap, exactly like a claim, so an
operator's write and a concurrent claim never both succeed on the same view of the host.
An operator who passes `expected_generation` gets 409 `concurrent-update` when the host
changed since they read it (OpenStack Placement's resource provider generation).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, case, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from handlers.inventory import placement, quotas
from handlers.inventory.placement import InventoryFields
from handlers.inventory.tables import (
    HOST_STATES,
    IMAGE_STATUSES,
    RESOURCE_CLASSES,
    Allocation,
    Host,
    HostTrait,
    Image,
    InstanceType,
    InstanceTypeRegion,
    Inventory,
    Region,
)
from hangar.pagination import Page, paginate
from hangar.problems import Conflict, NotFound, Unprocessable

HOSTS = placement.HOSTS
INVENTORIES = placement.INVENTORIES
HOST_TRAITS = placement.HOST_TRAITS
INVENTORY_FIELDS = tuple(f.name for f in fields(InventoryFields))
_RETRIES = 5  # read-modify-write rounds when the caller gave no expected generation


# --- views -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionAvailability:
    region: str
    available: bool  # at least one active host could place one right now


@dataclass(frozen=True)
class InstanceTypeView:
    instance_type: InstanceType
    regions: list[RegionAvailability]  # where it is offered, in slug order


@dataclass(frozen=True)
class HostView:
    host: Host
    inventories: list[Inventory]  # in RESOURCE_CLASSES order; `.free` = capacity − used
    traits: list[str]
    consumers: int  # instances holding allocations on the host


@dataclass(frozen=True)
class ResourceCapacity:
    # total … free and utilisation are over active and draining hosts (a down host is out of
    # the fleet); `available` over active hosts only.
    total: int
    reserved: int
    capacity: int  # Σ floor((total − reserved) × allocation_ratio)
    used: int
    free: int  # capacity − used
    available: int  # free on active hosts: what placement can use now
    utilisation: float  # used ÷ capacity, 0..1 (0 with no capacity)


@dataclass(frozen=True)
class RegionCapacity:
    region: str
    hosts: dict[str, int]  # state → count, every state present
    resources: dict[str, ResourceCapacity]  # every resource class present


# --- catalogue ---------------------------------------------------------------------------------


def list_regions(session: Session) -> list[Region]:
    return list(session.scalars(select(Region).order_by(Region.slug)))


def get_region(session: Session, slug: str) -> Region:
    region = session.get(Region, slug)
    if region is None:
        raise NotFound(f"There is no region {slug!r}.", slug="region-not-found")
    return region


def list_images(session: Session, *, status: str | None = None) -> list[Image]:
    stmt = select(Image).order_by(Image.slug)
    if status is not None:
        if status not in IMAGE_STATUSES:
            raise _invalid("query.status", f"must be one of {', '.join(IMAGE_STATUSES)}")
        stmt = stmt.where(Image.status == status)
    return list(session.scalars(stmt))


def get_image(session: Session, slug: str) -> Image:
    image = session.get(Image, slug)
    if image is None:
        raise NotFound(f"There is no image {slug!r}.", slug="image-not-found")
    return image


def list_instance_types(session: Session, *, region: str | None = None) -> list[InstanceTypeView]:
    """Every instance type (offered in `region`, if given) with, per region it is offered
    in, whether an active host could place one now. One indexed LIMIT 1 placement query per
    (type, region) pair — a few dozen — never a scan of the fleet per type."""
    stmt = select(InstanceType).order_by(InstanceType.slug)
    if region is not None:
        stmt = stmt.where(
            InstanceType.slug.in_(select(InstanceTypeRegion.instance_type).where(InstanceTypeRegion.region == region))
        )
    kinds = list(session.scalars(stmt))
    offered: dict[str, list[str]] = {}
    for kind_slug, region_slug in session.execute(
        select(InstanceTypeRegion.instance_type, InstanceTypeRegion.region).order_by(
            InstanceTypeRegion.instance_type, InstanceTypeRegion.region
        )
    ):
        offered.setdefault(kind_slug, []).append(region_slug)
    return [InstanceTypeView(kind, _availability(session, kind, offered.get(kind.slug, []))) for kind in kinds]


def get_instance_type(session: Session, slug: str) -> InstanceTypeView:
    kind = session.get(InstanceType, slug)
    if kind is None:
        raise NotFound(f"There is no instance type {slug!r}.", slug="instance-type-not-found")
    regions = list(
        session.scalars(
            select(InstanceTypeRegion.region)
            .where(InstanceTypeRegion.instance_type == slug)
            .order_by(InstanceTypeRegion.region)
        )
    )
    return InstanceTypeView(kind, _availability(session, kind, regions))


def _availability(session: Session, kind: InstanceType, regions: Iterable[str]) -> list[RegionAvailability]:
    result = []
    for region in regions:
        request = placement.Request.of(
            region,
            vcpus=kind.vcpus,
            memory_mb=kind.memory_mb,
            disk_gb=kind.disk_gb,
            gpus=kind.gpus,
            required_traits=kind.required_traits,
        )
        result.append(RegionAvailability(region, bool(placement.candidates(session, request, limit=1))))
    return result


# --- hosts -------------------------------------------------------------------------------------


def create_host(
    session: Session,
    *,
    name: str,
    region: str,
    zone: str,
    inventories: Mapping[str, InventoryFields],
    traits: Iterable[str] = (),
    state: str = "active",
    now: datetime,
) -> HostView:
    """A new host with inventories for some or all resource classes. 409 host-name-taken;
    422 unknown-region / unknown-zone / invalid-inventory / invalid-host-state."""
    if state not in HOST_STATES:
        raise _invalid("body.state", f"must be one of {', '.join(HOST_STATES)}", slug="invalid-host-state")
    the_region = session.get(Region, region)
    if the_region is None:
        raise Unprocessable(
            f"There is no region {region!r}.",
            slug="unknown-region",
            errors=[{"location": "body.region", "message": "unknown region"}],
        )
    if zone not in the_region.zones:
        raise Unprocessable(
            f"Zone {zone!r} is not in {region} (zones: {', '.join(the_region.zones)}).",
            slug="unknown-zone",
            errors=[{"location": "body.zone", "message": f"must be one of {', '.join(the_region.zones)}"}],
        )
    resolved: dict[str, InventoryFields] = {}
    errors: list[dict[str, str]] = []
    for rc, given in inventories.items():
        if rc not in RESOURCE_CLASSES:
            errors.append({"location": f"body.inventories.{rc}", "message": "unknown resource class"})
            continue
        resolved[rc] = given.resolved(rc)
        errors += [
            {"location": f"body.inventories.{rc}.{f}", "message": m}
            for f, m in placement.inventory_errors(resolved[rc])
        ]
    if errors:
        raise Unprocessable("The inventories are not valid.", slug="invalid-inventory", errors=errors)
    if session.scalar(select(Host.id).where(Host.name == name)) is not None:
        raise Conflict(f"A host named {name!r} exists already.", slug="host-name-taken")
    host_id = uuid.uuid4()
    host_row, inventory_rows, trait_rows = placement.new_host_rows(
        host_id=host_id, name=name, region=region, zone=zone, traits=traits, inventories=resolved, now=now, state=state
    )
    try:
        session.execute(insert(HOSTS), [host_row])
    except IntegrityError as exc:  # a concurrent create with the same name won
        raise Conflict(f"A host named {name!r} exists already.", slug="host-name-taken") from exc
    if inventory_rows:
        session.execute(insert(INVENTORIES), inventory_rows)
    if trait_rows:
        session.execute(insert(HOST_TRAITS), trait_rows)
    return get_host(session, host_id)


def get_host(session: Session, host_id: uuid.UUID) -> HostView:
    host = session.scalars(select(Host).where(Host.id == host_id).execution_options(populate_existing=True)).first()
    if host is None:
        raise _host_not_found(host_id)
    return _views(session, [host])[0]


def list_hosts(
    session: Session,
    *,
    region: str | None = None,
    state: str | None = None,
    limit: int,
    cursor: str | None,
) -> Page[HostView]:
    """Hosts by name, keyset-paged, optionally of one region and/or state."""
    stmt = select(Host).execution_options(populate_existing=True)
    if region is not None:
        stmt = stmt.where(Host.region == region)
    if state is not None:
        if state not in HOST_STATES:
            raise _invalid("query.state", f"must be one of {', '.join(HOST_STATES)}")
        stmt = stmt.where(Host.state == state)
    page = paginate(session, stmt, (Host.name, Host.id), limit=limit, cursor=cursor)
    return Page(_views(session, page.items), page.next_cursor)


def _views(session: Session, hosts: list[Host]) -> list[HostView]:
    ids = [h.id for h in hosts]
    if not ids:
        return []
    order = {rc: i for i, rc in enumerate(RESOURCE_CLASSES)}
    stock: dict[uuid.UUID, list[Inventory]] = {i: [] for i in ids}
    for inv in session.scalars(
        select(Inventory).where(Inventory.host_id.in_(ids)).execution_options(populate_existing=True)
    ):
        stock[inv.host_id].append(inv)
    traits: dict[uuid.UUID, list[str]] = {i: [] for i in ids}
    for host_id, trait in session.execute(
        select(HostTrait.host_id, HostTrait.trait).where(HostTrait.host_id.in_(ids)).order_by(HostTrait.trait)
    ):
        traits[host_id].append(trait)
    consumers: dict[uuid.UUID, int] = {
        host_id: count
        for host_id, count in session.execute(
            select(Allocation.host_id, func.count(func.distinct(Allocation.consumer_id)))
            .where(Allocation.host_id.in_(ids))
            .group_by(Allocation.host_id)
        )
    }
    return [
        HostView(
            host=h,
            inventories=sorted(stock[h.id], key=lambda inv: order[inv.resource_class]),
            traits=traits[h.id],
            consumers=consumers.get(h.id, 0),
        )
        for h in hosts
    ]


def update_inventory(
    session: Session,
    host_id: uuid.UUID,
    resource_class: str,
    fields: Mapping[str, Any],
    *,
    expected_generation: int | None,
    now: datetime,
) -> HostView:
    """Change some fields of one inventory (create it if the host has none of that class:
    `total` is then required). 409 concurrent-update when `expected_generation` is stale;
    409 inventory-in-use when the new capacity is below what is allocated; 422
    invalid-inventory; bumps the generation."""
    if resource_class not in RESOURCE_CLASSES:
        raise NotFound(
            f"There is no resource class {resource_class!r} (one of {', '.join(RESOURCE_CLASSES)}).",
            slug="resource-class-not-found",
        )
    unknown = sorted(set(fields) - set(INVENTORY_FIELDS))
    if unknown:
        raise Unprocessable(
            "Unknown inventory fields.",
            slug="invalid-inventory",
            errors=[{"location": f"body.{name}", "message": "unknown field"} for name in unknown],
        )

    def change(stock: dict[str, InventoryFields], used: Mapping[str, int]) -> None:
        current = stock.get(resource_class)
        if current is None:
            if fields.get("total") is None:
                raise _invalid("body.total", "is required: the host has no inventory of this class yet")
            current = InventoryFields(total=int(fields["total"])).resolved(resource_class)
        given = {name: value for name, value in fields.items() if value is not None}
        new = replace(current, **given)
        errors = placement.inventory_errors(new)
        if errors:
            raise Unprocessable(
                "The inventory is not valid.",
                slug="invalid-inventory",
                errors=[{"location": f"body.{f}", "message": m} for f, m in errors],
            )
        in_use = used.get(resource_class, 0)
        if new.capacity < in_use:
            raise Conflict(
                f"{resource_class} capacity would be {new.capacity}, below the {in_use} allocated on this host; "
                "drain it and release instances first.",
                slug="inventory-in-use",
            )
        stock[resource_class] = new

    return _rewrite_host(session, host_id, change, expected_generation=expected_generation, now=now)


def set_traits(
    session: Session,
    host_id: uuid.UUID,
    traits: Iterable[str],
    *,
    expected_generation: int | None,
    now: datetime,
) -> HostView:
    """Replace the host's traits (existing allocations stay); bumps the generation."""
    wanted = sorted(set(traits))

    def write() -> None:
        session.execute(HOST_TRAITS.delete().where(HOST_TRAITS.c.host_id == host_id))
        if wanted:
            session.execute(insert(HOST_TRAITS), [{"host_id": host_id, "trait": t} for t in wanted])

    return _rewrite_host(session, host_id, None, expected_generation=expected_generation, now=now, after=write)


Change = Callable[[dict[str, InventoryFields], Mapping[str, int]], None]


def _rewrite_host(
    session: Session,
    host_id: uuid.UUID,
    change: Change | None,
    *,
    expected_generation: int | None,
    now: datetime,
    after: Callable[[], None] | None = None,
) -> HostView:
    """Read the host's inventories, let `change` edit them (resource class →
    InventoryFields, given the used amounts), then compare-and-swap the generation with the
    new summary and write the changed inventories back; `after` writes anything else under
    the same swap. Retries a lost swap unless the caller named a generation."""
    h, inv = HOSTS.c, INVENTORIES.c
    for _ in range(_RETRIES):
        seen = session.scalar(select(h.generation).where(h.id == host_id))
        if seen is None:
            raise _host_not_found(host_id)
        if expected_generation is not None and seen != expected_generation:
            raise _stale(host_id, expected_generation, seen)
        rows = session.execute(select(INVENTORIES).where(inv.host_id == host_id)).all()
        stock = {
            row.resource_class: InventoryFields(
                total=row.total,
                reserved=row.reserved,
                min_unit=row.min_unit,
                max_unit=row.max_unit,
                step_size=row.step_size,
                allocation_ratio=row.allocation_ratio,
            )
            for row in rows
        }
        used = {row.resource_class: row.used for row in rows}
        before = dict(stock)
        if change is not None:
            change(stock, used)
        summary = placement.summary({rc: (f.capacity, used.get(rc, 0)) for rc, f in stock.items()})
        swapped = cast(
            CursorResult[Any],
            session.execute(
                update(HOSTS)
                .where(h.id == host_id, h.generation == seen)
                .values(generation=h.generation + 1, updated_at=now, **summary)
            ),
        )
        if swapped.rowcount != 1:
            if expected_generation is not None:
                raise _stale(host_id, expected_generation, None)
            continue
        for rc, f in stock.items():
            if before.get(rc) != f:
                _write_inventory(session, host_id, rc, f, exists=rc in before)
        if after is not None:
            after()
        return get_host(session, host_id)
    raise Conflict(f"Host {host_id} kept changing; try again.", slug="concurrent-update")


def _write_inventory(session: Session, host_id: uuid.UUID, rc: str, f: InventoryFields, *, exists: bool) -> None:
    inv = INVENTORIES.c
    values = {
        "total": f.total,
        "reserved": f.reserved,
        "min_unit": f.min_unit,
        "max_unit": f.max_unit,
        "step_size": f.step_size,
        "allocation_ratio": f.allocation_ratio,
        "capacity": f.capacity,
    }
    if exists:
        session.execute(update(INVENTORIES).where(inv.host_id == host_id, inv.resource_class == rc).values(**values))
    else:
        session.execute(insert(INVENTORIES).values(host_id=host_id, resource_class=rc, used=0, **values))


def drain(session: Session, host_id: uuid.UUID, *, now: datetime) -> HostView:
    """No new placements; what runs there stays."""
    return _set_state(session, host_id, "draining", now)


def mark_down(session: Session, host_id: uuid.UUID, *, now: datetime) -> HostView:
    """The host is unreachable: no placements. Its allocations stay until provisioning
    releases them (it decides what happens to the instances)."""
    return _set_state(session, host_id, "down", now)


def activate(session: Session, host_id: uuid.UUID, *, now: datetime) -> HostView:
    return _set_state(session, host_id, "active", now)


def _set_state(session: Session, host_id: uuid.UUID, state: str, now: datetime) -> HostView:
    # Bumps the generation, so a claim that read the host as active loses its swap.
    h = HOSTS.c
    session.execute(
        update(HOSTS)
        .where(h.id == host_id, h.state != state)
        .values(state=state, generation=h.generation + 1, updated_at=now)
    )
    return get_host(session, host_id)  # 404 if it does not exist; unchanged if already there


# --- capacity ----------------------------------------------------------------------------------


def capacity_report(session: Session, region: str | None = None) -> list[RegionCapacity]:
    """Per region (all, or one: 404 region-not-found) and resource class: total, reserved,
    capacity, used, free over active and draining hosts, available (free on active hosts) and
    utilisation; host counts by state (down ones included). Two GROUP BY queries."""
    regions = [get_region(session, region).slug] if region is not None else [r.slug for r in list_regions(session)]
    h, inv = HOSTS.c, INVENTORIES.c
    sums: dict[tuple[str, str], tuple[int, ...]] = {}
    stmt = (
        select(
            h.region,
            inv.resource_class,
            # A host that is down is out of the fleet: the totals are over active and draining
            # hosts (the contract's CapacityReport), `available` over active ones only.
            func.sum(case((h.state != "down", inv.total), else_=0)),
            func.sum(case((h.state != "down", inv.reserved), else_=0)),
            func.sum(case((h.state != "down", inv.capacity), else_=0)),
            func.sum(case((h.state != "down", inv.used), else_=0)),
            func.sum(case((h.state == "active", inv.capacity - inv.used), else_=0)),
        )
        .join(HOSTS, h.id == inv.host_id)
        .group_by(h.region, inv.resource_class)
    )
    counts_stmt = select(h.region, h.state, func.count()).group_by(h.region, h.state)
    if region is not None:
        stmt = stmt.where(h.region == region)
        counts_stmt = counts_stmt.where(h.region == region)
    for row in session.execute(stmt):
        sums[(row[0], row[1])] = tuple(int(v or 0) for v in row[2:])
    counts: dict[tuple[str, str], int] = {(r, s): n for r, s, n in session.execute(counts_stmt)}
    report = []
    for slug in regions:
        resources = {}
        for rc in RESOURCE_CLASSES:
            total, reserved, cap, used, available = sums.get((slug, rc), (0, 0, 0, 0, 0))
            resources[rc] = ResourceCapacity(
                total=total,
                reserved=reserved,
                capacity=cap,
                used=used,
                free=cap - used,
                available=available,
                utilisation=used / cap if cap else 0.0,
            )
        report.append(
            RegionCapacity(
                region=slug,
                hosts={state: counts.get((slug, state), 0) for state in HOST_STATES},
                resources=resources,
            )
        )
    return report


# --- quotas ------------------------------------------------------------------------------------


def get_quota(session: Session, organization_id: uuid.UUID, *, default_vcpus: int, default_gpus: int) -> quotas.Quota:
    return quotas.get(session, organization_id, quotas.Limits(default_vcpus, default_gpus))


def set_quota(
    session: Session,
    organization_id: uuid.UUID,
    *,
    max_vcpus: int | None,
    max_gpus: int | None,
    default_vcpus: int,
    default_gpus: int,
    now: datetime,
) -> quotas.Quota:
    """Override the organization's limits (None: back to the default). Lowering a limit
    below current usage is allowed; it only refuses new claims."""
    errors = [
        {"location": f"body.{name}", "message": "must be at least 0"}
        for name, value in (("max_vcpus", max_vcpus), ("max_gpus", max_gpus))
        if value is not None and value < 0
    ]
    if errors:
        raise Unprocessable("Quota limits must be at least 0.", slug="invalid-quota", errors=errors)
    return quotas.set_limits(
        session,
        organization_id,
        max_vcpus=max_vcpus,
        max_gpus=max_gpus,
        now=now,
        defaults=quotas.Limits(default_vcpus, default_gpus),
    )


# --- problems ----------------------------------------------------------------------------------


def _host_not_found(host_id: uuid.UUID) -> NotFound:
    return NotFound(f"There is no host {host_id}.", slug="host-not-found")


def _stale(host_id: uuid.UUID, expected: int, seen: int | None) -> Conflict:
    now_at = f" (it is at {seen})" if seen is not None else ""
    return Conflict(
        f"Host {host_id} changed since generation {expected}{now_at}; read it again and retry.",
        slug="concurrent-update",
    )


def _invalid(location: str, message: str, *, slug: str = "validation-error") -> Unprocessable:
    return Unprocessable(
        f"{location.split('.', 1)[-1]} {message}.", slug=slug, errors=[{"location": location, "message": message}]
    )
