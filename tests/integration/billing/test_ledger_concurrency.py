"""The ledger under concurrent writers, on SQLite and PostgreSQL: threads, each with its own
session and transaction, race for the same hold and the same wallet. Exactly one resolution
of a hold wins; concurrent debits never overdraw; repeats of one transfer id land once; and
transfers crossing the same accounts in opposite directions never deadlock."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from handlers.billing import ledger
from handlers.billing.ledger import LedgerError
from handlers.billing.tables import LedgerTransfer
from hangar.db import make_engine, make_session_factory

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _race(sessions: sessionmaker[Session], calls: list[Callable[[Session], Any]]) -> list[Any]:
    """Run each call in its own thread and transaction, all released at once; each result is
    the call's value (committed) or the LedgerError it raised (rolled back)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        with sessions() as session:
            try:
                results[i] = calls[i](session)
                session.commit()
            except LedgerError as exc:
                session.rollback()
                results[i] = exc
            except Exception as exc:
                session.rollback()
                results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    unexpected = [r for r in results if isinstance(r, Exception) and not isinstance(r, LedgerError)]
    assert not unexpected, unexpected
    return results


def _setup(sessions: sessionmaker[Session], funds: int) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    with sessions() as session, session.begin():
        org = uuid.uuid4()
        wallet = ledger.wallet(session, org, now=NOW)
        clearing = ledger.platform_account(session, "psp_clearing", now=NOW)
        ledger.platform_account(session, "revenue", now=NOW)
        ledger.platform_account(session, "holds", now=NOW)
        ledger.transfer(session, id=uuid.uuid4(), debit=clearing, credit=wallet, amount=funds, code="top_up", now=NOW)
    return org, wallet, clearing


def _invariants(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        assert ledger.check_invariants(session) == []


def test_two_posts_of_one_hold_exactly_one_wins(sessions: sessionmaker[Session]) -> None:
    org, wallet, _ = _setup(sessions, 1_000)
    with sessions() as session, session.begin():
        holds = ledger.platform_account(session, "holds", now=NOW)
        hold = ledger.transfer(
            session, id=uuid.uuid4(), debit=wallet, credit=holds, amount=500, code="hold", pending=True, now=NOW
        )
    for _ in range(3):  # a few rounds: different interleavings
        calls: list[Callable[[Session], Any]] = [
            lambda s: ledger.post_pending(s, id=uuid.uuid4(), pending_id=hold.id, amount=300, now=NOW),
            lambda s: ledger.post_pending(s, id=uuid.uuid4(), pending_id=hold.id, amount=200, now=NOW),
            lambda s: ledger.void_pending(s, id=uuid.uuid4(), pending_id=hold.id, now=NOW),
        ]
        results = _race(sessions, calls)
        winners = [r for r in results if not isinstance(r, LedgerError)]
        losers = [r for r in results if isinstance(r, LedgerError)]
        assert len(winners) <= 1
        assert {e.code for e in losers} <= {"already_posted", "already_voided"}
    with sessions() as session:
        resolutions = session.scalar(
            select(func.count()).select_from(LedgerTransfer).where(LedgerTransfer.pending_id == hold.id)
        )
        assert resolutions == 1
        b = ledger.wallet_balance(session, org)
        assert b.debits_pending == 0 and b.posted in (1_000, 700, 800)
    _invariants(sessions)


def test_concurrent_debits_never_overdraw_a_wallet(sessions: sessionmaker[Session]) -> None:
    org, wallet, _ = _setup(sessions, 1_000)
    with sessions() as session:
        revenue = ledger.platform_account(session, "revenue", now=NOW)
    calls: list[Callable[[Session], Any]] = [
        (lambda s: ledger.transfer(s, id=uuid.uuid4(), debit=wallet, credit=revenue, amount=150, code="usage", now=NOW))
        for _ in range(12)
    ]
    results = _race(sessions, calls)
    accepted = [r for r in results if not isinstance(r, LedgerError)]
    refused = [r for r in results if isinstance(r, LedgerError)]
    assert len(accepted) == 6  # 6 × 150 = 900 ≤ 1000 < 7 × 150
    assert {e.code for e in refused} == {"insufficient_funds"}
    with sessions() as session:
        assert ledger.wallet_balance(session, org).posted == 100
    _invariants(sessions)


def test_concurrent_repeats_of_one_transfer_id_land_once(sessions: sessionmaker[Session]) -> None:
    org, wallet, clearing = _setup(sessions, 1)
    tid = uuid.uuid4()
    calls: list[Callable[[Session], Any]] = [
        (lambda s: ledger.transfer(s, id=tid, debit=clearing, credit=wallet, amount=250, code="top_up", now=NOW))
        for _ in range(6)
    ]
    results = _race(sessions, calls)
    assert all(not isinstance(r, Exception) and r.id == tid for r in results), results
    with sessions() as session:
        assert ledger.wallet_balance(session, org).posted == 251
    _invariants(sessions)


def test_opposite_transfers_between_two_wallets_do_not_deadlock(sessions: sessionmaker[Session]) -> None:
    a_org, a, _ = _setup(sessions, 10_000)
    b_org, b, _ = _setup(sessions, 10_000)
    calls: list[Callable[[Session], Any]] = []
    for i in range(16):
        debit, credit = (a, b) if i % 2 else (b, a)
        calls.append(
            lambda s, d=debit, c=credit: ledger.transfer(
                s, id=uuid.uuid4(), debit=d, credit=c, amount=10, code="adjustment", now=NOW
            )
        )
    results = _race(sessions, calls)
    assert not [r for r in results if isinstance(r, Exception)]
    with sessions() as session:
        assert ledger.wallet_balance(session, a_org).posted == 10_000
        assert ledger.wallet_balance(session, b_org).posted == 10_000
    _invariants(sessions)


def test_concurrent_expiry_sweeps_expire_each_hold_once(sessions: sessionmaker[Session]) -> None:
    org, wallet, _ = _setup(sessions, 1_000)
    with sessions() as session, session.begin():
        holds = ledger.platform_account(session, "holds", now=NOW)
        for _ in range(10):
            ledger.transfer(
                session,
                id=uuid.uuid4(),
                debit=wallet,
                credit=holds,
                amount=50,
                code="hold",
                pending=True,
                timeout_seconds=1,
                now=NOW,
            )
    later = datetime(2026, 11, 28, 13, 0, tzinfo=UTC)
    results = _race(sessions, [lambda s: ledger.expire_pending(s, now=later) for _ in range(4)])
    assert sum(results) == 10
    with sessions() as session:
        assert ledger.wallet_balance(session, org).available == 1_000
    _invariants(sessions)
