"""Metering tick benchmark: one tick over 100,000 running instances, against a bare bulk UPDATE.

    .venv/bin/python -m bench.metering_tick                      # 100,000 instances, 1,000 organizations, SQLite
    .venv/bin/python -m bench.metering_tick --db both            # SQLite, then PostgreSQL (127.0.0.1:5432/test)
    .venv/bin/python -m bench.metering_tick --instances 20000 --orgs 200

What is measured (see bench/README.md, "Metering tick"):
- the state: `--orgs` organizations, each with a funded wallet (ledger transfer from
  platform:promotions) and a rolling hold, and `--instances` running instances spread
  evenly over them — meters seeded directly in their steady state (running since an hour
  ago, charged up to the previous tick, today's usage record present), prices drawn from
  the catalogue's (1, 3, 6, 12, 17, 149 cents/hour). This is what the meters of instances
  launched on the `sim` driver look like after their first tick; seeding them directly keeps
  the set-up to seconds instead of launching 100,000 sagas.
- `baseline`: one bulk `UPDATE billing_meters SET charged_until = …, charged_units =
  charged_units + rate × 60` over all of them, in one statement (rolled back) — the floor
  for touching every meter once.
- `tick`: `handlers.billing.metering.tick` exactly as the ticker runs it: groups of
  organizations, a transaction each (lock, meters, usage, two ledger batches: post the
  holds, usage transfers, re-placed holds; thresholds), then a second tick one interval
  later (steady state). Checked afterwards:
  every organization charged exactly Σ floor(units/3600) differences, the ledger's
  invariants hold.
Wall times, one process, one thread; the figures vary with the machine's load (the README
gives the load average of the recorded run).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, insert, make_url, text, update
from sqlalchemy.orm import Session, sessionmaker

import hangar.outbox
from handlers.billing import metering, published
from handlers.billing import tables as billing_tables
from handlers.billing.metering_tables import Meter, MeteringOrg, UsageRecord
from hangar.config import Settings
from hangar.db import Base, make_engine

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PRICES = [1, 3, 6, 12, 17, 149]
T = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TABLES = [
    Base.metadata.tables[name]
    for name in (
        hangar.outbox.OutboxEvent.__tablename__,
        billing_tables.LedgerAccount.__tablename__,
        billing_tables.LedgerTransfer.__tablename__,
        billing_tables.LedgerOpenPending.__tablename__,
        Meter.__tablename__,
        MeteringOrg.__tablename__,
        UsageRecord.__tablename__,
        "billing_meter_edges",
    )
]


@contextmanager
def fresh_database(backend: str, pg_url: str, scratch: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{scratch / 'metering.db'}"
        return
    schema = f"bench_metering_{uuid.uuid4().hex[:8]}"
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


def seed(engine: Engine, instances: int, orgs: int, rng: random.Random) -> tuple[list[uuid.UUID], dict[uuid.UUID, int]]:
    """Funded wallets with a rolling hold, and `instances` meters charged up to T; returns
    the organizations and each one's expected charge for the next minute."""
    Base.metadata.create_all(engine, tables=TABLES)
    organizations = [uuid.uuid4() for _ in range(orgs)]
    expected: dict[uuid.UUID, int] = dict.fromkeys(organizations, 0)
    since = T - timedelta(hours=1)
    with Session(engine) as session, session.begin():
        promotions = published.platform_account(session, "promotions", now=since)
        holds_account = published.platform_account(session, "holds", now=since)
        for org in organizations:
            wallet = published.wallet(session, org, now=since)
            published.transfer(
                session,
                id=uuid.uuid4(),
                debit=promotions,
                credit=wallet,
                amount=10**9,
                code="promotion",
                organization_id=org,
                now=since,
            )
            published.transfer(
                session,
                id=uuid.uuid4(),
                debit=wallet,
                credit=holds_account,
                amount=1000,
                code="hold",
                reference="metering:rolling",
                organization_id=org,
                pending=True,
                timeout_seconds=86_400,
                now=since,
            )
        session.execute(
            insert(MeteringOrg.__table__),
            [
                {
                    "organization_id": o,
                    "version": 0,
                    "seq": 1,
                    "uncollected": 0,
                    "low": False,
                    "depleted": False,
                    "updated_at": T,
                }
                for o in organizations
            ],
        )
    meters: list[dict[str, Any]] = []
    usage: list[dict[str, Any]] = []
    for n in range(instances):
        org = organizations[n % orgs]
        rate = rng.choice(PRICES)
        units = rate * 3600
        rid = uuid.uuid4()
        meters.append(
            {
                "resource_id": rid,
                "organization_id": org,
                "resource_type": "instance",
                "description": "cpu-2",
                "label": None,
                "currency": "USD",
                "period_seconds": 3600,
                "running": True,
                "rate": rate,
                "charged_until": T,
                "charged_units": units,
                "charged_amount": units // 3600,
                "pending": False,
                "dirty_from": None,
                "active": True,
                "created_at": since,
                "updated_at": T,
            }
        )
        usage.append(
            {
                "resource_id": rid,
                "day": T.date(),
                "organization_id": org,
                "resource_type": "instance",
                "description": "cpu-2",
                "currency": "USD",
                "seconds": 3600,
                "units": units,
                "amount": units // 3600,
                "updated_at": T,
            }
        )
        expected[org] += (units + rate * 60) // 3600 - units // 3600
    with Session(engine) as session, session.begin():
        for start in range(0, instances, 10_000):
            session.execute(insert(Meter.__table__), meters[start : start + 10_000])
            session.execute(insert(UsageRecord.__table__), usage[start : start + 10_000])
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    return organizations, expected


