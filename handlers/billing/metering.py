"""Metering: resources accrue per second from the events, a tick charges them exactly once.

Read docs/billing.md ("Metering") and ADR 0011 for the why; the how, in short:

**Edges.** The consumers (consumers.py) turn instance.running / stopped / terminated /
failed and volume.created / resized / deleted into start / stop / end edges of a meter, at
whole seconds (the billing clock's resolution), idempotent per event. The running intervals
are `fold(edges)`: edges in time order, a start opens (unless open or ended), a stop closes,
an end closes for good. Duplicates and any delivery order give the same intervals.

**Charging.** `charge_organizations` charges a group of organizations in the caller's
transaction, under their locks (`lock_orgs`: FOR UPDATE [SKIP LOCKED] on PostgreSQL; on
SQLite the rows' insert takes the database's write lock — every writer of an organization's
meters takes the lock first). For each active meter it computes, per UTC day from the first
day that can have changed, the seconds and units (rate × seconds) the intervals cover up to
the tick's horizon, diffs them against the usage records, and charges the difference with
cumulative rounding: the amount charged to date is always floor(units to date / period),
so nothing is lost across ticks or days. Meters that merely kept running are charged in
SQL, a few statements for the whole group; the rest one by one in Python. A late edge (a
stop that arrives after the tick charged past it) makes a day's target smaller: the
difference is given back, as a new transfer. The usage records, the meters'
`charged_until`, the ledger transfers and the batch counters commit together or not at
all, and every transfer id derives from (organization, batch number): a crash mid-group
leaves nothing, a second worker on the same organization skips it (PostgreSQL) or waits
and finds nothing left to charge (SQLite), so every second is charged exactly once.

**Funding**, per organization and currency, as two ledger batches for the whole group
(`ledger.apply`): the open holds backing what was charged first (each posted for what it
can cover, the rest released); then the free balance, and what even that cannot cover is
charged to platform:uncollected (code usage_uncollected) so the ledger balances and no
wallet passes its limit. Then a fresh rolling hold is placed for the running resources
(billing_hold_seconds of them, as far as the balance goes).

**Thresholds.** After a batch: `billing.balance_low` when the spendable balance (posted +
credit limit) falls below billing_low_balance_threshold, `billing.balance_depleted` when it
cannot fund the next tick of the running resources (or a shortfall was just charged).
balance_low is sent once per crossing, re-armed when it no longer holds; balance_depleted on
the crossing and again at every tick that still finds instances running on it (the stop
provisioning could not start while an instance was mid-action).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Row, Table, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from handlers.billing import holds, published
from handlers.billing.metering_tables import Meter, MeterEdge, MeteringOrg, UsageRecord
from hangar import outbox
from hangar.config import Settings, SettingsHolder
from hangar.db import utcnow

log = logging.getLogger(__name__)

INSTANCE_PERIOD = 3600  # instance rates are per hour
VOLUME_PERIOD = 730 * 3600  # volume rates are per month of 730 hours
_NS = uuid.UUID("5b0e7f3c-8a51-5c1e-b3d2-6f4a9e0c2d17")
_EDGE_ORDER = {"stop": 0, "end": 1, "start": 2}

METERS = cast(Table, Meter.__table__)
EDGES = cast(Table, MeterEdge.__table__)
USAGE = cast(Table, UsageRecord.__table__)
ORGS = cast(Table, MeteringOrg.__table__)

# --- configuration (a consumer registered with register(bus) gets no Settings) --------------

_settings = SettingsHolder()
configure = _settings.configure  # background.prepare records the process's settings
settings = _settings.current


# --- time -----------------------------------------------------------------------------------


def whole_second(moment: datetime) -> datetime:
    """The billing clock: aware UTC, truncated to the second."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime given to metering")
    return moment.astimezone(UTC).replace(microsecond=0)


def parse_time(value: str) -> datetime:
    return whole_second(datetime.fromisoformat(value.replace("Z", "+00:00")))


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def day_split(start: datetime, end: datetime) -> Iterator[tuple[date, int]]:
    """[start, end) cut at UTC midnights: (day, whole seconds) pieces."""
    cursor = start
    while cursor < end:
        next_midnight = _day_start(cursor.date() + timedelta(days=1))
        stop = min(end, next_midnight)
        yield cursor.date(), int((stop - cursor).total_seconds())
        cursor = stop


# --- intervals ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    at: datetime
    kind: str  # start | stop | end
    rate: int = 0


@dataclass(frozen=True)
class Interval:
    start: datetime
    end: datetime | None  # None: still running
    rate: int


def fold(edges: Iterable[Edge]) -> list[Interval]:
    """The running intervals the edges describe, whatever order they arrived in."""
    out: list[Interval] = []
    open_at: datetime | None = None
    open_rate = 0
    ended = False
    for edge in sorted(edges, key=lambda e: (e.at, _EDGE_ORDER[e.kind], e.rate)):
        if edge.kind == "start":
            if not ended and open_at is None:
                open_at, open_rate = edge.at, edge.rate
            continue
        if open_at is not None:
            out.append(Interval(open_at, edge.at, open_rate))
            open_at = None
        if edge.kind == "end":
            ended = True
    if open_at is not None:
        out.append(Interval(open_at, None, open_rate))
    return out


