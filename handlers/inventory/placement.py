"""Placement: choose a host for a request and claim its capacity without ever overcommitting.

Modelled on OpenStack Placement + the Nova scheduler, collapsed into one indexed query:

1. **Filter and order in SQL, over the `hosts` table only.** Every host row carries its
   placement summary (free capacity per resource class, VCPU load, has_gpu; see tables.py),
   kept in step with `inventories` and `allocations` in the same transaction. One query
   filters by region, state = active, free capacity of every requested class, required
   traits (EXISTS on host_traits' primary key), excluded hosts, and min_unit / max_unit /
   step_size (a NOT EXISTS over the host's inventory rows), and orders by the weigher's key
   so the database walks `ix_hosts_spread` or `ix_hosts_pack` in order and stops after
   `CANDIDATES` rows. Nothing is loaded for hosts that are not candidates.
2. **Weigh.** GPU requests pack: fewest free GPUs that still fit first, keeping whole GPU
   hosts free for 8-GPU types. CPU requests spread: least VCPU load (= most free vCPU
   fraction) first, and CPU-only hosts before GPU hosts, so GPU hosts take CPU work only when
   no CPU host fits. `weigh_key` is the order in Python; the SQL ORDER BY is the same key.
3. **Claim with compare-and-swap.** Pick at random among the best few candidates (Nova's
   host_subset_size: concurrent schedulers rarely pick the same host), then
   `UPDATE hosts SET generation = generation + 1, <free> = <free> - n … WHERE id = :id AND
   generation = :seen AND state = 'active' AND <free> >= n`. One row: the host is ours and
   unchanged since we read it, so the filter's verdict still holds; write inventories.used
   and the allocation rows. Zero rows: someone else wrote the host; try the next candidate,
   then re-query, at most `MAX_ATTEMPTS` times. On PostgreSQL the UPDATE waits for a
   concurrent writer of the row and then re-checks the WHERE clause against the committed
   row (READ COMMITTED), which is what makes the swap atomic across processes; each swap
   runs in a savepoint so a lost one does not keep the row locked (see `take`). On SQLite
   writers are serialised by the database lock.

The CHECK constraints on inventories and hosts (used ≤ capacity, free ≥ 0) are a second
line: even a bug here cannot store an overcommitted inventory.
"""

from __future__ import annotations

import functools
import math
import random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    CursorResult,
    Float,
    Integer,
    Select,
    String,
    Table,
    Uuid,
    and_,
    bindparam,
    case,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from handlers.inventory.tables import RESOURCE_CLASSES, Allocation, Host, HostTrait, Inventory

HOSTS = cast(Table, Host.__table__)
INVENTORIES = cast(Table, Inventory.__table__)
ALLOCATIONS = cast(Table, Allocation.__table__)
HOST_TRAITS = cast(Table, HostTrait.__table__)

# Nova's initial allocation ratios: CPU is overcommitted 4:1, nothing else.
DEFAULT_ALLOCATION_RATIOS: dict[str, float] = {"VCPU": 4.0, "MEMORY_MB": 1.0, "DISK_GB": 1.0, "GPU": 1.0}
FREE_COLUMNS: dict[str, str] = {
    "VCPU": "vcpu_free",
    "MEMORY_MB": "memory_mb_free",
    "DISK_GB": "disk_gb_free",
    "GPU": "gpu_free",
}

# The inventory and host-summary columns are 32-bit integers (the API's bounds keep far below).
MAX_UNITS = 2**31 - 1

CANDIDATES = 8  # rows one query returns: enough for the random subset plus fallbacks
SUBSET = 3  # CPU requests pick at random among this many of the best
MAX_ATTEMPTS = 12  # compare-and-swap attempts per claim before giving up