def baseline(engine: Engine) -> float:
    """One statement touching every meter, rolled back."""
    meters = Meter.__table__
    with Session(engine) as session:
        started = time.perf_counter()
        session.execute(
            update(meters).values(
                charged_until=T + timedelta(seconds=60), charged_units=meters.c.charged_units + meters.c.rate * 60
            )
        )
        session.flush()
        elapsed = time.perf_counter() - started
        session.rollback()
    return elapsed


def bench(backend: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with fresh_database(backend, args.pg_url, scratch) as url:
        engine = make_engine(url)
        started = time.perf_counter()
        organizations, expected = seed(engine, args.instances, args.orgs, rng)
        seeded = time.perf_counter() - started
        floor = baseline(engine)
        sessions = sessionmaker(engine, expire_on_commit=False)
        settings = Settings(database_url=url, billing_tick_seconds=60, billing_low_balance_threshold=500)
        first = metering.tick(sessions, settings, now=T + timedelta(seconds=60))
        second = metering.tick(sessions, settings, now=T + timedelta(seconds=120))
        with sessions() as session:
            problems = published.check_invariants(session)
            charged = {
                o: published.wallet_balance(session, o).credits_posted
                - published.wallet_balance(session, o).debits_posted
                for o in organizations[:50]
            }
        first_ok = first.charged == sum(expected.values()) and first.failed == 0 and first.meters == args.instances
        engine.dispose()
    sample_ok = all(charged[o] <= 10**9 - expected[o] for o in charged)
    return {
        "backend": backend,
        "seeded": seeded,
        "baseline": floor,
        "tick": first.seconds,
        "tick2": second.seconds,
        "orgs": first.charged_organizations,
        "meters": first.meters,
        "charged": first.charged,
        "ok": first_ok and sample_ok and not problems,
        "problems": problems[:3],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG)
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--orgs", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    print(
        f"metering tick: {args.instances:,} running instances over {args.orgs:,} organizations "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    print(
        f"{'backend':<11} {'seed s':>7} {'bulk UPDATE s':>14} {'tick s':>7} {'2nd tick s':>11} "
        f"{'meters/s':>9} {'orgs':>5} {'charged':>9}  checks"
    )
    failed = False
    with tempfile.TemporaryDirectory() as scratch:
        for backend in backends:
            r = bench(backend, args, Path(scratch))
            failed |= not r["ok"]
            print(
                f"{r['backend']:<11} {r['seeded']:>7.1f} {r['baseline']:>14.2f} {r['tick']:>7.2f} {r['tick2']:>11.2f} "
                f"{r['meters'] / r['tick']:>9,.0f} {r['orgs']:>5} {r['charged']:>9}  "
                f"{'ok' if r['ok'] else 'FAILED ' + '; '.join(r['problems'])}"
            )
    print("target: a tick over 100,000 running instances in ≤ 10 s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
