"""`ledger.apply` decides a whole batch in memory; the reference is the same operations
applied one at a time, each reading the database as the previous one left it. Hypothesis
draws batches — top-ups, spends past the balance, holds, posts (also of holds made earlier
in the same batch, also for more than held), voids, expiries too early, repeated ids with
the same or other fields, malformed operations — and checks that both ways give the same
result for every operation, the same transfers and the same account totals, with the
ledger's invariants intact. Plus the batch-only guarantees: one lock statement whatever the
length, and the balances a batch reports."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from handlers.billing import ledger
from handlers.billing.ledger import LedgerError, NewTransfer, Resolution

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def world(sessions: sessionmaker[Session]) -> Iterator[tuple[Session, list[uuid.UUID], dict[str, uuid.UUID]]]:
    session = sessions()
    wallets = [ledger.wallet(session, uuid.uuid4(), now=NOW) for _ in range(3)]
    platform = {n: ledger.platform_account(session, n, now=NOW) for n in ("psp_clearing", "revenue", "holds")}
    old_hold = uuid.uuid4()  # a hold already stored, with a timeout the batches may pass
    ledger.transfer(
        session, id=uuid.uuid4(), debit=platform["psp_clearing"], credit=wallets[0], amount=500, code="top_up", now=NOW
    )
    ledger.transfer(
        session,
        id=old_hold,
        debit=wallets[0],
        credit=platform["holds"],
        amount=200,
        code="hold",
        pending=True,
        timeout_seconds=60,
        now=NOW,
    )
    platform["old_hold"] = old_hold
    yield session, wallets, platform
    session.rollback()
    session.close()


def operations(wallets: list[uuid.UUID], platform: dict[str, uuid.UUID]) -> st.SearchStrategy[list[Any]]:
    """Batches whose operations refer to each other: ids come from a pool of five, so
    repeats (same fields or other), posts of holds made earlier in the batch and second
    resolutions of one hold are common; spends past the balance, early expiries and
    malformed operations are mixed in."""
    ids = st.sampled_from([uuid.uuid4() for _ in range(5)])
    wallet = st.sampled_from(wallets)
    top_up = st.builds(
        NewTransfer,
        id=ids,
        debit=st.just(platform["psp_clearing"]),
        credit=wallet,
        amount=st.integers(1, 400),
        code=st.just("top_up"),
    )
    spend = st.builds(
        NewTransfer,
        id=ids,
        debit=wallet,
        credit=st.just(platform["revenue"]),
        amount=st.integers(1, 700),
        code=st.just("usage"),
    )
    hold = st.builds(
        NewTransfer,
        id=ids,
        debit=wallet,
        credit=st.just(platform["holds"]),
        amount=st.integers(1, 300),
        code=st.just("hold"),
        pending=st.just(True),
        timeout_seconds=st.none() | st.integers(1, 120),
    )
    accounts = st.sampled_from([*wallets, *platform.values()])  # old_hold is no account: account_not_found
    junk = st.builds(
        NewTransfer,
        id=ids,
        debit=accounts,
        credit=accounts,
        amount=st.integers(-1, 10**19),
        code=st.sampled_from(["usage", "", "x" * 40]),
        pending=st.booleans(),
        timeout_seconds=st.none() | st.integers(-1, 10**9),
    )
    resolution = st.builds(
        Resolution,
        id=ids,
        pending_id=ids | st.just(platform["old_hold"]),
        kind=st.sampled_from(["post", "post", "void", "expire", "nonsense"]),
        amount=st.none() | st.integers(1, 400),
    )
    return st.lists(
        st.one_of(top_up, spend, hold, hold, resolution, resolution, resolution, junk), min_size=1, max_size=14
    )


def _outcome(result: Any) -> tuple[Any, ...]:
    if isinstance(result, LedgerError):
        return ("refused", result.code)
    return ("done", result.id, result.kind, result.amount, result.status, result.pending_id)


def _state(session: Session) -> Any:
    accounts = sorted(
        tuple(r)
        for r in session.execute(select(ledger.ACCOUNTS.c.id, *(ledger.ACCOUNTS.c[c] for c in ledger._COLUMNS)))
    )
    transfers = sorted((r.id, r.kind, r.amount, r.pending_id) for r in session.execute(select(ledger.TRANSFERS)))
    open_ = sorted(session.execute(select(ledger.OPEN.c.pending_id)).scalars())
    return accounts, transfers, open_


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data(), later=st.integers(0, 120))
def test_a_batch_does_what_its_operations_do_one_at_a_time(world: Any, data: st.DataObject, later: int) -> None:
    session, wallets, platform = world
    batch_ops = data.draw(operations(wallets, platform))
    now = NOW + timedelta(seconds=later)

    one = session.begin_nested()
    singles = [ledger.apply(session, [op], now=now).results[0] for op in batch_ops]
    one_state = _state(session)
    one.rollback()

    together = session.begin_nested()
    batch = ledger.apply(session, batch_ops, now=now)
    batch_state = _state(session)
    problems = ledger.check_invariants(session)
    together.rollback()

    assert [_outcome(r) for r in batch.results] == [_outcome(r) for r in singles]
    assert batch_state == one_state
    assert problems == []


def test_one_lock_statement_however_long_the_batch(world: Any) -> None:
    session, wallets, platform = world
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    bind = session.connection()
    event.listen(bind, "before_cursor_execute", count)
    try:
        batch = ledger.apply(
            session,
            [NewTransfer(uuid.uuid4(), platform["psp_clearing"], wallets[i % 3], 10, "top_up") for i in range(200)],
            now=NOW,
        )
    finally:
        event.remove(bind, "before_cursor_execute", count)
    assert len(batch.written) == 200
    assert sum(1 for s in statements if "FOR UPDATE" in s or "WHERE 0" in s) <= 2  # SQLite: the write lock too
    assert len(statements) <= 12, statements


def test_a_batch_reports_the_balances_it_leaves(world: Any) -> None:
    session, wallets, platform = world
    hold = uuid.uuid4()
    batch = ledger.apply(
        session,
        [
            NewTransfer(uuid.uuid4(), platform["psp_clearing"], wallets[1], 300, "top_up"),
            NewTransfer(hold, wallets[1], platform["holds"], 120, "hold", pending=True, timeout_seconds=60),
            Resolution(uuid.uuid4(), hold, "post", 50),
            NewTransfer(uuid.uuid4(), wallets[1], platform["revenue"], 251, "usage"),  # 250 left: refused
        ],
        now=NOW,
    )
    assert [_outcome(r)[0] for r in batch.results] == ["done", "done", "done", "refused"]
    assert isinstance(batch.results[3], ledger.InsufficientFunds)
    assert batch.balances[wallets[1]] == ledger.balance(session, wallets[1])
    assert (batch.balances[wallets[1]].posted, batch.balances[wallets[1]].available) == (250, 250)
    with pytest.raises(ledger.InsufficientFunds):
        batch.views()
    assert ledger.check_invariants(session) == []
