"""The ledger's contract, one refusal code at a time (handlers/billing/ledger.py): each
refusal is a LedgerError with its code and leaves the ledger exactly as it was."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from handlers.billing import ledger
from handlers.billing.ledger import InsufficientFunds, LedgerError
from handlers.billing.tables import LedgerAccount, LedgerTransfer

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    with sessions() as s:
        yield s


def _snapshot(session: Session) -> tuple[Any, ...]:
    accounts = sorted(
        (a.id, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted, a.credit_limit)
        for a in session.execute(select(ledger.ACCOUNTS)).all()
    )
    transfers = sorted(t.id for t in session.execute(select(ledger.TRANSFERS.c.id)).all())
    return tuple(accounts), tuple(transfers)


def _refused(session: Session, code: str, call: Callable[[], Any]) -> LedgerError:
    before = _snapshot(session)
    with pytest.raises(LedgerError) as caught:
        call()
    assert caught.value.code == code, caught.value
    assert _snapshot(session) == before, "a refused operation changed the ledger"
    assert ledger.check_invariants(session) == []
    return caught.value


def _funded(session: Session, amount: int = 10_000) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """(org, wallet, clearing) with `amount` topped up into the wallet."""
    org = uuid.uuid4()
    wallet = ledger.wallet(session, org, now=NOW)
    clearing = ledger.platform_account(session, "psp_clearing", now=NOW)
    if amount:
        ledger.transfer(session, id=uuid.uuid4(), debit=clearing, credit=wallet, amount=amount, code="top_up", now=NOW)
    return org, wallet, clearing


def test_a_transfer_moves_posted_totals_and_keeps_every_invariant(session: Session) -> None:
    org, wallet, clearing = _funded(session, 5_000)
    revenue = ledger.platform_account(session, "revenue", now=NOW)
    view = ledger.transfer(
        session, id=uuid.uuid4(), debit=wallet, credit=revenue, amount=1_234, code="usage", reference="x", now=NOW
    )
    assert (view.status, view.pending, view.amount, view.currency) == ("posted", False, 1_234, "USD")
    b = ledger.wallet_balance(session, org)
    assert (b.posted, b.available, b.debits_posted, b.credits_posted) == (3_766, 3_766, 1_234, 5_000)
    assert ledger.balance(session, clearing).posted == -5_000  # platform accounts may go negative
    assert ledger.check_invariants(session) == []


def test_an_identical_repeat_returns_the_first_transfer_and_moves_nothing(session: Session) -> None:
    _, wallet, clearing = _funded(session, 0)
    tid = uuid.uuid4()
    first = ledger.transfer(session, id=tid, debit=clearing, credit=wallet, amount=700, code="top_up", now=NOW)
    again = ledger.transfer(
        session, id=tid, debit=clearing, credit=wallet, amount=700, code="top_up", now=NOW + timedelta(hours=1)
    )
    assert again == first
    assert ledger.balance(session, wallet).posted == 700


def test_the_same_id_with_other_fields_is_refused(session: Session) -> None:
    _, wallet, clearing = _funded(session, 0)
    tid = uuid.uuid4()
    ledger.transfer(session, id=tid, debit=clearing, credit=wallet, amount=700, code="top_up", now=NOW)
    error = _refused(
        session,
        "exists_with_different_fields",
        lambda: ledger.transfer(session, id=tid, debit=clearing, credit=wallet, amount=701, code="top_up", now=NOW),
    )
    assert "amount" in error.message


def test_a_wallet_cannot_overdraw(session: Session) -> None:
    org, wallet, _ = _funded(session, 1_000)
    revenue = ledger.platform_account(session, "revenue", now=NOW)
    error = _refused(
        session,
        "insufficient_funds",
        lambda: ledger.transfer(
            session, id=uuid.uuid4(), debit=wallet, credit=revenue, amount=1_001, code="usage", now=NOW
        ),
    )
    assert isinstance(error, InsufficientFunds)
    # exactly the balance is fine, and then nothing more
    ledger.transfer(session, id=uuid.uuid4(), debit=wallet, credit=revenue, amount=1_000, code="usage", now=NOW)
    assert ledger.wallet_balance(session, org).available == 0


def test_pending_debits_count_against_the_balance_and_pending_credits_do_not(session: Session) -> None:
    org, wallet, clearing = _funded(session, 1_000)
    holds = ledger.platform_account(session, "holds", now=NOW)
    ledger.transfer(
        session, id=uuid.uuid4(), debit=wallet, credit=holds, amount=600, code="hold", pending=True, now=NOW
    )
    ledger.transfer(
        session, id=uuid.uuid4(), debit=clearing, credit=wallet, amount=5_000, code="top_up", pending=True, now=NOW
    )
    assert ledger.wallet_balance(session, org).available == 400
    _refused(
        session,
        "insufficient_funds",
        lambda: ledger.transfer(session, id=uuid.uuid4(), debit=wallet, credit=holds, amount=401, code="hold", now=NOW),
    )


def test_a_credit_limit_lets_a_wallet_go_that_far_below_zero(session: Session) -> None:
    org, wallet, _ = _funded(session, 100)
    revenue = ledger.platform_account(session, "revenue", now=NOW)
    b = ledger.set_credit_limit(session, org, 500, now=NOW)
    assert (b.credit_limit, b.available) == (500, 600)
    ledger.transfer(session, id=uuid.uuid4(), debit=wallet, credit=revenue, amount=600, code="usage", now=NOW)
    assert ledger.wallet_balance(session, org).posted == -500
    _refused(
        session,
        "insufficient_funds",
        lambda: ledger.transfer(
            session, id=uuid.uuid4(), debit=wallet, credit=revenue, amount=1, code="usage", now=NOW
        ),
    )
    # the limit cannot be lowered below what the wallet already owes
    _refused(session, "credit_limit_below_balance", lambda: ledger.set_credit_limit(session, org, 499, now=NOW))
    _refused(session, "invalid_amount", lambda: ledger.set_credit_limit(session, org, -1, now=NOW))


def test_post_settles_part_of_a_hold_and_releases_the_rest(session: Session) -> None:
    org, wallet, _ = _funded(session, 1_000)
    holds = ledger.platform_account(session, "holds", now=NOW)
    hold = ledger.transfer(
        session, id=uuid.uuid4(), debit=wallet, credit=holds, amount=800, code="hold", pending=True, now=NOW
    )
    assert ledger.wallet_balance(session, org).available == 200
    post = ledger.post_pending(session, id=uuid.uuid4(), pending_id=hold.id, amount=300, now=NOW)
    assert (post.status, post.amount, post.pending_id) == ("posted", 300, hold.id)
    b = ledger.wallet_balance(session, org)
    assert (b.posted, b.debits_pending, b.available) == (700, 0, 700)
    got = ledger.get_transfer(session, hold.id)
    assert got is not None and got.status == "posted_pending"
    assert ledger.check_invariants(session) == []


def test_a_hold_resolves_once(session: Session) -> None:
    _, wallet, _ = _funded(session, 1_000)
    holds = ledger.platform_account(session, "holds", now=NOW)

    def hold() -> uuid.UUID:
        return ledger.transfer(
            session, id=uuid.uuid4(), debit=wallet, credit=holds, amount=100, code="hold", pending=True, now=NOW
        ).id

    posted, voided = hold(), hold()
    ledger.post_pending(session, id=uuid.uuid4(), pending_id=posted, now=NOW)
    ledger.void_pending(session, id=uuid.uuid4(), pending_id=voided, now=NOW)
    for pending_id, code in ((posted, "already_posted"), (voided, "already_voided")):
        _refused(
            session, code, lambda p=pending_id: ledger.post_pending(session, id=uuid.uuid4(), pending_id=p, now=NOW)
        )
        _refused(
            session, code, lambda p=pending_id: ledger.void_pending(session, id=uuid.uuid4(), pending_id=p, now=NOW)
        )


def test_the_database_refuses_a_second_resolution_whatever_the_code_does(session: Session) -> None:
    _, wallet, _ = _funded(session, 1_000)
    holds = ledger.platform_account(session, "holds", now=NOW)
    hold = ledger.transfer(
        session, id=uuid.uuid4(), debit=wallet, credit=holds, amount=100, code="hold", pending=True, now=NOW
    )
    ledger.void_pending(session, id=uuid.uuid4(), pending_id=hold.id, now=NOW)
    session.commit()
    row = {c: getattr(hold, c) for c in ("debit_account_id", "credit_account_id", "amount", "currency", "code")}
    with pytest.raises(IntegrityError):
        session.execute(
            ledger.TRANSFERS.insert().values(id=uuid.uuid4(), kind="post", pending_id=hold.id, created_at=NOW, **row)
        )
    session.rollback()


def test_the_database_refuses_an_overdrawn_wallet_and_a_non_positive_amount(session: Session) -> None:
    _, wallet, clearing = _funded(session, 100)
    session.commit()
    with pytest.raises(IntegrityError):
        session.execute(update(LedgerAccount).where(LedgerAccount.id == wallet).values(debits_posted=101))
    session.rollback()
    with pytest.raises(IntegrityError):
        session.execute(
            ledger.TRANSFERS.insert().values(
                id=uuid.uuid4(),
                debit_account_id=clearing,
                credit_account_id=wallet,
                amount=0,
                currency="USD",
                code="top_up",
                kind="single",
                created_at=NOW,
            )
        )
    session.rollback()


def test_a_repeated_post_is_idempotent_and_a_different_one_refused(session: Session) -> None:
    _, wallet, _ = _funded(session, 1_000)
    holds = ledger.platform_account(session, "holds", now=NOW)
    hold = ledger.transfer(
        session, id=uuid.uuid4(), debit=wallet, credit=holds, amount=100, code="hold", pending=True, now=NOW
    )
    pid = uuid.uuid4()
    first = ledger.post_pending(session, id=pid, pending_id=hold.id, amount=60, now=NOW)
    assert ledger.post_pending(session, id=pid, pending_id=hold.id, amount=60, now=NOW) == first
    assert ledger.post_pending(session, id=pid, pending_id=hold.id, now=NOW) == first  # None = "as before"
    _refused(
        session,
        "exists_with_different_fields",
        lambda: ledger.post_pending(session, id=pid, pending_id=hold.id, amount=61, now=NOW),
    )
    _refused(
        session,
        "exists_with_different_fields",
        lambda: ledger.void_pending(session, id=pid, pending_id=hold.id, now=NOW),
    )


def test_post_more_than_held_unknown_hold_and_a_non_hold_are_refused(session: Session) -> None:
    _, wallet, clearing = _funded(session, 1_000)
    holds = ledger.platform_account(session, "holds", now=NOW)
    hold = ledger.transfer(
        session, id=uuid.uuid4(), debit=wallet, credit=holds, amount=100, code="hold", pending=True, now=NOW
    )
    _refused(
        session,
        "exceeds_pending_amount",
        lambda: ledger.post_pending(session, id=uuid.uuid4(), pending_id=hold.id, amount=101, now=NOW),
    )
    _refused(
        session,
        "pending_not_found",
        lambda: ledger.post_pending(session, id=uuid.uuid4(), pending_id=uuid.uuid4(), now=NOW),
    )
    single = ledger.transfer(session, id=uuid.uuid4(), debit=clearing, credit=wallet, amount=5, code="top_up", now=NOW)
    _refused(
        session,
        "pending_not_found",
        lambda: ledger.void_pending(session, id=uuid.uuid4(), pending_id=single.id, now=NOW),
    )


def test_holds_expire_once_after_their_timeout(session: Session) -> None:
    org, wallet, _ = _funded(session, 1_000)
    holds = ledger.platform_account(session, "holds", now=NOW)
    hold = ledger.transfer(
        session,
        id=uuid.uuid4(),
        debit=wallet,
        credit=holds,
        amount=400,
        code="hold",
        pending=True,
        timeout_seconds=60,
        now=NOW,
    )
    assert hold.expires_at == NOW + timedelta(seconds=60)
    assert ledger.expire_pending(session, now=NOW + timedelta(seconds=59)) == 0
    # overdue but not yet swept: posting it is refused already
    _refused(
        session,
        "expired",
        lambda: ledger.post_pending(session, id=uuid.uuid4(), pending_id=hold.id, now=NOW + timedelta(seconds=60)),
    )
    assert ledger.expire_pending(session, now=NOW + timedelta(seconds=60)) == 1
    assert ledger.expire_pending(session, now=NOW + timedelta(seconds=61)) == 0
    assert ledger.wallet_balance(session, org).available == 1_000
    got = ledger.get_transfer(session, hold.id)
    assert got is not None and got.status == "expired"
    _refused(session, "expired", lambda: ledger.void_pending(session, id=uuid.uuid4(), pending_id=hold.id, now=NOW))
    assert ledger.check_invariants(session) == []


@pytest.mark.parametrize(
    ("code", "kwargs"),
    [
        ("invalid_amount", {"amount": 0}),
        ("invalid_amount", {"amount": -5}),
        ("invalid_amount", {"amount": 2**63}),
        ("same_account", {"same": True}),
        ("invalid_timeout", {"timeout_seconds": 10}),  # a timeout on a one-step transfer
        ("invalid_code", {"code": ""}),
        ("account_not_found", {"unknown": True}),
    ],
)
def test_malformed_transfers_are_refused(session: Session, code: str, kwargs: dict[str, Any]) -> None:
    _, wallet, clearing = _funded(session, 100)
    debit = clearing
    credit = wallet if not kwargs.pop("same", False) else clearing
    if kwargs.pop("unknown", False):
        credit = uuid.uuid4()
    args: dict[str, Any] = {"amount": 10, "code": "top_up", **kwargs}
    _refused(
        session,
        code,
        lambda: ledger.transfer(session, id=uuid.uuid4(), debit=debit, credit=credit, now=NOW, **args),
    )


def test_an_account_total_that_would_overflow_is_refused(session: Session) -> None:
    _, wallet, clearing = _funded(session, 0)
    ledger.transfer(session, id=uuid.uuid4(), debit=clearing, credit=wallet, amount=2**63 - 1, code="top_up", now=NOW)
    _refused(
        session,
        "invalid_amount",
        lambda: ledger.transfer(
            session, id=uuid.uuid4(), debit=clearing, credit=wallet, amount=1, code="top_up", now=NOW
        ),
    )


def test_signup_credit_is_posted_once_when_the_wallet_is_created(session: Session) -> None:
    org = uuid.uuid4()
    first = ledger.wallet(session, org, now=NOW, signup_credit=2_500)
    assert ledger.wallet(session, org, now=NOW, signup_credit=2_500) == first
    b = ledger.wallet_balance(session, org)
    assert b.posted == 2_500
    credits = session.scalars(select(LedgerTransfer).where(LedgerTransfer.code == "signup_credit")).all()
    assert [t.amount for t in credits] == [2_500]
    assert ledger.check_invariants(session) == []


def test_a_wallet_that_does_not_exist_reads_as_zero(session: Session) -> None:
    b = ledger.wallet_balance(session, uuid.uuid4())
    assert (b.account_id, b.posted, b.available, b.currency) == (None, 0, 0, "USD")


def test_accounts_in_different_currencies_do_not_mix(session: Session) -> None:
    _, wallet, _ = _funded(session, 100)
    eur = ledger.platform_account(session, "revenue", currency="EUR", now=NOW)
    _refused(
        session,
        "currency_mismatch",
        lambda: ledger.transfer(session, id=uuid.uuid4(), debit=wallet, credit=eur, amount=1, code="usage", now=NOW),
    )


def test_check_invariants_notices_a_tampered_total(session: Session) -> None:
    _, wallet, _ = _funded(session, 100)
    session.execute(update(LedgerAccount).where(LedgerAccount.id == wallet).values(credits_posted=150))
    problems = ledger.check_invariants(session)
    assert any("posted debits" in p for p in problems) and any("credits_posted is 150" in p for p in problems)
