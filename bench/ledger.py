"""Ledger benchmark: transfers per second with every invariant enforced, against plain
single-row inserts into a comparable table in the same run (the ceiling).

    .venv/bin/python -m bench.ledger                         # SQLite and PostgreSQL, 1 and 8 clients, 15 s a row
    .venv/bin/python -m bench.ledger --db postgresql --seconds 30 --clients 1,8,32
    .venv/bin/python -m bench.ledger --db sqlite --clients 1,4

What is measured (see bench/README.md, "Ledger"):
- a fresh database (an SQLite file, or a scratch PostgreSQL schema) with the billing tables;
  one funded wallet per client (a top-up from platform:psp_clearing), so no transfer is refused;
- `insert (ceiling)`: one INSERT of a row shaped like a transfer into `bench_plain_transfers`
  (same columns, primary key only), one row per transaction — what the database does for a
  write with no reads, no checks and no other rows touched;
- `transfer, hot account`: `handlers.billing.ledger.transfer` wallet → platform:revenue (every
  client charges the same platform account, as metering does), one transfer per transaction:
  lock both accounts (FOR UPDATE in id order; SQLite: the write lock), the idempotency read,
  the overdraft check, the transfer row, both accounts' totals;
- `transfer, own accounts`: the same, wallet → a second wallet of the client's own (no account
  shared between clients: the cost without contention);
- `… batched`: `--batch` transfers per transaction (each still a full `transfer()` call);
- `… batch API`: `--batch` transfers in one `ledger.apply` call per transaction (TigerBeetle's
  `create_transfers`: the same checks, decided in memory under one lock statement, written
  with one multi-row INSERT and one executemany of the totals — the way a metering tick
  charges a group of organizations); its ceiling is `insert (ceiling) multi-row`, the same
  number of rows in one multi-row INSERT per transaction;
- each scenario runs `--clients` threads (comma-separated: each count is a row), each with its
  own connection, for `--seconds`; transfers/s = transfers committed ÷ wall time (the common
  start to the last commit). The run ends with `check_invariants` (Σ debits = Σ credits,
  totals = Σ transfers, no overdraft); a broken invariant exits 1.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    Uuid,
    create_engine,
    make_url,
    text,
)
from sqlalchemy.orm import Session

from handlers.billing import ledger
from handlers.billing.tables import LedgerAccount, LedgerOpenPending, LedgerTransfer
from hangar.db import Base, make_engine

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
NOW = datetime(2026, 12, 1, tzinfo=UTC)
FUNDS = 10**12
TABLES = [Base.metadata.tables[t.__tablename__] for t in (LedgerAccount, LedgerTransfer, LedgerOpenPending)]

PLAIN_META = MetaData()
PLAIN = Table(
    "bench_plain_transfers",
    PLAIN_META,
    Column("id", Uuid, primary_key=True),
    Column("debit_account_id", Uuid),
    Column("credit_account_id", Uuid),
    Column("amount", BigInteger),
    Column("currency", String(3)),
    Column("code", String(32)),
    Column("reference", String(255)),
    Column("organization_id", Uuid),
    Column("kind", String(8)),
    Column("pending_id", Uuid),
    Column("expires_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True)),
)


@dataclass(frozen=True)
class Result:
    backend: str
    scenario: str
    clients: int
    batch: int  # rows per transaction; negative: written by one statement (multi-row, batch API)
    transfers: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.transfers / self.seconds if self.seconds else 0.0


@contextmanager
def fresh_database(backend: str, pg_url: str, scratch: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{scratch / f'ledger-{uuid.uuid4().hex[:8]}.db'}"
        return
    schema = f"bench_ledger_{uuid.uuid4().hex[:8]}"
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


def setup(engine: Engine, clients: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(wallet, second wallet) per client, each funded."""
    pairs = []
    with Session(engine) as s, s.begin():
        clearing = ledger.platform_account(s, "psp_clearing", now=NOW)
        ledger.platform_account(s, "revenue", now=NOW)
        for _ in range(clients):
            a = ledger.wallet(s, uuid.uuid4(), now=NOW)
            b = ledger.wallet(s, uuid.uuid4(), now=NOW)
            ledger.transfer(s, id=uuid.uuid4(), debit=clearing, credit=a, amount=FUNDS, code="top_up", now=NOW)
            pairs.append((a, b))
    return pairs


def run_threads(
    engine: Engine, clients: int, seconds: float, batch: int, work: Callable[[Session, int], int]
) -> tuple[int, float]:
    """Every client commits transactions of `batch` calls of `work` until `seconds` have
    passed; (rows `work` said it wrote, committed; wall time from the common start to the
    last commit)."""
    barrier = threading.Barrier(clients + 1)
    errors: list[BaseException] = []
    counts = [0] * clients

    def client(i: int) -> None:
        try:
            with Session(engine) as s:
                barrier.wait()
                deadline = time.perf_counter() + seconds
                while time.perf_counter() < deadline:
                    done = 0
                    with s.begin():
                        for _ in range(batch):
                            done += work(s, i)
                    counts[i] += done
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return sum(counts), elapsed


