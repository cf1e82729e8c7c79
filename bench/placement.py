"""Placement benchmark: how long one claim takes on a big fleet, against naive first-fit.

    .venv/bin/python -m bench.placement                                   # 10,000 hosts, 50,000 placements, SQLite
    .venv/bin/python -m bench.placement --db both                         # SQLite, then PostgreSQL
    .venv/bin/python -m bench.placement --hosts 2000 --placements 5000 --naive-placements 2000

What is measured (see bench/README.md):
- the fleet: `hangar.drivers.sim.sim_fleet(hosts, ["fra1", "ams1", "nyc1"], seed)` loaded
  through `load_sim_fleet` into a fresh database (SQLite file, or a PostgreSQL schema of its
  own), with the catalogue seeded by `ensure_catalogue`;
- the workload, the same for both strategies (from `--seed`): each step claims one new
  instance of a type drawn from MIX in a region it is offered in, for one of 500
  organizations (quota out of the way), then with probability `--release-share` releases
  one random live instance (churn);
- `placement`: `handlers.inventory.published.claim` as provisioning calls it (quota row
  lock, idempotency check, one indexed candidate query, compare-and-swap, allocation rows,
  outbox event); `first-fit`: the same claim with the host chosen naively — every host with
  its inventories read in id order and checked in Python, the first that fits is taken
  (same compare-and-swap and writes);
- decision time = wall time of one claim call incl. its SQL (not the commit); placements/s
  = placements ÷ wall time of the whole loop (claims, releases, commits), one thread;
- at the end: utilisation per resource class, and the consistency of every denormalised
  count (inventories.used = Σ allocations; host summary = capacity − used).
First-fit re-reads the fleet per claim, so `--naive-placements` (default: the same as
`--placements`) lets it run fewer; its figures are then over fewer, earlier placements.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, func, make_url, select, text
from sqlalchemy.orm import Session

import hangar.outbox
from handlers.inventory import catalogue, placement, quotas, services, tables
from handlers.inventory.published import Claim, LaunchSpec, NoCapacity, claim, release, resolve_launch
from hangar import outbox
from hangar.db import Base, make_engine
from hangar.drivers.sim import sim_fleet

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REGIONS = ["fra1", "ams1", "nyc1"]
ORGS = 500
NO_QUOTA = 10**9
NOW = datetime(2026, 12, 1, tzinfo=UTC)

# Instance type → share of placements: mostly small CPU, a tenth GPU.
MIX: dict[str, float] = {
    "cpu-1": 0.30,
    "cpu-2": 0.25,
    "cpu-4": 0.18,
    "cpu-8": 0.10,
    "mem-4": 0.07,
    "gpu-a100x1": 0.04,
    "gpu-h100x1": 0.04,
    "gpu-h100x8": 0.02,
}
TABLES = [
    Base.metadata.tables[t]
    for t in (
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


# --- the workload ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    consumer: uuid.UUID
    organization: uuid.UUID
    instance_type: str
    region: str
    release_draw: float  # release one live instance after this step if below the share
    release_pick: float  # which one (a fraction of the live list)


def workload(n: int, seed: int) -> list[Step]:
    rng = random.Random(seed)
    orgs = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(ORGS)]
    offered = {t.slug: list(t.regions) for t in catalogue.INSTANCE_TYPES}
    kinds, weights = list(MIX), list(MIX.values())
    steps = []
    for _ in range(n):
        kind = rng.choices(kinds, weights)[0]
        steps.append(
            Step(
                consumer=uuid.UUID(int=rng.getrandbits(128)),
                organization=rng.choice(orgs),
                instance_type=kind,
                region=rng.choice(offered[kind]),
                release_draw=rng.random(),
                release_pick=rng.random(),
            )
        )
    return steps


# --- first-fit, the baseline ----------------------------------------------------------------


def first_fit_claim(
    session: Session, *, consumer_id: uuid.UUID, organization_id: uuid.UUID, launch: LaunchSpec, now: datetime
) -> Claim:
    """published.claim with the host chosen the naive way: read every host with its
    inventories in id order and take the first that fits, checked in Python."""
    quotas.lock(session, organization_id, now)
    traits = set(
        session.scalar(
            select(tables.InstanceType.required_traits).where(tables.InstanceType.slug == launch.instance_type)
        )
        or []
    )
    request = placement.Request.of(
        launch.region,
        vcpus=launch.vcpus,
        memory_mb=launch.memory_mb,
        disk_gb=launch.disk_gb,
        gpus=launch.gpus,
        required_traits=traits,
    )
    host_traits: dict[uuid.UUID, set[str]] = {}
    if traits:
        for host_id, trait in session.execute(
            select(tables.HostTrait.host_id, tables.HostTrait.trait).where(tables.HostTrait.trait.in_(traits))
        ):
            host_traits.setdefault(host_id, set()).add(trait)
    h, i = tables.Host, tables.Inventory
    rows = session.execute(
        select(
            h.id,
            h.name,
            h.region,
            h.zone,
            h.state,
            h.generation,
            i.resource_class,
            i.capacity,
            i.used,
            i.min_unit,
            i.max_unit,
            i.step_size,
        )
        .join(i, i.host_id == h.id)
        .order_by(h.id)
        .execution_options(yield_per=2000)
    )
    chosen: placement.Candidate | None = None
    try:
        for host_id, group in _by_host(rows):
            first = group[0]
            if (
                first.region != launch.region
                or first.state != "active"
                or not traits <= host_traits.get(host_id, set())
            ):
                continue
            stock = {r.resource_class: r for r in group}
            if all(
                rc in stock
                and placement.refusal(
                    amount,
                    min_unit=stock[rc].min_unit,
                    max_unit=stock[rc].max_unit,
                    step_size=stock[rc].step_size,
                    free=stock[rc].capacity - stock[rc].used,
                )
                is None
                for rc, amount in request.amounts.items()
            ):
                chosen = placement.Candidate(
                    host_id, first.name, first.region, first.zone, first.generation, False, 0, 0.0
                )
                break
    finally:
        rows.close()
    if chosen is None or not placement.take(
        session, chosen, request, consumer_id=consumer_id, organization_id=organization_id, now=now
    ):
        raise NoCapacity("first-fit found no host")
    quotas.add_usage(session, organization_id, vcpus=launch.vcpus, gpus=launch.gpus, now=now)
    outbox.record(session, "allocation.claimed", organization_id, {"consumer_id": str(consumer_id)}, occurred_at=now)
    return Claim(consumer_id, chosen.id, chosen.name, chosen.region, chosen.zone)


def _by_host(rows: Any) -> Iterator[tuple[uuid.UUID, list[Any]]]:
    current: uuid.UUID | None = None
    group: list[Any] = []
    for row in rows:
        if row.id != current:
            if group:
                yield current, group  # type: ignore[misc]
            current, group = row.id, []
        group.append(row)
    if group:
        yield current, group  # type: ignore[misc]


# --- running --------------------------------------------------------------------------------


@dataclass
class Result:
    strategy: str
    backend: str
    decisions_ms: list[float] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # the instance type of each decision
    refused: dict[str, int] = field(default_factory=dict)  # instance type → NoCapacity count
    ok: int = 0
    failed: int = 0
    releases: int = 0
    wall_s: float = 0.0
    utilisation: dict[str, float] = field(default_factory=dict)
    consistent: bool = False

    @property
    def placements(self) -> int:
        return self.ok + self.failed


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def run(engine: Engine, strategy: str, steps: list[Step], backend: str) -> Result:
    claimer: Callable[..., Claim] = claim if strategy == "placement" else first_fit_claim
    result = Result(strategy, backend)
    live: list[uuid.UUID] = []
    with Session(engine, expire_on_commit=False) as session:
        launches = {
            (t, r): resolve_launch(session, region=r, instance_type=t, image=_image(t))
            for t in MIX
            for r in next(k.regions for k in catalogue.INSTANCE_TYPES if k.slug == t)
        }
        session.rollback()
        started = time.perf_counter()
        for n, step in enumerate(steps, start=1):
            launch = launches[(step.instance_type, step.region)]
            t0 = time.perf_counter_ns()
            try:
                kwargs = {"quota_vcpus": NO_QUOTA, "quota_gpus": NO_QUOTA} if strategy == "placement" else {}
                claimer(
                    session,
                    consumer_id=step.consumer,
                    organization_id=step.organization,
                    launch=launch,
                    now=NOW,
                    **kwargs,
                )
                result.decisions_ms.append((time.perf_counter_ns() - t0) / 1e6)
                result.kinds.append(step.instance_type)
                session.commit()
                result.ok += 1
                live.append(step.consumer)
            except NoCapacity:
                result.decisions_ms.append((time.perf_counter_ns() - t0) / 1e6)
                result.kinds.append(step.instance_type)
                session.rollback()
                result.failed += 1
                result.refused[step.instance_type] = result.refused.get(step.instance_type, 0) + 1
            if live and step.release_draw < ARGS_RELEASE_SHARE[0]:
                victim = live.pop(int(step.release_pick * len(live)))
                release(session, consumer_id=victim, now=NOW, reason="bench")
                session.commit()
                result.releases += 1
            if VACUUM_EVERY[0] and n % VACUUM_EVERY[0] == 0 and engine.dialect.name == "postgresql":
                _vacuum(engine)
            if n % 10000 == 0:
                window = result.decisions_ms[-10000:]
                print(
                    f"    {backend} {strategy}: {n} placements; last 10,000: p50 {statistics.median(window):.2f} ms,"
                    f" p99 {_percentile(window, 0.99):.2f} ms",
                    file=sys.stderr,
                    flush=True,
                )
        result.wall_s = time.perf_counter() - started
        for rc, (used, cap) in _utilisation(session).items():
            result.utilisation[rc] = used / cap if cap else 0.0
        result.consistent = _consistent(session)
    return result


ARGS_RELEASE_SHARE = [0.3]  # set from --release-share
VACUUM_EVERY = [0]  # set when the PostgreSQL server's autovacuum is off


def _vacuum(engine: Engine) -> None:
    """What autovacuum does on a live server: without it every host update (non-HOT: the
    indexed load columns change) leaves dead index entries that each claim's walk re-reads."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) hosts, inventories, allocations, org_quotas"))


