"""Property-based tests of the ledger (hypothesis RuleBasedStateMachine): random top-ups,
spends, holds, partial posts, voids, expiries, refund-like reverse transfers, repeated ids
and credit-limit changes against a plain Python model of the four totals. After every step
the database agrees with the model and `check_invariants` finds nothing; a refused operation
changed nothing. Bounded (examples × steps) so it runs in seconds; one session per example,
rolled back at the end."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from handlers.billing import ledger
from handlers.billing.ledger import LedgerError

pytestmark = pytest.mark.postgres

START = datetime(2026, 11, 1, tzinfo=UTC)
amounts = st.integers(min_value=1, max_value=5_000)


@dataclass
class Model:
    """What each account's totals must be."""

    totals: dict[uuid.UUID, list[int]] = field(default_factory=dict)  # dp, dpo, cp, cpo
    limit: dict[uuid.UUID, int] = field(default_factory=dict)
    wallets: set[uuid.UUID] = field(default_factory=set)

    def fits(self, account: uuid.UUID, amount: int) -> bool:
        if account not in self.wallets:
            return True
        dp, dpo, _, cpo = self.totals[account]
        return dp + dpo + amount <= cpo + self.limit[account]

    def move(self, debit: uuid.UUID, credit: uuid.UUID, amount: int, *, pending: bool) -> None:
        i = 0 if pending else 1
        self.totals[debit][i] += amount
        self.totals[credit][i + 2] += amount

    def resolve(self, debit: uuid.UUID, credit: uuid.UUID, held: int, posted: int) -> None:
        self.totals[debit][0] -= held
        self.totals[credit][2] -= held
        self.totals[debit][1] += posted
        self.totals[credit][3] += posted


@dataclass(frozen=True)
class Hold:
    id: uuid.UUID
    debit: uuid.UUID
    credit: uuid.UUID
    amount: int
    expires_at: datetime | None


@dataclass(frozen=True)
class Done:
    """A transfer made, for repeating its id."""

    id: uuid.UUID
    debit: uuid.UUID
    credit: uuid.UUID
    amount: int
    code: str