def bench(backend: str, url: str, clients: int, seconds: float, batch: int) -> list[Result]:
    engine = make_engine(url, pool_size=clients + 2, max_overflow=4) if backend == "postgresql" else make_engine(url)
    Base.metadata.create_all(engine, tables=TABLES)
    PLAIN_META.create_all(engine)
    pairs = setup(engine, clients)
    revenue = ledger.account_id("platform:revenue")

    def plain_row(i: int) -> dict[str, object]:
        return {
            "id": uuid.uuid4(),
            "debit_account_id": pairs[i][0],
            "credit_account_id": revenue,
            "amount": 1,
            "currency": "USD",
            "code": "usage",
            "reference": None,
            "organization_id": None,
            "kind": "single",
            "pending_id": None,
            "expires_at": None,
            "created_at": NOW,
        }

    def plain(s: Session, i: int) -> int:
        s.execute(PLAIN.insert().values(**plain_row(i)))
        return 1

    def plain_rows(s: Session, i: int) -> int:
        s.execute(PLAIN.insert(), [plain_row(i) for _ in range(batch)])
        return batch

    def hot(s: Session, i: int) -> int:
        ledger.transfer(s, id=uuid.uuid4(), debit=pairs[i][0], credit=revenue, amount=1, code="usage", now=NOW)
        return 1

    def own(s: Session, i: int) -> int:
        ledger.transfer(s, id=uuid.uuid4(), debit=pairs[i][0], credit=pairs[i][1], amount=1, code="adjustment", now=NOW)
        return 1

    def applied(s: Session, operations: list[ledger.Operation]) -> int:
        done = ledger.apply(s, operations, now=NOW)
        done.views()  # a refusal would raise: every transfer of the batch must have been made
        return len(done.written)

    def hot_batch(s: Session, i: int) -> int:
        return applied(s, [ledger.NewTransfer(uuid.uuid4(), pairs[i][0], revenue, 1, "usage") for _ in range(batch)])

    def own_batch(s: Session, i: int) -> int:
        return applied(
            s, [ledger.NewTransfer(uuid.uuid4(), pairs[i][0], pairs[i][1], 1, "adjustment") for _ in range(batch)]
        )

    # (name, work, calls per transaction, rows per transaction: the ceiling's key)
    scenarios: list[tuple[str, Callable[[Session, int], int], int, int]] = [
        ("insert (ceiling)", plain, 1, 1),
        ("transfer, hot account", hot, 1, 1),
        ("transfer, own accounts", own, 1, 1),
        ("insert (ceiling) batched", plain, batch, batch),
        ("transfer, hot account batched", hot, batch, batch),
        ("transfer, own accounts batched", own, batch, batch),
        ("insert (ceiling) multi-row", plain_rows, 1, -batch),
        ("transfer, hot account batch API", hot_batch, 1, -batch),
        ("transfer, own accounts batch API", own_batch, 1, -batch),
    ]
    results = []
    for name, work, calls, size in scenarios:
        done, elapsed = run_threads(engine, clients, seconds, calls, work)
        results.append(Result(backend, name, clients, size, done, elapsed))
        print(f"  {backend:<10} {name:<34} clients={clients} batch={abs(size)}: {results[-1].rate:,.0f}/s", flush=True)
    with Session(engine) as s:
        problems = ledger.check_invariants(s)
    engine.dispose()
    if problems:
        print("INVARIANTS BROKEN:", *problems[:10], sep="\n  ")
        raise SystemExit(1)
    return results


def report(results: list[Result]) -> None:
    ceilings = {(r.backend, r.clients, r.batch): r.rate for r in results if r.scenario.startswith("insert")}
    print()
    print("| backend | scenario | clients | per txn | transfers | seconds | transfers/s | of ceiling |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ceiling = ceilings.get((r.backend, r.clients, r.batch))
        share = f"{r.rate / ceiling:.0%}" if ceiling and not r.scenario.startswith("insert") else "—"
        backend = "SQLite" if r.backend == "sqlite" else "PostgreSQL"
        print(
            f"| {backend} | {r.scenario} | {r.clients} | {abs(r.batch)} | {r.transfers:,} | {r.seconds:.2f} | "
            f"{r.rate:,.0f} | {share} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help=f"PostgreSQL to make a scratch schema in ({DEFAULT_PG})")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long each scenario runs")
    parser.add_argument("--clients", default="1,8", help="concurrent clients, comma-separated (one row each)")
    parser.add_argument("--batch", type=int, default=100, help="transfers per transaction in the batched rows")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    scratch = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    results: list[Result] = []
    try:
        for backend in backends:
            for clients in (int(c) for c in args.clients.split(",")):
                with fresh_database(backend, args.pg_url, scratch) as url:
                    results += bench(backend, url, clients, args.seconds, args.batch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