def _image(kind: str) -> str:
    return "pytorch-2.5-cuda12" if kind.startswith("gpu-") else "ubuntu-24.04"


def _utilisation(session: Session) -> dict[str, tuple[int, int]]:
    totals: dict[str, tuple[int, int]] = {}
    for region in services.capacity_report(session):
        for rc, cap in region.resources.items():
            used, capacity = totals.get(rc, (0, 0))
            totals[rc] = (used + cap.used, capacity + cap.capacity)
    return totals


def _consistent(session: Session) -> bool:
    i, a, h = tables.Inventory, tables.Allocation, tables.Host
    sums = (
        select(a.host_id, a.resource_class, func.sum(a.amount).label("amount"))
        .group_by(a.host_id, a.resource_class)
        .subquery()
    )
    wrong_used = session.scalar(
        select(func.count())
        .select_from(i)
        .outerjoin(sums, (sums.c.host_id == i.host_id) & (sums.c.resource_class == i.resource_class))
        .where((i.used != func.coalesce(sums.c.amount, 0)) | (i.used > i.capacity))
    )
    vcpu = select(i.host_id, (i.capacity - i.used).label("free")).where(i.resource_class == "VCPU").subquery()
    wrong_summary = session.scalar(
        select(func.count()).select_from(h).join(vcpu, vcpu.c.host_id == h.id).where(h.vcpu_free != vcpu.c.free)
    )
    return wrong_used == 0 and wrong_summary == 0