class NoCapacity(Exception):  # noqa: N818 - the contract's name (docs/compute.md)
    """Nothing fits this request right now. Not a Problem: provisioning turns it into a
    failed instance. `reason`: "no-valid-host", "quota-exceeded", "unknown-instance-type"
    or, for the subclass, "contention"."""

    def __init__(self, message: str, *, reason: str = "no-valid-host") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class ConcurrentClaims(NoCapacity):
    """Every compare-and-swap lost to another writer, `MAX_ATTEMPTS` times. Capacity may
    remain: a later attempt can succeed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="contention")


# --- capacity maths (pure) -----------------------------------------------------------------


def capacity(total: int, reserved: int, allocation_ratio: float) -> int:
    """floor((total − reserved) × ratio), in decimal so 0.29 × 100 is 29, not 28."""
    return math.floor(Decimal(total - reserved) * Decimal(repr(float(allocation_ratio))))


def refusal(amount: int, *, min_unit: int, max_unit: int, step_size: int, free: int) -> str | None:
    """Why a claim of `amount` against an inventory is refused, or None if it fits."""
    if amount < min_unit:
        return f"{amount} is below min_unit {min_unit}"
    if amount > max_unit:
        return f"{amount} is above max_unit {max_unit}"
    if amount % step_size:
        return f"{amount} is not a multiple of step_size {step_size}"
    if amount > free:
        return f"{amount} is more than the {free} free"
    return None


@dataclass(frozen=True)
class InventoryFields:
    """An inventory as an operator gives it; `None` means the default (max_unit: total,
    allocation_ratio: the class's default ratio)."""

    total: int
    reserved: int = 0
    min_unit: int = 1
    max_unit: int | None = None
    step_size: int = 1
    allocation_ratio: float | None = None

    def resolved(self, resource_class: str) -> InventoryFields:
        return replace(
            self,
            max_unit=self.max_unit if self.max_unit is not None else max(self.total, 1),
            allocation_ratio=(
                self.allocation_ratio
                if self.allocation_ratio is not None
                else DEFAULT_ALLOCATION_RATIOS[resource_class]
            ),
        )

    @property
    def capacity(self) -> int:
        ratio = self.allocation_ratio if self.allocation_ratio is not None else 1.0
        return capacity(self.total, self.reserved, ratio)


def inventory_errors(fields: InventoryFields) -> list[tuple[str, str]]:
    """(field, message) for every rule a resolved inventory breaks."""
    errors: list[tuple[str, str]] = []
    if fields.total < 0:
        errors.append(("total", "must be at least 0"))
    if fields.reserved < 0:
        errors.append(("reserved", "must be at least 0"))
    elif fields.total >= 0 and fields.reserved > fields.total:
        errors.append(("reserved", f"must not exceed total ({fields.total})"))
    if fields.min_unit < 1:
        errors.append(("min_unit", "must be at least 1"))
    if fields.max_unit is not None and fields.max_unit < fields.min_unit:
        errors.append(("max_unit", f"must be at least min_unit ({fields.min_unit})"))
    if fields.step_size < 1:
        errors.append(("step_size", "must be at least 1"))
    ratio = fields.allocation_ratio
    if ratio is not None and not (ratio > 0 and math.isfinite(ratio)):
        errors.append(("allocation_ratio", "must be a finite number above 0"))
    for name in ("total", "reserved", "min_unit", "max_unit", "step_size"):
        value = getattr(fields, name)
        if value is not None and value > MAX_UNITS:
            errors.append((name, f"must be at most {MAX_UNITS}"))
    if not errors and ratio is not None and capacity(fields.total, fields.reserved, ratio) > MAX_UNITS:
        errors.append(("allocation_ratio", f"makes the capacity exceed {MAX_UNITS}"))
    return errors


def summary(stock: Mapping[str, tuple[int, int]]) -> dict[str, Any]:
    """The host columns placement reads, from the host's inventories as
    {resource class: (capacity, used)}. A class the host has no inventory of is free 0, so
    any positive request of it filters the host out."""
    values: dict[str, Any] = {}
    for rc, column in FREE_COLUMNS.items():
        cap, used = stock.get(rc, (0, 0))
        values[column] = cap - used
    vcpu_capacity, vcpu_used = stock.get("VCPU", (0, 0))
    values["vcpu_capacity"] = vcpu_capacity
    values["vcpu_load"] = vcpu_used / vcpu_capacity if vcpu_capacity > 0 else 1.0
    values["has_gpu"] = stock.get("GPU", (0, 0))[0] > 0
    return values


def new_host_rows(
    *,
    host_id: uuid.UUID,
    name: str,
    region: str,
    zone: str,
    traits: Iterable[str],
    inventories: Mapping[str, InventoryFields],
    now: datetime,
    state: str = "active",
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows for a new host, its inventories and traits (inventories already validated)."""
    inventory_rows: list[dict[str, Any]] = []
    stock: dict[str, tuple[int, int]] = {}
    for rc, given in sorted(inventories.items()):
        fields = given.resolved(rc)
        cap = fields.capacity
        stock[rc] = (cap, 0)
        inventory_rows.append(
            {
                "host_id": host_id,
                "resource_class": rc,
                "total": fields.total,
                "reserved": fields.reserved,
                "min_unit": fields.min_unit,
                "max_unit": fields.max_unit,
                "step_size": fields.step_size,
                "allocation_ratio": fields.allocation_ratio,
                "capacity": cap,
                "used": 0,
            }
        )
    host_row = {
        "id": host_id,
        "name": name,
        "region": region,
        "zone": zone,
        "state": state,
        "generation": 0,
        "created_at": now,
        "updated_at": now,
        **summary(stock),
    }
    trait_rows = [{"host_id": host_id, "trait": trait} for trait in sorted(set(traits))]
    return host_row, inventory_rows, trait_rows


# --- the request, the candidates, the weigher (pure) ---------------------------------------


@dataclass(frozen=True)
class Request:
    region: str
    amounts: Mapping[str, int]  # resource class → amount; only classes asked for (> 0)
    required_traits: frozenset[str] = frozenset()
    exclude_hosts: frozenset[uuid.UUID] = frozenset()

    @classmethod
    def of(
        cls,
        region: str,
        *,
        vcpus: int,
        memory_mb: int,
        disk_gb: int,
        gpus: int,
        required_traits: Iterable[str] = (),
        exclude_hosts: Iterable[uuid.UUID] = (),
    ) -> Request:
        asked = {"VCPU": vcpus, "MEMORY_MB": memory_mb, "DISK_GB": disk_gb, "GPU": gpus}
        if any(amount < 0 for amount in asked.values()):
            raise ValueError(f"negative amount in {asked}")
        return cls(
            region=region,
            amounts={rc: amount for rc, amount in asked.items() if amount > 0},
            required_traits=frozenset(required_traits),
            exclude_hosts=frozenset(exclude_hosts),
        )

    @property
    def packs(self) -> bool:
        """GPU requests pack; everything else spreads."""
        return self.amounts.get("GPU", 0) > 0

    def resources(self) -> dict[str, int]:
        """Every resource class with its amount, 0 for those not asked for."""
        return {rc: self.amounts.get(rc, 0) for rc in RESOURCE_CLASSES}


@dataclass(frozen=True)
class Candidate:
    id: uuid.UUID
    name: str
    region: str
    zone: str
    generation: int
    has_gpu: bool
    gpu_free: int
    vcpu_load: float


def weigh_key(request: Request, candidate: Candidate) -> tuple[Any, ...]:
    """Smaller is better. Pack GPUs (fewest free GPUs first), spread CPU (least VCPU load
    first) with CPU-only hosts ahead of GPU hosts."""
    if request.packs:
        return (candidate.gpu_free, candidate.vcpu_load)
    return (candidate.has_gpu, candidate.vcpu_load)


def try_order(
    candidates: Sequence[Candidate], request: Request, rng: random.Random, subset: int = SUBSET
) -> list[Candidate]:
    """The order to try the candidates in. GPU requests shuffle only among the hosts tied
    for the fewest free GPUs (a random pick among the top few would break whole hosts);
    CPU requests shuffle the best `subset` and never try a GPU host while a CPU host is a
    candidate."""
    ranked = sorted(candidates, key=lambda c: weigh_key(request, c))
    if not ranked:
        return []
    if request.packs:
        best = ranked[0].gpu_free
        tied = [c for c in ranked if c.gpu_free == best]
        rng.shuffle(tied)
        return tied + [c for c in ranked if c.gpu_free != best]
    pool = [c for c in ranked if not c.has_gpu] or ranked
    head = pool[:subset]
    rng.shuffle(head)
    return head + pool[subset:]


# --- SQL ----------------------------------------------------------------------------------
#
# Every statement on the claim path is built once per shape (which classes are asked for,
# how many traits, whether hosts are excluded) with bind parameters, and cached: building a
# SQLAlchemy expression costs more Python time than SQLite takes to run it.


def _amount(rc: str) -> BindParameter[int]:
    return bindparam(f"p_amount_{rc}", type_=Integer)


def _amount_params(amounts: Mapping[str, int]) -> dict[str, int]:
    return {f"p_amount_{rc}": amount for rc, amount in amounts.items()}


@functools.lru_cache(maxsize=256)
def _candidates_statement(classes: tuple[str, ...], traits: int, excluding: bool, packs: bool, limit: int) -> Any:
    h, inv, host_traits = HOSTS.c, INVENTORIES.c, HOST_TRAITS.c
    stmt = select(h.id, h.name, h.region, h.zone, h.generation, h.has_gpu, h.gpu_free, h.vcpu_load).where(
        h.region == bindparam("p_region", type_=String), h.state == "active"
    )
    for rc in classes:
        stmt = stmt.where(h[FREE_COLUMNS[rc]] >= _amount(rc))
    if excluding:
        stmt = stmt.where(h.id.not_in(bindparam("p_exclude", expanding=True, type_=Uuid)))
    # `OFFSET 0` in the correlated subqueries is PostgreSQL's optimisation fence: without it
    # the planner turns them into (anti) joins over the whole inventories table, misjudges
    # how many hosts survive, and sorts every host of the region instead of walking the
    # index and stopping after `limit` rows (5 ms instead of 0.2 ms at 10,000 hosts).
    # SQLite runs them as correlated lookups either way.
    for i in range(traits):
        stmt = stmt.where(
            select(host_traits.host_id)
            .where(host_traits.host_id == h.id, host_traits.trait == bindparam(f"p_trait_{i}", type_=String))
            .offset(0)
            .exists()
        )
    if classes:
        unit_violations = [
            and_(
                inv.resource_class == rc,
                or_(inv.min_unit > _amount(rc), inv.max_unit < _amount(rc), _amount(rc) % inv.step_size != 0),
            )
            for rc in classes
        ]
        stmt = stmt.where(~select(inv.host_id).where(inv.host_id == h.id, or_(*unit_violations)).offset(0).exists())
    # The weigher's key (weigh_key), so the walk follows ix_hosts_pack or ix_hosts_spread.
    order = (h.gpu_free, h.vcpu_load) if packs else (h.has_gpu, h.vcpu_load)
    return stmt.order_by(*order).limit(limit)


def candidates_query(request: Request, limit: int = CANDIDATES) -> tuple[Select[Any], dict[str, Any]]:
    """The filter and the weigher's order as one query over `hosts` (see the module doc),
    and its parameters."""
    traits = sorted(request.required_traits)
    stmt = _candidates_statement(
        tuple(sorted(request.amounts)), len(traits), bool(request.exclude_hosts), request.packs, limit
    )
    params: dict[str, Any] = {"p_region": request.region, **_amount_params(request.amounts)}
    params.update({f"p_trait_{i}": trait for i, trait in enumerate(traits)})
    if request.exclude_hosts:
        params["p_exclude"] = sorted(request.exclude_hosts)
    return stmt, params


def candidates(session: Session, request: Request, limit: int = CANDIDATES) -> list[Candidate]:
    stmt, params = candidates_query(request, limit)
    return [Candidate(*row) for row in session.execute(stmt, params)]


@functools.lru_cache(maxsize=64)
def _shift_statement(classes: tuple[str, ...], sign: int, swap: bool) -> Any:
    """UPDATE hosts moving the amounts out of (sign −1: claim) or back into (+1: release)
    the host's summary and bumping its generation; SET expressions read the old row. With
    `swap`, only if the generation is still `p_generation`, the host active and the
    amounts free (the compare-and-swap)."""
    h = HOSTS.c
    values: dict[str, Any] = {"generation": h.generation + 1, "updated_at": bindparam("p_now")}
    for rc in classes:
        column = FREE_COLUMNS[rc]
        values[column] = h[column] + sign * _amount(rc)
    if "VCPU" in classes:
        used_after = h.vcpu_capacity - h.vcpu_free - sign * _amount("VCPU")
        values["vcpu_load"] = case((h.vcpu_capacity > 0, sql_cast(used_after, Float) / h.vcpu_capacity), else_=1.0)
    stmt = update(HOSTS).where(h.id == bindparam("p_host_id", type_=Uuid)).values(**values)
    if swap:
        stmt = stmt.where(h.generation == bindparam("p_generation", type_=Integer), h.state == "active")
        stmt = stmt.where(*(h[FREE_COLUMNS[rc]] >= _amount(rc) for rc in classes))
    else:
        stmt = stmt.returning(h.name, h.region, h.zone)
    return stmt


@functools.lru_cache(maxsize=64)
def _used_statement(classes: tuple[str, ...], sign: int) -> Any:
    inv = INVENTORIES.c
    delta = case({rc: _amount(rc) for rc in classes}, value=inv.resource_class, else_=0)
    return (
        update(INVENTORIES)
        .where(inv.host_id == bindparam("p_host_id", type_=Uuid), inv.resource_class.in_(classes))
        .values(used=inv.used + sign * delta)
    )


def _move_used(session: Session, host_id: uuid.UUID, amounts: Mapping[str, int], sign: int) -> None:
    stmt = _used_statement(tuple(sorted(amounts)), sign)
    result = cast(CursorResult[Any], session.execute(stmt, {"p_host_id": host_id, **_amount_params(amounts)}))
    if result.rowcount != len(amounts):
        # The summary said the host has these classes; its inventories disagree.
        raise RuntimeError(f"host {host_id}: inventories out of step with the placement summary")


_INSERT_ALLOCATIONS = insert(ALLOCATIONS)


def take(
    session: Session,
    candidate: Candidate,
    request: Request,
    *,
    consumer_id: uuid.UUID,
    organization_id: uuid.UUID,
    now: datetime,
) -> bool:
    """Compare-and-swap the candidate's generation and, if it is still the one we read,
    write the claim. False: another writer got there first (nothing was written)."""
    swap = _shift_statement(tuple(sorted(request.amounts)), -1, True)
    params = {
        "p_host_id": candidate.id,
        "p_generation": candidate.generation,
        "p_now": now,
        **_amount_params(request.amounts),
    }
    if session.get_bind().dialect.name == "postgresql":
        # A swap that waited for a concurrent writer and then found a new generation still
        # holds that row's lock (READ COMMITTED re-checks the row under its lock) until the
        # transaction ends. Trying the next host while holding it can deadlock with a
        # claimant doing the mirror image, so each swap runs in a savepoint whose rollback
        # releases the lock: a claim only ever holds the lock of the host it got.
        savepoint = session.begin_nested()
        swapped = cast(CursorResult[Any], session.execute(swap, params))
        if swapped.rowcount != 1:
            savepoint.rollback()
            return False
        savepoint.commit()
    elif cast(CursorResult[Any], session.execute(swap, params)).rowcount != 1:
        return False  # SQLite: the claim holds the write lock, so only a stale read gets here
    if request.amounts:
        _move_used(session, candidate.id, request.amounts, +1)
        session.execute(
            _INSERT_ALLOCATIONS,
            [
                {
                    "consumer_id": consumer_id,
                    "resource_class": rc,
                    "host_id": candidate.id,
                    "organization_id": organization_id,
                    "amount": amount,
                    "created_at": now,
                }
                for rc, amount in sorted(request.amounts.items())
            ],
        )
    return True


_RNG = random.Random()  # noqa: S311 - spreading load, not security


def place(
    session: Session,
    request: Request,
    *,
    consumer_id: uuid.UUID,
    organization_id: uuid.UUID,
    now: datetime,
    rng: random.Random | None = None,
) -> Candidate:
    """Filter, weigh and claim: the host the claim landed on. Raises NoCapacity when no
    host fits, ConcurrentClaims when every attempt lost a race."""
    rng = rng or _RNG
    attempts = 0
    while attempts < MAX_ATTEMPTS:
        found = candidates(session, request)
        if not found:
            raise NoCapacity(_nothing_fits(request))
        for candidate in try_order(found, request, rng):
            if take(session, candidate, request, consumer_id=consumer_id, organization_id=organization_id, now=now):
                return candidate
            attempts += 1
            if attempts >= MAX_ATTEMPTS:
                break
    raise ConcurrentClaims(f"{MAX_ATTEMPTS} claims on hosts in {request.region} lost to concurrent writers")


def _nothing_fits(request: Request) -> str:
    asked = ", ".join(f"{rc} {amount}" for rc, amount in sorted(request.amounts.items()))
    traits = f" with traits {', '.join(sorted(request.required_traits))}" if request.required_traits else ""
    excluded = f" (excluding {len(request.exclude_hosts)} hosts)" if request.exclude_hosts else ""
    return f"No active host in {request.region} has {asked} free{traits}{excluded}."


# --- release ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Removed:
    consumer_id: uuid.UUID
    host_id: uuid.UUID
    organization_id: uuid.UUID
    amounts: dict[str, int]


_DELETE_ALLOCATIONS = (
    delete(ALLOCATIONS)
    .where(ALLOCATIONS.c.consumer_id == bindparam("p_consumer_id", type_=Uuid))
    .returning(ALLOCATIONS.c.host_id, ALLOCATIONS.c.organization_id, ALLOCATIONS.c.resource_class, ALLOCATIONS.c.amount)
)


def remove_allocations(session: Session, consumer_id: uuid.UUID) -> Removed | None:
    """Delete the consumer's allocation rows; None if it has none (never claimed, or
    released already — also by a concurrent release, which this statement waits for on
    PostgreSQL). The host is not touched yet: call `return_to_host`."""
    rows = session.execute(_DELETE_ALLOCATIONS, {"p_consumer_id": consumer_id}).all()
    if not rows:
        return None
    return Removed(
        consumer_id=consumer_id,
        host_id=rows[0].host_id,
        organization_id=rows[0].organization_id,
        amounts={row.resource_class: row.amount for row in rows},
    )


@dataclass(frozen=True)
class HostRef:
    id: uuid.UUID
    name: str
    region: str
    zone: str


def return_to_host(session: Session, removed: Removed, now: datetime) -> HostRef:
    """Give removed allocations' capacity back to their host (summary, inventories.used,
    generation)."""
    stmt = _shift_statement(tuple(sorted(removed.amounts)), +1, False)
    row = session.execute(stmt, {"p_host_id": removed.host_id, "p_now": now, **_amount_params(removed.amounts)}).one()
    _move_used(session, removed.host_id, removed.amounts, -1)
    return HostRef(removed.host_id, row.name, row.region, row.zone)