# --- locks ----------------------------------------------------------------------------------


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _insert_ignore(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    if _postgres(session):
        session.execute(pg_insert(table).on_conflict_do_nothing(), rows)
    else:
        session.execute(sqlite_insert(table).on_conflict_do_nothing(), rows)


def lock_orgs(
    session: Session, organization_ids: Iterable[uuid.UUID], *, now: datetime, skip_locked: bool = False
) -> dict[uuid.UUID, Row[Any]]:
    """The organizations' metering rows, locked for this transaction and current (created if
    missing), by organization. PostgreSQL: FOR UPDATE in id order; with skip_locked an
    organization another transaction holds is left out (someone is charging it right now).
    SQLite: the rows' insert is a write, so it holds the database's write lock from here to
    the end of the transaction — no other writer runs meanwhile and every read after it is
    current; the version bump records the locking on the rows either way."""
    ids = sorted(set(organization_ids))
    if not ids:
        return {}
    _insert_ignore(
        session,
        ORGS,
        [
            {
                "organization_id": organization_id,
                "version": 0,
                "seq": 0,
                "uncollected": 0,
                "low": False,
                "depleted": False,
                "updated_at": now,
            }
            for organization_id in ids
        ],
    )
    query = select(ORGS).where(ORGS.c.organization_id.in_(ids)).order_by(ORGS.c.organization_id)
    if _postgres(session):
        rows = session.execute(query.with_for_update(skip_locked=skip_locked)).all()
    else:
        session.execute(update(ORGS).where(ORGS.c.organization_id.in_(ids)).values(version=ORGS.c.version + 1))
        rows = session.execute(query).all()
    return {row.organization_id: row for row in rows}


def lock_org(
    session: Session, organization_id: uuid.UUID, *, now: datetime, skip_locked: bool = False
) -> Row[Any] | None:
    """One organization's row, as lock_orgs locks it (None: another transaction holds it)."""
    return lock_orgs(session, [organization_id], now=now, skip_locked=skip_locked).get(organization_id)


# --- recording edges (the consumers) --------------------------------------------------------


def record_edge(
    session: Session,
    *,
    edge_id: uuid.UUID,
    organization_id: uuid.UUID,
    resource_type: str,
    resource_id: uuid.UUID,
    kind: str,
    at: datetime,
    now: datetime,
    rate: int = 0,
    description: str | None = None,
    label: str | None = None,
    currency: str | None = None,
) -> bool:
    """Add one edge to a resource's meter (creating the meter on its first edge, whichever
    that is). False when this edge was already recorded."""
    if kind not in _EDGE_ORDER:
        raise ValueError(f"unknown edge kind {kind!r}")
    if rate < 0:
        raise ValueError("a rate is never negative")
    at = whole_second(at)
    lock_org(session, organization_id, now=now)
    if session.execute(select(EDGES.c.id).where(EDGES.c.id == edge_id)).first() is not None:
        return False
    meter = session.execute(select(METERS).where(METERS.c.resource_id == resource_id)).first()
    period = INSTANCE_PERIOD if resource_type == "instance" else VOLUME_PERIOD
    if meter is None:
        session.execute(
            insert(METERS).values(
                resource_id=resource_id,
                organization_id=organization_id,
                resource_type=resource_type,
                description=(description or resource_type)[:255],
                label=label,
                currency=currency or published.CURRENCY,
                period_seconds=period,
                running=False,
                rate=0,
                charged_until=None,
                charged_units=0,
                charged_amount=0,
                pending=True,
                dirty_from=at,
                active=True,
                created_at=now,
                updated_at=now,
            )
        )
    else:
        if meter.organization_id != organization_id or meter.resource_type != resource_type:
            raise ValueError(
                f"{resource_type} {resource_id} of organization {organization_id} is metered as "
                f"{meter.resource_type} of {meter.organization_id}"
            )
        values: dict[str, Any] = {
            "pending": True,
            "active": True,
            "dirty_from": min(meter.dirty_from, at) if meter.dirty_from is not None else at,
            "updated_at": now,
        }
        if description:
            values["description"] = description[:255]
        if label:
            values["label"] = label
        if currency:
            values["currency"] = currency
        session.execute(update(METERS).where(METERS.c.resource_id == resource_id).values(**values))
    session.execute(
        insert(EDGES).values(id=edge_id, resource_id=resource_id, at=at, kind=kind, rate=rate, created_at=now)
    )
    return True


def meter_label(session: Session, resource_id: uuid.UUID) -> str | None:
    return session.execute(select(METERS.c.label).where(METERS.c.resource_id == resource_id)).scalar()


def edge_id(event_id: uuid.UUID, kind: str) -> uuid.UUID:
    return uuid.uuid5(_NS, f"edge:{event_id}:{kind}")


# --- charging one meter (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class Day:
    seconds: int
    units: int
    amount: int


@dataclass
class MeterCharge:
    resource_id: uuid.UUID
    delta: int  # amount to charge now (negative: to give back)
    days: dict[date, Day]  # the usage records that change, absolute
    charged_until: datetime
    charged_units: int
    charged_amount: int
    running: bool
    rate: int
    pending: bool
    dirty_from: datetime | None


def charge_meter(meter: Any, edges: Sequence[Edge], stored: dict[date, Day], horizon: datetime) -> MeterCharge:
    """What charging `meter` up to `horizon` means, from its edges (needed when it is pending
    or never charged) and its stored usage days. Pure: no database."""
    period = meter.period_seconds
    horizon = max(horizon, meter.charged_until) if meter.charged_until is not None else horizon
    if not meter.pending and meter.charged_until is not None:
        fast = _steady(meter, stored, horizon, period)
        if fast is not None:
            return fast
    targets: dict[date, list[int]] = defaultdict(lambda: [0, 0])
    if meter.pending or meter.charged_until is None:
        known = [e for e in edges if e.at <= horizon]
        later = [e for e in edges if e.at > horizon]
        intervals = fold(known)
        # Nothing before the earliest new edge (or what was already charged) can change.
        starts = [t for t in (meter.dirty_from, meter.charged_until) if t is not None]
        first = min(starts or [e.at for e in known] or [horizon])
        first_day = first.date()
        floor = _day_start(first_day)
        for interval in intervals:
            end = min(interval.end or horizon, horizon)
            begin = max(interval.start, floor)
            for day, seconds in day_split(begin, end):
                targets[day][0] += seconds
                targets[day][1] += seconds * interval.rate
        running = bool(intervals) and intervals[-1].end is None
        rate = intervals[-1].rate if running else 0
        pending = bool(later)
        dirty_from = min(e.at for e in later) if later else None
    else:
        first_day = meter.charged_until.date()
        for day, value in stored.items():
            if day >= first_day:
                targets[day][0] += value.seconds
                targets[day][1] += value.units
        if meter.running:
            for day, seconds in day_split(meter.charged_until, horizon):
                targets[day][0] += seconds
                targets[day][1] += seconds * meter.rate
        running, rate, pending, dirty_from = meter.running, meter.rate, False, None
    suffix = {d: v for d, v in stored.items() if d >= first_day}
    cumulative = meter.charged_units - sum(v.units for v in suffix.values())
    previous_floor = cumulative // period
    changed: dict[date, Day] = {}
    delta = 0
    for day in sorted(set(targets) | set(suffix)):
        seconds, units = targets.get(day, (0, 0))
        cumulative += units
        amount = cumulative // period - previous_floor
        previous_floor = cumulative // period
        new = Day(seconds, units, amount)
        old = suffix.get(day)
        delta += amount - (old.amount if old else 0)
        if new != old and not (old is None and new == Day(0, 0, 0)):
            changed[day] = new
    return MeterCharge(
        resource_id=meter.resource_id,
        delta=delta,
        days=changed,
        charged_until=horizon,
        charged_units=cumulative,
        charged_amount=meter.charged_amount + delta,
        running=running,
        rate=rate,
        pending=pending,
        dirty_from=dirty_from,
    )


def _steady(meter: Any, stored: dict[date, Day], horizon: datetime, period: int) -> MeterCharge | None:
    """The common case in O(1): nothing new happened to the meter and no midnight passed
    since it was last charged (None otherwise: the general computation handles it)."""
    day = meter.charged_until.date()
    if horizon.date() != day or (meter.running and day not in stored):
        return None
    seconds = int((horizon - meter.charged_until).total_seconds()) if meter.running else 0
    units = meter.charged_units + seconds * meter.rate
    delta = units // period - meter.charged_units // period
    changed = {}
    if seconds:
        old = stored[day]
        changed[day] = Day(old.seconds + seconds, old.units + seconds * meter.rate, old.amount + delta)
    return MeterCharge(
        resource_id=meter.resource_id,
        delta=delta,
        days=changed,
        charged_until=horizon,
        charged_units=units,
        charged_amount=meter.charged_amount + delta,
        running=meter.running,
        rate=meter.rate,
        pending=False,
        dirty_from=None,
    )


# --- charging organizations -------------------------------------------------------------------


@dataclass
class OrgCharge:
    organization_id: uuid.UUID
    meters: int = 0
    charged: int = 0  # net amount charged (all currencies, minor units)
    from_holds: int = 0
    from_balance: int = 0
    uncollected: int = 0
    given_back: int = 0
    events: list[str] = field(default_factory=list)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _ids(organization_id: uuid.UUID, seq: int, currency: str, kind: str) -> uuid.UUID:
    return uuid.uuid5(_NS, f"charge:{organization_id}:{seq}:{currency}:{kind}")


@dataclass
class _Account:
    """One organization's money in one currency, while a group is charged."""

    organization_id: uuid.UUID
    currency: str
    wallet: uuid.UUID
    seq: int
    net: int = 0  # Σ the meters' deltas: > 0 to charge, < 0 to give back
    owed: int = 0  # what the holds did not pay of a positive net (batch 1 sets it, batch 2 charges it)
    running: list[tuple[int, int]] = field(default_factory=list)  # (rate, period) per running meter
    shortfall: int = 0


def charge_organizations(
    session: Session,
    locked: dict[uuid.UUID, Row[Any]],
    *,
    now: datetime,
    config: Settings,
    fault: Callable[[str], None] | None = None,
) -> list[OrgCharge]:
    """Charge the active meters of these organizations (their rows as lock_orgs locked them)
    up to `now`, in the caller's transaction, in a number of statements that does not grow
    with the group: the steady meters in SQL, the others through charge_meter, then the
    money as two ledger batches — settle the holds and give back (1), then charge the
    balance, the uncollected rest and the fresh rolling holds, sized by the balances batch 1
    left (2). `fault(point)` is a test hook called at named points (the chaos test raises
    from it). The reports, one per organization in id order."""
    horizon = whole_second(now)
    hit = fault or (lambda point: None)
    organizations = sorted(locked)
    if not organizations:
        return []
    reports = {org: OrgCharge(org) for org in organizations}
    metered: set[uuid.UUID] = set()  # organizations with at least one meter charged

    # The common case first, in SQL: meters running steadily since the last tick, on the
    # same UTC day (see _charge_steady); whatever else is active goes through charge_meter.
    steady_net, steady_counts = _charge_steady(session, organizations, horizon, now)
    for org, count in steady_counts.items():
        reports[org].meters += count
        metered.add(org)
    charges = _charge_others(session, organizations, horizon, now, hit)
    for meter, _charge in charges:
        reports[meter.organization_id].meters += 1
        metered.add(meter.organization_id)

    # Money, per organization and currency.
    net: dict[tuple[uuid.UUID, str], int] = defaultdict(int, steady_net)
    for meter, charge in charges:
        net[(meter.organization_id, meter.currency)] += charge.delta
    running: dict[tuple[uuid.UUID, str], list[tuple[int, int]]] = defaultdict(list)
    running_instances: dict[uuid.UUID, int] = defaultdict(int)
    for org, currency, resource_type, rate, period, count in session.execute(
        select(
            METERS.c.organization_id,
            METERS.c.currency,
            METERS.c.resource_type,
            METERS.c.rate,
            METERS.c.period_seconds,
            func.count(),
        )
        .where(METERS.c.organization_id.in_(organizations), METERS.c.running.is_(True))
        .group_by(
            METERS.c.organization_id, METERS.c.currency, METERS.c.resource_type, METERS.c.rate, METERS.c.period_seconds
        )
    ):
        running[(org, currency)].extend([(rate, period)] * count)
        if resource_type == "instance":
            running_instances[org] += count
    keys = set(net) | set(running) | {(org, published.CURRENCY) for org in organizations}
    accounts = [
        _Account(org, currency, published.account_id(published.wallet_code(org), currency), locked[org].seq + 1)
        for org, currency in sorted(keys)
    ]
    by_key = {(a.organization_id, a.currency): a for a in accounts}
    for account in accounts:
        account.net = net.get((account.organization_id, account.currency), 0)
        account.running = running.get((account.organization_id, account.currency), [])
    balances = _lock_wallets(session, accounts, config, now)
    uncollected = {org: locked[org].uncollected for org in organizations}
    charging = [a for a in accounts if a.organization_id in metered]
    if charging:
        first = published.apply(session, _settle_holds(session, charging, uncollected, reports, now), now=now)
        first.views()  # a refusal here is a bug or a race the locks should exclude: the group rolls back
        balances.update(first.balances)
        second = published.apply(session, _charge_balances(charging, balances, uncollected, reports, config), now=now)
        second.views()
        balances.update(second.balances)
        hit("funded")

    updates = []
    for org in organizations:
        state, report = locked[org], reports[org]
        main = by_key[(org, published.CURRENCY)]  # thresholds are about the platform's currency
        low, depleted = _thresholds(
            session,
            org,
            balances[main.wallet],
            main.running,
            main.shortfall,
            running_instances[org],
            state,
            config,
            report,
            now,
        )
        updates.append(
            {
                "b_org": org,
                "b_seq": state.seq + 1,
                "b_uncollected": uncollected[org],
                "b_low": low,
                "b_depleted": depleted,
                "b_now": now,
            }
        )
    session.execute(
        update(ORGS)
        .where(ORGS.c.organization_id == bindparam("b_org"))
        .values(
            seq=bindparam("b_seq"),
            uncollected=bindparam("b_uncollected"),
            low=bindparam("b_low"),
            depleted=bindparam("b_depleted"),
            version=ORGS.c.version + 1,
            updated_at=bindparam("b_now"),
        ),
        updates,
        execution_options={"synchronize_session": False},
    )
    hit("done")
    return [reports[org] for org in organizations]


def _charge_others(
    session: Session,
    organizations: list[uuid.UUID],
    horizon: datetime,
    now: datetime,
    hit: Callable[[str], None],
) -> list[tuple[Any, MeterCharge]]:
    """Charge the active meters _charge_steady did not (new ones, ones with edges to fold in,
    ones crossing a UTC midnight) through charge_meter: their edges and usage read in
    chunks, their usage and meters written in bulk."""
    meters = session.execute(
        select(METERS).where(
            METERS.c.organization_id.in_(organizations),
            METERS.c.active.is_(True),
            or_(METERS.c.pending.is_(True), METERS.c.charged_until.is_(None), METERS.c.charged_until < horizon),
        )
    ).all()
    if not meters:
        return []
    slow = [m.resource_id for m in meters if m.pending or m.charged_until is None]
    edges: dict[uuid.UUID, list[Edge]] = defaultdict(list)
    for chunk in _chunks(slow, 500):
        for row in session.execute(
            select(EDGES.c.resource_id, EDGES.c.at, EDGES.c.kind, EDGES.c.rate).where(EDGES.c.resource_id.in_(chunk))
        ):
            edges[row.resource_id].append(Edge(row.at, row.kind, row.rate))
    first_day: dict[uuid.UUID, date] = {}
    for m in meters:
        if m.pending or m.charged_until is None:
            known = [t for t in (m.dirty_from, m.charged_until) if t is not None]
            known += [e.at for e in edges.get(m.resource_id, [])]
            first_day[m.resource_id] = min(known).date() if known else horizon.date()
        else:
            first_day[m.resource_id] = m.charged_until.date()
    since = min(first_day.values())
    stored: dict[uuid.UUID, dict[date, Day]] = defaultdict(dict)
    for chunk in _chunks([m.resource_id for m in meters], 500):
        for usage_row in session.execute(
            select(USAGE.c.resource_id, USAGE.c.day, USAGE.c.seconds, USAGE.c.units, USAGE.c.amount).where(
                USAGE.c.resource_id.in_(chunk), USAGE.c.day >= since
            )
        ):
            stored[usage_row.resource_id][usage_row.day] = Day(usage_row.seconds, usage_row.units, usage_row.amount)
    charges = [
        (m, charge_meter(m, edges.get(m.resource_id, []), stored.get(m.resource_id, {}), horizon)) for m in meters
    ]
    hit("computed")
    _write_usage(session, charges, stored, now)
    hit("usage_written")
    session.execute(
        update(METERS)
        .where(METERS.c.resource_id == bindparam("b_id"))
        .values(
            charged_until=bindparam("b_until"),
            charged_units=bindparam("b_units"),
            charged_amount=bindparam("b_amount"),
            running=bindparam("b_running"),
            rate=bindparam("b_rate"),
            pending=bindparam("b_pending"),
            dirty_from=bindparam("b_dirty"),
            active=bindparam("b_active"),
            updated_at=bindparam("b_now"),
        ),
        [
            {
                "b_id": c.resource_id,
                "b_until": c.charged_until,
                "b_units": c.charged_units,
                "b_amount": c.charged_amount,
                "b_running": c.running,
                "b_rate": c.rate,
                "b_pending": c.pending,
                "b_dirty": c.dirty_from,
                "b_active": c.running or c.pending,
                "b_now": now,
            }
            for _, c in charges
        ],
        execution_options={"synchronize_session": False},
    )
    hit("meters_written")
    return charges


def _charge_steady(
    session: Session, organizations: list[uuid.UUID], horizon: datetime, now: datetime
) -> tuple[dict[tuple[uuid.UUID, str], int], dict[uuid.UUID, int]]:
    """Charge, in three set-based statements per previous horizon, every meter of these
    organizations that ran steadily since it was last charged: not pending, running, charged
    up to an earlier second of the horizon's UTC day, its usage record for that day present.
    The same arithmetic as charge_meter's steady case (cumulative floor per meter), done by
    the database: integer division truncates, every operand is ≥ 0. Returns (net charge per
    organization and currency, meters charged per organization)."""
    steady = and_(
        METERS.c.organization_id.in_(organizations),
        METERS.c.active.is_(True),
        METERS.c.running.is_(True),
        METERS.c.pending.is_(False),
    )
    day_start = _day_start(horizon.date())
    previous = (
        session.execute(
            select(METERS.c.charged_until)
            .where(steady, METERS.c.charged_until >= day_start, METERS.c.charged_until < horizon)
            .distinct()
        )
        .scalars()
        .all()
    )
    net: dict[tuple[uuid.UUID, str], int] = defaultdict(int)
    counts: dict[uuid.UUID, int] = defaultdict(int)
    for since in previous:
        seconds = int((horizon - since).total_seconds())
        has_day = (
            select(USAGE.c.resource_id)
            .where(USAGE.c.resource_id == METERS.c.resource_id, USAGE.c.day == horizon.date())
            .exists()
        )
        which = and_(steady, METERS.c.charged_until == since, has_day)
        new_units = METERS.c.charged_units + METERS.c.rate * seconds
        delta = new_units // METERS.c.period_seconds - METERS.c.charged_units // METERS.c.period_seconds
        for org, currency, total, n in session.execute(
            select(METERS.c.organization_id, METERS.c.currency, func.sum(delta), func.count())
            .where(which)
            .group_by(METERS.c.organization_id, METERS.c.currency)
        ):
            net[(org, currency)] += int(total or 0)
            counts[org] += int(n)
        # UPDATE … FROM: the usage row and its meter joined (the join is has_day's condition).
        session.execute(
            update(USAGE)
            .where(
                USAGE.c.resource_id == METERS.c.resource_id,
                USAGE.c.day == horizon.date(),
                steady,
                METERS.c.charged_until == since,
            )
            .values(
                seconds=USAGE.c.seconds + seconds,
                units=USAGE.c.units + METERS.c.rate * seconds,
                amount=USAGE.c.amount + delta,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(METERS)
            .where(which)
            .values(
                charged_units=new_units,
                charged_amount=new_units // METERS.c.period_seconds,
                charged_until=horizon,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
    return dict(net), dict(counts)


def _chunks(items: Sequence[uuid.UUID], size: int) -> Iterator[Sequence[uuid.UUID]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _write_usage(
    session: Session,
    charges: list[tuple[Any, MeterCharge]],
    stored: dict[uuid.UUID, dict[date, Day]],
    now: datetime,
) -> None:
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for meter, charge in charges:
        for day, value in charge.days.items():
            if day in stored.get(meter.resource_id, {}):
                updates.append(
                    {
                        "b_id": meter.resource_id,
                        "b_day": day,
                        "b_seconds": value.seconds,
                        "b_units": value.units,
                        "b_amount": value.amount,
                        "b_description": meter.description,
                        "b_now": now,
                    }
                )
            else:
                inserts.append(
                    {
                        "resource_id": meter.resource_id,
                        "day": day,
                        "organization_id": meter.organization_id,
                        "resource_type": meter.resource_type,
                        "description": meter.description,
                        "currency": meter.currency,
                        "seconds": value.seconds,
                        "units": value.units,
                        "amount": value.amount,
                        "updated_at": now,
                    }
                )
    if inserts:
        session.execute(insert(USAGE), inserts)
    if updates:
        session.execute(
            update(USAGE)
            .where(USAGE.c.resource_id == bindparam("b_id"), USAGE.c.day == bindparam("b_day"))
            .values(
                seconds=bindparam("b_seconds"),
                units=bindparam("b_units"),
                amount=bindparam("b_amount"),
                description=bindparam("b_description"),
                updated_at=bindparam("b_now"),
            ),
            updates,
            execution_options={"synchronize_session": False},
        )


def _lock_wallets(
    session: Session, accounts: list[_Account], config: Settings, now: datetime
) -> dict[uuid.UUID, published.Balance]:
    """Every wallet the group's money touches (created on first use, with the signup credit)
    and the platform accounts, locked in one statement in id order; their balances."""
    wallets = [a.wallet for a in accounts]
    missing = published.missing_accounts(session, wallets)
    for account in accounts:
        if account.wallet in missing:
            published.wallet(
                session,
                account.organization_id,
                now=now,
                currency=account.currency,
                signup_credit=config.billing_signup_credit,
            )
    platform = [
        published.platform_account(session, name, currency=currency, now=now)
        for currency in sorted({a.currency for a in accounts})
        for name in ("revenue", "holds", "uncollected")
    ]
    rows = published.lock_accounts(session, wallets + platform)
    return {wallet: published.balance_of(rows[wallet]) for wallet in wallets}


def _settle_holds(
    session: Session,
    accounts: list[_Account],
    uncollected: dict[uuid.UUID, int],
    reports: dict[uuid.UUID, OrgCharge],
    now: datetime,
) -> list[published.Operation]:
    """Batch 1: every hold backing what was metered resolves (a pending transfer resolves
    once): posted for what it covers of the charge, the rest released — the rolling hold is
    re-placed in batch 2; a launch hold of an instance still being built stays. What holds
    paid moves platform:holds → revenue. A negative net (a late edge showed seconds charged
    that never ran) is given back, first what was never collected, then to the wallet: new
    transfers, nothing rewritten."""
    operations: list[published.Operation] = []
    open_ = holds.open_holds_of(session, [a.organization_id for a in accounts], now=now)
    backed = {i for group in open_.values() for h in group if (i := holds.instance_of(h.reference)) is not None}
    seen: set[uuid.UUID] = set()
    for chunk in _chunks(sorted(backed), 500):
        seen.update(session.execute(select(METERS.c.resource_id).where(METERS.c.resource_id.in_(chunk))).scalars())
    for account in accounts:
        org, currency, seq = account.organization_id, account.currency, account.seq
        report = reports[org]
        revenue = published.account_id("platform:revenue", currency)
        remaining = max(account.net, 0)
        from_holds = 0
        for hold in open_.get(org, []):
            if hold.currency != currency or (
                hold.reference != holds.ROLLING and holds.instance_of(hold.reference) not in seen
            ):
                continue
            take = min(remaining, hold.amount)
            operations.append(holds.settle(hold, take))
            from_holds += take
            remaining -= take
        if from_holds:
            operations.append(
                published.NewTransfer(
                    _ids(org, seq, currency, "usage_held"),
                    published.account_id("platform:holds", currency),
                    revenue,
                    from_holds,
                    "usage",
                    "metered usage (from holds)",
                    org,
                )
            )
        account.owed = remaining
        if account.net < 0:
            back = -account.net
            to_uncollected = min(back, uncollected[org])
            if to_uncollected:
                operations.append(
                    published.NewTransfer(
                        _ids(org, seq, currency, "uncollected_back"),
                        revenue,
                        published.account_id("platform:uncollected", currency),
                        to_uncollected,
                        "usage_uncollected",
                        "metered usage corrected (never ran)",
                        org,
                    )
                )
                uncollected[org] -= to_uncollected
            if back - to_uncollected:
                operations.append(
                    published.NewTransfer(
                        _ids(org, seq, currency, "usage_back"),
                        revenue,
                        account.wallet,
                        back - to_uncollected,
                        "usage",
                        "metered usage corrected (never ran)",
                        org,
                    )
                )
            report.given_back += back
            report.charged -= back
        report.from_holds += from_holds
        report.charged += from_holds
    return operations


def _charge_balances(
    accounts: list[_Account],
    balances: dict[uuid.UUID, published.Balance],
    uncollected: dict[uuid.UUID, int],
    reports: dict[uuid.UUID, OrgCharge],
    config: Settings,
) -> list[published.Operation]:
    """Batch 2, from the balances batch 1 left: what the holds did not pay comes from the
    free balance, and what even that cannot cover is charged to platform:uncollected (code
    usage_uncollected), so the ledger balances and no wallet passes its limit. Then a fresh
    rolling hold reserves billing_hold_seconds of the running resources, as far as the
    balance goes."""
    operations: list[published.Operation] = []
    for account in accounts:
        org, currency, seq, report = (
            account.organization_id,
            account.currency,
            account.seq,
            reports[account.organization_id],
        )
        revenue = published.account_id("platform:revenue", currency)
        available = balances[account.wallet].available
        remaining = account.owed
        free = max(0, min(remaining, available))
        if free:
            operations.append(
                published.NewTransfer(
                    _ids(org, seq, currency, "usage"), account.wallet, revenue, free, "usage", "metered usage", org
                )
            )
        account.shortfall = remaining - free
        if account.shortfall:
            operations.append(
                published.NewTransfer(
                    _ids(org, seq, currency, "uncollected"),
                    published.account_id("platform:uncollected", currency),
                    revenue,
                    account.shortfall,
                    "usage_uncollected",
                    "metered usage the balance could not cover",
                    org,
                )
            )
            uncollected[org] += account.shortfall
        report.from_balance += free
        report.uncollected += account.shortfall
        report.charged += remaining
        wanted = sum(_ceil_div(rate * config.billing_hold_seconds, period) for rate, period in account.running)
        hold = min(wanted, available - free)
        if hold > 0:
            operations.append(
                published.NewTransfer(
                    holds.rolling_hold_id(org, seq, currency),
                    account.wallet,
                    published.account_id("platform:holds", currency),
                    hold,
                    holds.HOLD_CODE,
                    holds.ROLLING,
                    org,
                    pending=True,
                    timeout_seconds=config.billing_hold_timeout_seconds,
                )
            )
    return operations


def spendable(balance: published.Balance) -> int:
    """What the organization can still pay with: posted balance plus its credit limit (its own
    holds are money reserved for its own resources, so they count)."""
    return balance.credits_posted - balance.debits_posted + balance.credit_limit


def _thresholds(
    session: Session,
    organization_id: uuid.UUID,
    bal: published.Balance,
    running: list[tuple[int, int]],
    shortfall: int,
    running_instances: int,
    state: Any,
    config: Settings,
    report: OrgCharge,
    now: datetime,
) -> tuple[bool, bool]:
    """The low and depleted flags after a charge, and their events. balance_low is sent once
    per crossing. balance_depleted is sent on the crossing and again on every tick that still
    finds instances running on a depleted balance: provisioning leaves an instance that is
    mid-action (rebooting, starting, still being built) alone, and the repeat is what stops it
    once that action is over."""
    funds = spendable(bal)
    next_tick = sum(_ceil_div(rate * int(config.billing_tick_seconds), period) for rate, period in running)
    low = funds < config.billing_low_balance_threshold
    depleted = bool(running) and (shortfall > 0 or funds < next_tick)
    if low and not state.low:
        outbox.record(
            session,
            "billing.balance_low",
            organization_id,
            {"balance": bal.posted, "currency": bal.currency, "threshold": config.billing_low_balance_threshold},
            occurred_at=now,
        )
        report.events.append("billing.balance_low")
    if depleted and (not state.depleted or running_instances > 0):
        outbox.record(
            session,
            "billing.balance_depleted",
            organization_id,
            {"balance": bal.posted, "currency": bal.currency},
            occurred_at=now,
        )
        report.events.append("billing.balance_depleted")
    return low, depleted


# --- the tick -------------------------------------------------------------------------------


@dataclass
class TickReport:
    organizations: int = 0
    charged_organizations: int = 0
    skipped: int = 0
    failed: int = 0
    meters: int = 0
    charged: int = 0
    uncollected: int = 0
    events: int = 0
    seconds: float = 0.0


def due_organizations(session: Session) -> list[uuid.UUID]:
    """Organizations with something to charge, or a low/depleted flag to re-evaluate."""
    active = session.execute(select(METERS.c.organization_id).where(METERS.c.active.is_(True)).distinct()).scalars()
    flagged = session.execute(
        select(ORGS.c.organization_id).where(or_(ORGS.c.low.is_(True), ORGS.c.depleted.is_(True)))
    ).scalars()
    return sorted(set(active) | set(flagged))


# A group is charged in one transaction, in a fixed number of statements (charge_organizations).
# Bigger groups mean fewer commits; but a group holds the platform accounts' row locks until
# it commits, and a launch's hold waits for them: at 5,000 meters a group commits in about
# 0.2–0.3 s (bench/README.md, "Metering tick").
GROUP_METERS = 5000
GROUP_ORGANIZATIONS = 100


def tick(
    sessions: sessionmaker[Session],
    config: Settings,
    *,
    now: datetime | None = None,
    stop: threading.Event | None = None,
    fault: Callable[[str], None] | None = None,
) -> TickReport:
    """One metering tick: the due organizations charged in groups (≈ GROUP_METERS meters,
    at most GROUP_ORGANIZATIONS organizations a transaction), each group under its
    organizations' locks (one held by another worker is skipped: it is being charged). A
    group that fails is charged again one organization at a time, so an organization that
    cannot be charged is rolled back to its savepoint and logged (the next tick retries it)
    while the others go on. A worker that dies mid-group loses the group's uncommitted work
    only — nothing is half-charged."""
    started = time.perf_counter()
    horizon = whole_second(now or utcnow())
    report = TickReport()
    with sessions() as session:
        organizations = due_organizations(session)
        sizes: dict[uuid.UUID, int] = dict(
            session.execute(
                select(METERS.c.organization_id, func.count())
                .where(METERS.c.active.is_(True))
                .group_by(METERS.c.organization_id)
            ).all()
        )
    report.organizations = len(organizations)
    group: list[uuid.UUID] = []
    weight = 0
    for index, organization_id in enumerate(organizations):
        group.append(organization_id)
        weight += sizes.get(organization_id, 0) + 20
        if weight < GROUP_METERS and len(group) < GROUP_ORGANIZATIONS and index + 1 < len(organizations):
            continue
        if stop is not None and stop.is_set():
            break
        _tick_group(sessions, config, group, horizon, fault, report)
        group, weight = [], 0
    report.seconds = time.perf_counter() - started
    return report


def _tick_group(
    sessions: sessionmaker[Session],
    config: Settings,
    group: list[uuid.UUID],
    horizon: datetime,
    fault: Callable[[str], None] | None,
    report: TickReport,
) -> None:
    """Charge a group in one transaction: all of it at once, in a savepoint; if that fails,
    one organization at a time, each in a savepoint of its own, so one organization that
    cannot be charged (logged; the next tick retries it) never holds back the others."""
    done: list[OrgCharge] = []
    try:
        with sessions() as session, session.begin():
            locked = lock_orgs(session, group, now=horizon, skip_locked=True)  # the transaction's first write
            report.skipped += len(group) - len(locked)
            try:
                with session.begin_nested():
                    done = charge_organizations(session, locked, now=horizon, config=config, fault=fault)
            except Exception:
                log.warning("metering: a group of %d organizations failed; charging them one by one", len(locked))
                done = []
                for organization_id, state in locked.items():
                    try:
                        with session.begin_nested():
                            done += charge_organizations(
                                session, {organization_id: state}, now=horizon, config=config, fault=fault
                            )
                    except Exception:
                        log.exception(
                            "metering: charging organization %s failed; the next tick retries", organization_id
                        )
                        report.failed += 1
    except Exception:
        log.exception("metering: a group of %d organizations failed to commit; the next tick retries", len(group))
        report.failed += len(group)
        return
    for charge in done:
        report.charged_organizations += 1
        report.meters += charge.meters
        report.charged += charge.charged
        report.uncollected += charge.uncollected
        report.events += len(charge.events)


# --- what the ledger's endpoints and statements read -------------------------------------------


@dataclass(frozen=True)
class UsageLine:
    resource_type: str
    resource_id: uuid.UUID
    description: str
    day: date
    seconds: int
    amount: int
    currency: str


def usage_lines(
    session: Session,
    organization_id: uuid.UUID,
    *,
    start: date,
    end: date,
    resource_type: str | None = None,
) -> list[UsageLine]:
    """Charged usage per resource per UTC day in [start, end), by day then resource."""
    query = select(USAGE).where(USAGE.c.organization_id == organization_id, USAGE.c.day >= start, USAGE.c.day < end)
    if resource_type is not None:
        query = query.where(USAGE.c.resource_type == resource_type)
    rows = session.execute(query.order_by(USAGE.c.day, USAGE.c.resource_type, USAGE.c.resource_id)).all()
    return [
        UsageLine(r.resource_type, r.resource_id, r.description, r.day, r.seconds, r.amount, r.currency)
        for r in rows
        if r.seconds or r.amount
    ]