# --- databases ------------------------------------------------------------------------------


@contextmanager
def fresh_database(backend: str, pg_url: str, scratch: Path, label: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{scratch / (label + '.db')}"
        return
    schema = f"bench_placement_{label}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield (
            make_url(pg_url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def build_fleet(url: str, hosts: int, seed: int) -> tuple[Engine, float]:
    engine = make_engine(url)
    Base.metadata.create_all(engine, tables=TABLES)
    started = time.perf_counter()
    with Session(engine) as session:
        catalogue.ensure_catalogue(session, driver="sim", now=NOW)
        loaded = catalogue.load_sim_fleet(session, sim_fleet(hosts, REGIONS, seed), now=NOW)
        session.commit()
        assert loaded == hosts, (loaded, hosts)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:  # what autovacuum would have done on a live fleet
            conn.execute(text("ANALYZE"))
            conn.commit()
    return engine, time.perf_counter() - started


def explain(engine: Engine) -> list[str]:
    lines = []
    with engine.connect() as conn:
        for label, request in (
            ("cpu-2", placement.Request.of("fra1", vcpus=2, memory_mb=4096, disk_gb=50, gpus=0)),
            (
                "gpu-h100x1",
                placement.Request.of(
                    "fra1", vcpus=24, memory_mb=245760, disk_gb=1000, gpus=1, required_traits=["gpu:h100"]
                ),
            ),
        ):
            stmt, params = placement.candidates_query(request)
            compiled = stmt.compile(engine)
            values = compiled.construct_params(params)
            if engine.dialect.name == "sqlite":
                args: Any = tuple(values[name] for name in compiled.positiontup or ())
                plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled.string, args).all()
            else:
                plan = conn.exec_driver_sql("EXPLAIN " + compiled.string, values).all()
            text_plan = [row[-1] if engine.dialect.name == "sqlite" else row[0] for row in plan]
            lines.append(f"{label}: " + " | ".join(str(p).strip() for p in text_plan[:4]))
    return lines


def bench_backend(backend: str, args: argparse.Namespace, scratch: Path) -> list[Result]:
    steps = workload(args.placements, args.seed)
    results = []
    for strategy, count in (("placement", args.placements), ("first-fit", args.naive_placements)):
        if count == 0:
            continue
        with fresh_database(backend, args.pg_url, scratch, strategy.replace("-", "_")) as url:
            engine, load_s = build_fleet(url, args.hosts, args.seed)
            print(f"  {backend}: {args.hosts} hosts loaded in {load_s:.1f} s ({strategy})", file=sys.stderr)
            if strategy == "placement":
                for line in explain(engine):
                    print(f"  {backend} plan {line}", file=sys.stderr)
            try:
                results.append(run(engine, strategy, steps[:count], backend))
            finally:
                engine.dispose()
    return results


def report(results: list[Result], args: argparse.Namespace) -> None:
    print()
    print(
        f"Placement benchmark: {args.hosts} sim hosts in {len(REGIONS)} regions (seed {args.seed}), "
        f"release share {args.release_share}, one thread; decision = one claim() incl. its SQL"
    )
    head = (
        f"{'backend':<10} {'strategy':<10} {'placements':>10} {'ok':>7} {'failed':>7} {'released':>8} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>8} {'plc/s':>7}  consistent"
    )
    print(head)
    for r in results:
        d = r.decisions_ms
        print(
            f"{r.backend:<10} {r.strategy:<10} {r.placements:>10} {r.ok:>7} {r.failed:>7} {r.releases:>8} "
            f"{statistics.median(d):>7.2f} {_percentile(d, 0.95):>7.2f} {_percentile(d, 0.99):>7.2f} "
            f"{max(d):>8.2f} {r.placements / r.wall_s:>7.0f}  {'yes' if r.consistent else 'NO'}"
        )
    print()
    print("Decision time by instance type, ms (p50 / p99):")
    print(f"{'backend':<10} {'strategy':<10} " + " ".join(f"{kind:>13}" for kind in MIX))
    for r in results:
        cells = []
        for kind in MIX:
            times = [t for t, k in zip(r.decisions_ms, r.kinds, strict=True) if k == kind]
            cells.append(f"{statistics.median(times):>5.2f} / {_percentile(times, 0.99):>5.2f}" if times else "-")
        print(f"{r.backend:<10} {r.strategy:<10} " + " ".join(f"{c:>13}" for c in cells))
    print()
    print("Refused (NoCapacity) by instance type:")
    for r in results:
        refused = ", ".join(f"{kind} {n}" for kind, n in sorted(r.refused.items())) or "none"
        print(f"  {r.backend:<10} {r.strategy:<10} {refused}")
    print()
    print("Utilisation at the end (used ÷ capacity over all hosts):")
    for r in results:
        shares = ", ".join(f"{rc} {share:.1%}" for rc, share in r.utilisation.items())
        print(f"  {r.backend:<10} {r.strategy:<10} after {r.placements} placements: {shares}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10_000, help="sim hosts (default 10000)")
    parser.add_argument("--placements", type=int, default=50_000, help="placements (default 50000)")
    parser.add_argument(
        "--naive-placements", type=int, default=None, help="placements for first-fit (default: --placements; 0: skip)"
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help=f"PostgreSQL to make a scratch schema in ({DEFAULT_PG})")
    parser.add_argument("--release-share", type=float, default=0.3, help="chance of a release after each placement")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--vacuum-every",
        type=int,
        default=2000,
        help="when the server's autovacuum is off, VACUUM ANALYZE every N placements (0: never; default 2000)",
    )
    args = parser.parse_args(argv)
    if args.naive_placements is None:
        args.naive_placements = args.placements
    args.naive_placements = min(args.naive_placements, args.placements)
    ARGS_RELEASE_SHARE[0] = args.release_share
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    if "postgresql" in backends:
        admin = create_engine(args.pg_url)
        with admin.connect() as conn:
            autovacuum = conn.execute(text("SHOW autovacuum")).scalar_one()
        admin.dispose()
        if autovacuum != "on" and args.vacuum_every:
            VACUUM_EVERY[0] = args.vacuum_every
            print(
                f"  autovacuum is {autovacuum} on this server: vacuuming every {args.vacuum_every} placements"
                " instead (outside the timed claims)",
                file=sys.stderr,
            )
    scratch = Path(tempfile.mkdtemp(prefix="hangar-bench-placement-"))
    results: list[Result] = []
    try:
        for backend in backends:
            results += bench_backend(backend, args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(results, args)
    return 0 if all(r.consistent for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