def ledger_machine(sessions: sessionmaker[Session]) -> type[RuleBasedStateMachine]:
    class LedgerMachine(RuleBasedStateMachine):
        holds = Bundle("holds")
        done = Bundle("done")

        def __init__(self) -> None:
            super().__init__()
            self.session = sessions()
            self.now = START
            self.model = Model()
            self.orgs = [uuid.uuid4() for _ in range(3)]
            self.wallet_ids = [ledger.wallet(self.session, org, now=self.now) for org in self.orgs]
            names = ("psp_clearing", "revenue", "holds", "promotions")
            # Fresh platform accounts per example would collide (deterministic ids): read
            # their totals as the starting point instead.
            self.platform = {n: ledger.platform_account(self.session, n, now=self.now) for n in names}
            for account in [*self.wallet_ids, *self.platform.values()]:
                b = ledger.balance(self.session, account)
                self.model.totals[account] = [b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted]
                self.model.limit[account] = b.credit_limit
            self.model.wallets.update(self.wallet_ids)
            self.open: dict[uuid.UUID, Hold] = {}

        def teardown(self) -> None:
            self.session.rollback()
            self.session.close()

        # -- helpers ---------------------------------------------------------------------------

        def _snapshot(self) -> Any:
            return sorted(tuple(r) for r in self.session.execute(select(ledger.ACCOUNTS)).all()), sorted(
                r.id for r in self.session.execute(select(ledger.TRANSFERS.c.id)).all()
            )

        def _refused(self, call: Callable[[], Any], *codes: str) -> None:
            before = self._snapshot()
            try:
                call()
            except LedgerError as exc:
                assert exc.code in codes, exc
            else:
                raise AssertionError(f"expected a refusal {codes}")
            assert self._snapshot() == before, "a refused operation changed the ledger"

        def _transfer(self, debit: uuid.UUID, credit: uuid.UUID, amount: int, code: str, **kw: Any) -> Done | None:
            tid = uuid.uuid4()
            pending = kw.get("pending", False)
            if not self.model.fits(debit, amount):
                self._refused(
                    lambda: ledger.transfer(
                        self.session, id=tid, debit=debit, credit=credit, amount=amount, code=code, now=self.now, **kw
                    ),
                    "insufficient_funds",
                )
                return None
            ledger.transfer(
                self.session, id=tid, debit=debit, credit=credit, amount=amount, code=code, now=self.now, **kw
            )
            self.model.move(debit, credit, amount, pending=pending)
            return Done(tid, debit, credit, amount, code)

        # -- rules -----------------------------------------------------------------------------

        @rule(target=done, w=st.integers(0, 2), amount=amounts)
        def top_up(self, w: int, amount: int) -> Any:
            return self._transfer(self.platform["psp_clearing"], self.wallet_ids[w], amount, "top_up")

        @rule(target=done, w=st.integers(0, 2), amount=amounts)
        def spend(self, w: int, amount: int) -> Any:
            return self._transfer(self.wallet_ids[w], self.platform["revenue"], amount, "usage")

        @rule(target=done, w=st.integers(0, 2), amount=amounts)
        def refund(self, w: int, amount: int) -> Any:
            # the reverse of a top-up: a correction is a new transfer, never an update
            return self._transfer(self.wallet_ids[w], self.platform["psp_clearing"], amount, "refund")

        @rule(target=done, a=st.integers(0, 2), b=st.integers(0, 2), amount=amounts)
        def between_wallets(self, a: int, b: int, amount: int) -> Any:
            if a == b:
                self._refused(
                    lambda: ledger.transfer(
                        self.session,
                        id=uuid.uuid4(),
                        debit=self.wallet_ids[a],
                        credit=self.wallet_ids[a],
                        amount=amount,
                        code="adjustment",
                        now=self.now,
                    ),
                    "same_account",
                )
                return None
            return self._transfer(self.wallet_ids[a], self.wallet_ids[b], amount, "adjustment")

        @rule(target=holds, w=st.integers(0, 2), amount=amounts, timeout=st.none() | st.integers(1, 600))
        def hold(self, w: int, amount: int, timeout: int | None) -> Any:
            debit, credit = self.wallet_ids[w], self.platform["holds"]
            made = self._transfer(debit, credit, amount, "hold", pending=True, timeout_seconds=timeout)
            if made is None:
                return None
            expires = self.now + timedelta(seconds=timeout) if timeout else None
            held = Hold(made.id, debit, credit, amount, expires)
            self.open[held.id] = held
            return held

        @rule(held=holds, part=st.none() | st.floats(0.01, 1.2))
        def post(self, held: Hold | None, part: float | None) -> None:
            if held is None:
                return
            amount = None if part is None else max(1, int(held.amount * part))
            call = lambda: ledger.post_pending(  # noqa: E731
                self.session, id=uuid.uuid4(), pending_id=held.id, amount=amount, now=self.now
            )
            if held.id not in self.open:
                self._refused(call, "already_posted", "already_voided", "expired")
            elif held.expires_at is not None and self.now >= held.expires_at:
                self._refused(call, "expired")
            elif amount is not None and amount > held.amount:
                self._refused(call, "exceeds_pending_amount")
            else:
                view = call()
                assert view.amount == (amount or held.amount)
                self.model.resolve(held.debit, held.credit, held.amount, view.amount)
                del self.open[held.id]

        @rule(held=holds)
        def void(self, held: Hold | None) -> None:
            if held is None:
                return
            call = lambda: ledger.void_pending(self.session, id=uuid.uuid4(), pending_id=held.id, now=self.now)  # noqa: E731
            if held.id not in self.open:
                self._refused(call, "already_posted", "already_voided", "expired")
            elif held.expires_at is not None and self.now >= held.expires_at:
                self._refused(call, "expired")
            else:
                call()
                self.model.resolve(held.debit, held.credit, held.amount, 0)
                del self.open[held.id]

        @rule(seconds=st.integers(1, 400))
        def time_passes_and_holds_expire(self, seconds: int) -> None:
            self.now += timedelta(seconds=seconds)
            due = [h for h in self.open.values() if h.expires_at is not None and h.expires_at <= self.now]
            assert ledger.expire_pending(self.session, now=self.now) >= len(due)
            for h in due:
                self.model.resolve(h.debit, h.credit, h.amount, 0)
                del self.open[h.id]

        @rule(previous=done, same=st.booleans())
        def repeat_an_id(self, previous: Done | None, same: bool) -> None:
            if previous is None:
                return
            amount = previous.amount if same else previous.amount + 1
            call = lambda: ledger.transfer(  # noqa: E731
                self.session,
                id=previous.id,
                debit=previous.debit,
                credit=previous.credit,
                amount=amount,
                code=previous.code,
                now=self.now,
            )
            if same:
                before = self._snapshot()
                assert call().id == previous.id
                assert self._snapshot() == before
            else:
                self._refused(call, "exists_with_different_fields")

        @rule(w=st.integers(0, 2), limit=st.integers(0, 3_000))
        def set_credit_limit(self, w: int, limit: int) -> None:
            account = self.wallet_ids[w]
            dp, dpo, _, cpo = self.model.totals[account]
            call = lambda: ledger.set_credit_limit(self.session, self.orgs[w], limit, now=self.now)  # noqa: E731
            if dp + dpo - cpo > limit:
                self._refused(call, "credit_limit_below_balance")
            else:
                assert call().credit_limit == limit
                self.model.limit[account] = limit

        @invariant()
        def the_ledger_agrees_with_the_model(self) -> None:
            for account, want in self.model.totals.items():
                b = ledger.balance(self.session, account)
                assert [b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted] == want, account
                if account in self.model.wallets:
                    assert b.available >= 0, "a wallet is below its credit limit"
            assert ledger.check_invariants(self.session) == []

    return LedgerMachine


@pytest.fixture
def machine(sessions: sessionmaker[Session]) -> Iterator[type[RuleBasedStateMachine]]:
    yield ledger_machine(sessions)


def test_random_ledger_histories_keep_every_invariant(machine: type[RuleBasedStateMachine]) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=20,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
            derandomize=True,
        ),
    )
