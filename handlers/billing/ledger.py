"""The double-entry ledger, on TigerBeetle's model (docs/billing.md, ADR 0010).

Every function takes the caller's Session and writes in the caller's transaction; none
commits. A refused operation (a LedgerError) has written nothing, so a caller may catch it
and carry on in the same transaction.

How a transfer stays correct under concurrency, on both databases:

1. **Lock the accounts first, in id order.** PostgreSQL: `SELECT … ORDER BY id FOR UPDATE`
   (the LockRows node sits above the sort, so rows are locked in id order and two transfers
   between the same accounts can never wait on each other in a cycle). SQLite: a no-op
   `UPDATE … WHERE 0` as the transaction's write takes the database write lock (waiting out
   the busy timeout for any other writer); every read after it is current.
2. **Decide under the lock**: the idempotency check (a transfer with this id already?), the
   resolve-once check (is the hold still open?), the overdraft check.
3. **Write**: the transfer row (`INSERT … ON CONFLICT DO NOTHING`: a concurrent insert of the
   same id with *other* accounts — the only one the locks do not serialise — is reported as
   `exists_with_different_fields`, having written nothing), then the accounts' totals as
   increments.

The database is the second line: CHECK constraints (amount > 0, totals ≥ 0, no wallet below
−credit_limit) and the unique index on a resolving transfer's `pending_id`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import BigInteger, Row, Table, and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, aliased

from handlers.billing.tables import LedgerAccount, LedgerOpenPending, LedgerTransfer
from hangar.db import UTCDateTime

CURRENCY = "USD"
PLATFORM_ACCOUNTS: tuple[str, ...] = ("revenue", "psp_clearing", "promotions", "holds", "uncollected")
# Totals are signed 64-bit columns: a transfer that would overflow one is refused.
MAX_TOTAL = 2**63 - 1
MAX_TIMEOUT_SECONDS = 366 * 24 * 3600
_NAMESPACE = uuid.UUID("6f1c2b1e-4d0a-5b8e-9c3f-0a1b2c3d4e5f")

ACCOUNTS = cast(Table, LedgerAccount.__table__)
TRANSFERS = cast(Table, LedgerTransfer.__table__)
OPEN = cast(Table, LedgerOpenPending.__table__)
RESOLVER = TRANSFERS.alias("resolver")

# The hot path's statements, built once (building a statement costs more than running it on
# SQLite); each execution binds its values.
_TAKE_WRITE_LOCK = text("UPDATE ledger_accounts SET id = id WHERE 0")
_LOCK = (
    select(ACCOUNTS)
    .where(ACCOUNTS.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(ACCOUNTS.c.id)
    .with_for_update()
)
_WITH_STATUS = select(*TRANSFERS.c, RESOLVER.c.kind.label("resolution")).outerjoin(
    RESOLVER, RESOLVER.c.pending_id == TRANSFERS.c.id
)
_BY_ID = _WITH_STATUS.where(TRANSFERS.c.id == bindparam("transfer_id"))
_MOVE = (
    update(ACCOUNTS)
    .where(ACCOUNTS.c.id == bindparam("account"))
    .values(
        debits_pending=ACCOUNTS.c.debits_pending + bindparam("dpe", type_=BigInteger),
        debits_posted=ACCOUNTS.c.debits_posted + bindparam("dpo", type_=BigInteger),
        credits_pending=ACCOUNTS.c.credits_pending + bindparam("cpe", type_=BigInteger),
        credits_posted=ACCOUNTS.c.credits_posted + bindparam("cpo", type_=BigInteger),
        updated_at=bindparam("now", type_=UTCDateTime),
    )
)
_INSERTS: dict[tuple[str, str], Any] = {}

_COLUMNS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


class LedgerError(Exception):
    """A refused ledger operation; nothing was written. `code` is stable (see docs/billing.md)."""

    code: str = "ledger_error"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class InsufficientFunds(LedgerError):  # noqa: N818 - the contract's name
    def __init__(self, message: str) -> None:
        super().__init__("insufficient_funds", message)


@dataclass(frozen=True)
class Balance:
    account_id: uuid.UUID | None  # None: the organization has no wallet yet
    currency: str
    credits_posted: int
    debits_posted: int
    credits_pending: int
    debits_pending: int
    credit_limit: int

    @property
    def posted(self) -> int:
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        return self.credits_posted - self.debits_posted - self.debits_pending + self.credit_limit


@dataclass(frozen=True)
class TransferView:
    id: uuid.UUID
    debit_account_id: uuid.UUID
    credit_account_id: uuid.UUID
    amount: int
    currency: str
    code: str
    reference: str | None
    pending: bool
    pending_id: uuid.UUID | None
    # "posted": money moved (a one-step transfer, or the post of a hold);
    # "pending": a hold still open; a resolved hold is "posted_pending" (its post is the
    # separate "posted" row naming it), "voided" or "expired"; the void/expire rows
    # themselves are "voided"/"expired". Σ amount of "posted" rows = the posted totals.
    status: str
    created_at: datetime
    expires_at: datetime | None
    organization_id: uuid.UUID | None = None
    kind: str = "single"  # single | pending | post | void | expire


# --- accounts -------------------------------------------------------------------------------------


def format_money(amount: int, currency: str) -> str:
    """Minor units as a person reads them: (4250, "USD") → "42.50 USD". Every currency the
    ledger accepts is taken to have two decimals (only USD is in use)."""
    sign = "-" if amount < 0 else ""
    return f"{sign}{abs(amount) // 100}.{abs(amount) % 100:02d} {currency}"


def account_id(code: str, currency: str = CURRENCY) -> uuid.UUID:
    """The id an account with this code has (deterministic, so every process agrees)."""
    return uuid.uuid5(_NAMESPACE, f"account:{code}:{currency}")


def wallet_code(organization_id: uuid.UUID) -> str:
    return f"org:{organization_id}:wallet"


def wallet(
    session: Session,
    organization_id: uuid.UUID,
    *,
    now: datetime,
    currency: str = CURRENCY,
    signup_credit: int = 0,
) -> uuid.UUID:
    """The organization's wallet, created on first use; on creation with `signup_credit` > 0
    the credit is posted from platform:promotions (code "signup_credit")."""
    code = wallet_code(organization_id)
    wallet_id = account_id(code, currency)
    if session.execute(select(ACCOUNTS.c.id).where(ACCOUNTS.c.id == wallet_id)).first() is not None:
        return wallet_id
    created = _create_account(session, wallet_id, code, currency, organization_id, wallet=True, now=now)
    if created and signup_credit > 0:
        transfer(
            session,
            id=uuid.uuid5(_NAMESPACE, f"signup_credit:{organization_id}:{currency}"),
            debit=platform_account(session, "promotions", currency=currency, now=now),
            credit=wallet_id,
            amount=signup_credit,
            code="signup_credit",
            reference="signup credit",
            organization_id=organization_id,
            now=now,
        )
    return wallet_id


def platform_account(
    session: Session, name: str, *, currency: str = CURRENCY, now: datetime | None = None
) -> uuid.UUID:
    """The platform account `name` (one of PLATFORM_ACCOUNTS), created on first use. Platform
    accounts may go below zero (like TigerBeetle's or Formance's world account)."""
    if name not in PLATFORM_ACCOUNTS:
        raise ValueError(f"unknown platform account {name!r}; one of {', '.join(PLATFORM_ACCOUNTS)}")
    code = f"platform:{name}"
    found = account_id(code, currency)
    if session.execute(select(ACCOUNTS.c.id).where(ACCOUNTS.c.id == found)).first() is None:
        from hangar.db import utcnow

        _create_account(session, found, code, currency, None, wallet=False, now=now or utcnow())
    return found


def _create_account(
    session: Session,
    new_id: uuid.UUID,
    code: str,
    currency: str,
    organization_id: uuid.UUID | None,
    *,
    wallet: bool,
    now: datetime,
) -> bool:
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise LedgerError("invalid_currency", f"currency must be a 3-letter ISO 4217 code, got {currency!r}")
    return _insert_ignore(
        session,
        ACCOUNTS,
        {
            "id": new_id,
            "code": code,
            "currency": currency,
            "organization_id": organization_id,
            "debits_pending": 0,
            "debits_posted": 0,
            "credits_pending": 0,
            "credits_posted": 0,
            "debits_must_not_exceed_credits": wallet,
            "credit_limit": 0,
            "created_at": now,
            "updated_at": now,
        },
    )


def lock_accounts(session: Session, account_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Row[Any]]:
    """Lock these accounts for the rest of the transaction, in id order, and return their
    current rows. A caller making several transfers in one transaction locks every account
    it will touch up front with this, so its locks, too, are taken in one global order."""
    ordered = sorted(set(account_ids))
    found = _lock(session, ordered)
    missing = [str(i) for i in ordered if i not in found]
    if missing:
        raise LedgerError("account_not_found", f"no such account: {', '.join(missing)}")
    return found


def missing_accounts(session: Session, account_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Those of these accounts that do not exist (yet)."""
    wanted = set(account_ids)
    if not wanted:
        return set()
    return wanted - set(session.execute(select(ACCOUNTS.c.id).where(ACCOUNTS.c.id.in_(sorted(wanted)))).scalars())


def balance(session: Session, account_id: uuid.UUID) -> Balance:
    row = session.execute(select(ACCOUNTS).where(ACCOUNTS.c.id == account_id)).first()
    if row is None:
        raise LedgerError("account_not_found", f"no such account: {account_id}")
    return balance_of(row)


def wallet_balance(session: Session, organization_id: uuid.UUID, *, currency: str = CURRENCY) -> Balance:
    """The wallet's balance; all zero (account_id None) if the organization has none yet."""
    wallet_id = account_id(wallet_code(organization_id), currency)
    row = session.execute(select(ACCOUNTS).where(ACCOUNTS.c.id == wallet_id)).first()
    if row is None:
        return Balance(None, currency, 0, 0, 0, 0, 0)
    return balance_of(row)


def set_credit_limit(session: Session, organization_id: uuid.UUID, credit_limit: int, *, now: datetime) -> Balance:
    """An operator's decision: how far below zero the wallet may go. Lowering it below what
    the wallet already owes (posted and held) is refused ("credit_limit_below_balance")."""
    if credit_limit < 0 or credit_limit > MAX_TOTAL:
        raise LedgerError("invalid_amount", "a credit limit is between 0 and 2^63 - 1 minor units")
    wallet_id = wallet(session, organization_id, now=now)
    row = lock_accounts(session, [wallet_id])[wallet_id]
    owed = row.debits_pending + row.debits_posted - row.credits_posted
    if owed > credit_limit:
        raise LedgerError(
            "credit_limit_below_balance",
            f"the wallet already uses {owed} below zero (posted and held); the limit cannot be lower",
        )
    session.execute(
        update(ACCOUNTS).where(ACCOUNTS.c.id == wallet_id).values(credit_limit=credit_limit, updated_at=now)
    )
    return balance(session, wallet_id)


# --- transfers: one engine, batches of operations ---------------------------------------------
#
# Every write to the ledger goes through `apply`: a batch of operations (new transfers and
# resolutions of holds), TigerBeetle's `create_transfers` in spirit. Each operation succeeds
# or is refused on its own, in order, against the state the earlier ones left; a refused one
# writes nothing. However long the batch, it costs the same handful of statements: load the
# holds it resolves, lock every account it touches (one SELECT … FOR UPDATE in id order),
# read the transfers that already exist under its ids, decide everything in memory, then one
# multi-row INSERT of the new transfers, one executemany of the accounts' new totals and the
# open-holds list's inserts and deletes. `transfer`, `post_pending`, `void_pending` and
# `expire_pending` are batches of their own.


@dataclass(frozen=True)
class NewTransfer:
    """Move `amount` from `debit` to `credit`; pending=True reserves it instead (a hold),
    lapsing after `timeout_seconds` unless posted or voided first."""

    id: uuid.UUID
    debit: uuid.UUID
    credit: uuid.UUID
    amount: int
    code: str
    reference: str | None = None
    organization_id: uuid.UUID | None = None
    pending: bool = False
    timeout_seconds: int | None = None


@dataclass(frozen=True)
class Resolution:
    """Resolve the hold `pending_id`: "post" moves `amount` (≤ the held amount; None = all of
    it) and releases the rest, "void" releases it all, "expire" releases a lapsed one."""

    id: uuid.UUID
    pending_id: uuid.UUID
    kind: str
    amount: int | None = None


Operation = NewTransfer | Resolution
RESOLUTION_KINDS = ("post", "void", "expire")


@dataclass(frozen=True)
class Batch:
    """What `apply` did: one result per operation (the transfer, or why it was refused), the
    ids it wrote (an identical repeat of an existing transfer is a result, not a write), and
    the balance after the batch of every account it locked."""

    results: list[TransferView | LedgerError]
    written: frozenset[uuid.UUID]
    balances: dict[uuid.UUID, Balance]

    def views(self) -> list[TransferView]:
        """The transfers, or the first refusal raised."""
        for result in self.results:
            if isinstance(result, LedgerError):
                raise result
        return cast(list[TransferView], self.results)


_HOLDS = select(TRANSFERS).where(TRANSFERS.c.id.in_(bindparam("ids", expanding=True)))
_BY_IDS = _WITH_STATUS.where(TRANSFERS.c.id.in_(bindparam("ids", expanding=True)))
_RESOLVED = select(TRANSFERS.c.pending_id, TRANSFERS.c.kind).where(
    TRANSFERS.c.pending_id.in_(bindparam("ids", expanding=True))
)
_CLOSE = delete(OPEN).where(OPEN.c.pending_id.in_(bindparam("ids", expanding=True)))
_ALREADY = {"post": "already_posted", "void": "already_voided", "expire": "expired"}
_WRITE_ATTEMPTS = 3


def apply(session: Session, operations: Sequence[Operation], *, now: datetime) -> Batch:
    """Apply `operations` in order, in the caller's transaction (see the section's comment)."""
    for _ in range(_WRITE_ATTEMPTS):
        batch = _Evaluation(session, operations, now).run()
        if batch is not None:
            return batch
    raise LedgerError(
        "exists_with_different_fields",
        "transfers of this batch kept being written concurrently with other fields; nothing was written",
    )


def transfer(
    session: Session,
    *,
    id: uuid.UUID,
    debit: uuid.UUID,
    credit: uuid.UUID,
    amount: int,
    code: str,
    reference: str | None = None,
    organization_id: uuid.UUID | None = None,
    pending: bool = False,
    timeout_seconds: int | None = None,
    now: datetime,
) -> TransferView:
    """Move `amount` from `debit` to `credit` (pending=True: reserve it, a hold). Idempotent
    by id: an identical repeat returns the existing transfer."""
    operation = NewTransfer(id, debit, credit, amount, code, reference, organization_id, pending, timeout_seconds)
    return apply(session, [operation], now=now).views()[0]


def post_pending(
    session: Session,
    *,
    id: uuid.UUID,
    pending_id: uuid.UUID,
    amount: int | None = None,
    now: datetime,
) -> TransferView:
    """Settle a hold: `amount` (≤ the held amount; None = all of it) moves, the rest is
    released. Resolves the hold; idempotent by id."""
    return apply(session, [Resolution(id, pending_id, "post", amount)], now=now).views()[0]


def void_pending(session: Session, *, id: uuid.UUID, pending_id: uuid.UUID, now: datetime) -> TransferView:
    """Release a hold in full. Resolves the hold; idempotent by id."""
    return apply(session, [Resolution(id, pending_id, "void")], now=now).views()[0]


def expire_pending(session: Session, *, now: datetime, limit: int = 1000) -> int:
    """Release up to `limit` holds whose timeout has passed (the background sweep); the
    number released. Safe in several processes at once: each hold is expired once, the
    others skip it."""
    due = (
        session.execute(
            select(OPEN.c.pending_id)
            .where(OPEN.c.expires_at.is_not(None), OPEN.c.expires_at <= now)
            .order_by(OPEN.c.expires_at)
            .limit(limit)
        )
        .scalars()
        .all()
    )
    if not due:
        return 0
    batch = apply(session, [Resolution(_expiry_id(hold), hold, "expire") for hold in due], now=now)
    return len(batch.written)  # a hold another sweep, a post or a void got to first is refused


def _expiry_id(pending_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"expire:{pending_id}")


def _refusal(operation: Operation) -> LedgerError | None:
    """What is wrong with the operation on its face (no database needed)."""
    try:
        if isinstance(operation, Resolution):
            if operation.kind not in RESOLUTION_KINDS:
                return LedgerError("invalid_kind", f"a resolution is one of {', '.join(RESOLUTION_KINDS)}")
            if operation.amount is not None:
                if operation.kind != "post":
                    return LedgerError("invalid_amount", "only a post takes an amount")
                _check_amount(operation.amount)
            return None
        _check_amount(operation.amount)
    except LedgerError as refused:
        return refused
    if operation.debit == operation.credit:
        return LedgerError("same_account", "a transfer needs two different accounts")
    if not operation.code or len(operation.code) > 32:
        return LedgerError("invalid_code", "a transfer code is 1 to 32 characters")
    if operation.reference is not None and len(operation.reference) > 255:
        return LedgerError("invalid_reference", "a reference is at most 255 characters")
    timeout = operation.timeout_seconds
    if timeout is not None and (not operation.pending or not 0 < timeout <= MAX_TIMEOUT_SECONDS):
        return LedgerError("invalid_timeout", "a timeout is for holds only, 1 second to 366 days")
    return None


class _Evaluation:
    """One attempt at a batch: read, decide in memory, write. `run` returns None when a
    concurrent transaction wrote one of the batch's ids first (nothing of this attempt is
    kept); `apply` then tries again, and the next read sees that transfer."""

    def __init__(self, session: Session, operations: Sequence[Operation], now: datetime) -> None:
        self.session = session
        self.operations = operations
        self.now = now
        self.accounts: dict[uuid.UUID, Row[Any]] = {}  # locked, as read
        self.totals: dict[uuid.UUID, list[int]] = {}  # account → _COLUMNS as the batch leaves them
        self.stored: dict[uuid.UUID, TransferView] = {}  # transfers already under the batch's ids
        self.holds: dict[uuid.UUID, Any] = {}  # holds by id (stored and this batch's)
        self.resolved: dict[uuid.UUID, str] = {}  # hold id → kind of its resolution
        self.rows: list[dict[str, Any]] = []  # transfers to insert, in order
        self.views: dict[uuid.UUID, TransferView] = {}  # this batch's transfers by id
        self.opened: list[dict[str, Any]] = []
        self.closed: list[uuid.UUID] = []

    def run(self) -> Batch | None:
        session = self.session
        refusals = [_refusal(op) for op in self.operations]
        valid = [op for op, refused in zip(self.operations, refusals, strict=True) if refused is None]
        held = sorted({op.pending_id for op in valid if isinstance(op, Resolution)})
        if held:  # a hold's row never changes: it may be read before the locks
            self.holds = {row.id: row._mapping for row in session.execute(_HOLDS, {"ids": held})}
        touched: set[uuid.UUID] = set()
        for op in valid:
            if isinstance(op, NewTransfer):
                touched.update((op.debit, op.credit))
            elif op.pending_id in self.holds:
                touched.update(
                    (self.holds[op.pending_id]["debit_account_id"], self.holds[op.pending_id]["credit_account_id"])
                )
        if touched:
            self.accounts = _lock(session, touched)
            self.totals = {a: [getattr(row, c) for c in _COLUMNS] for a, row in self.accounts.items()}
        # Under the locks: what exists already, and which holds are resolved, is current.
        if valid:
            found = session.execute(_BY_IDS, {"ids": sorted({op.id for op in valid})}).all()
            self.stored = {view.id: view for view in transfer_views(session, found)}
        if held:
            self.resolved = {row.pending_id: row.kind for row in session.execute(_RESOLVED, {"ids": held})}
        results: list[TransferView | LedgerError] = []
        for op, refused in zip(self.operations, refusals, strict=True):
            if refused is None:
                try:
                    results.append(self._new(op) if isinstance(op, NewTransfer) else self._resolve(op))
                except LedgerError as refusal:
                    results.append(refusal)
            else:
                results.append(refused)
        if self.rows and not self._write():
            return None
        balances = {
            a: Balance(a, row.currency, t[3], t[1], t[2], t[0], row.credit_limit)
            for a, row in self.accounts.items()
            for t in [self.totals[a]]
        }
        return Batch(results, frozenset(r["id"] for r in self.rows), balances)

    # --- deciding ---------------------------------------------------------------------------

    def _account(self, account: uuid.UUID) -> Row[Any]:
        row = self.accounts.get(account)
        if row is None:
            raise LedgerError("account_not_found", f"no such account: {account}")
        return row

    def _earlier(self, transfer_id: uuid.UUID) -> TransferView | None:
        return self.views.get(transfer_id) or self.stored.get(transfer_id)

    def _new(self, op: NewTransfer) -> TransferView:
        d, c = self._account(op.debit), self._account(op.credit)
        if d.currency != c.currency:
            raise LedgerError("currency_mismatch", f"the accounts hold {d.currency} and {c.currency}")
        kind = "pending" if op.pending else "single"
        earlier = self._earlier(op.id)
        if earlier is not None:
            return _same_or_refuse(
                earlier,
                {
                    "debit_account_id": op.debit,
                    "credit_account_id": op.credit,
                    "amount": op.amount,
                    "code": op.code,
                    "reference": op.reference,
                    "organization_id": op.organization_id,
                    "kind": kind,
                    "timeout": op.timeout_seconds,
                },
            )
        dpe, dpo, _, cpo = self.totals[op.debit]
        if d.debits_must_not_exceed_credits and dpe + dpo + op.amount > cpo + d.credit_limit:
            available = cpo + d.credit_limit - dpe - dpo
            raise InsufficientFunds(
                f"{format_money(op.amount, d.currency)} needed, {format_money(max(available, 0), d.currency)} available"
            )
        debit_column, credit_column = (0, 2) if op.pending else (1, 3)
        self._check_room(op.debit, d, debit_column, op.amount)
        self._check_room(op.credit, c, credit_column, op.amount)
        expires_at = self.now + timedelta(seconds=op.timeout_seconds) if op.timeout_seconds else None
        row = {
            "id": op.id,
            "debit_account_id": op.debit,
            "credit_account_id": op.credit,
            "amount": op.amount,
            "currency": d.currency,
            "code": op.code,
            "reference": op.reference,
            "organization_id": op.organization_id,
            "kind": kind,
            "pending_id": None,
            "expires_at": expires_at,
            "created_at": self.now,
        }
        self.totals[op.debit][debit_column] += op.amount
        self.totals[op.credit][credit_column] += op.amount
        if op.pending:
            self.holds[op.id] = row
            self.opened.append({"pending_id": op.id, "expires_at": expires_at})
        return self._record(row, "pending" if op.pending else "posted")

    def _resolve(self, op: Resolution) -> TransferView:
        hold = self.holds.get(op.pending_id)
        if hold is None or hold["kind"] != "pending":
            raise LedgerError("pending_not_found", f"no pending transfer {op.pending_id}")
        earlier = self._earlier(op.id)
        if earlier is not None:
            if (
                earlier.kind != op.kind
                or earlier.pending_id != op.pending_id
                or (op.amount is not None and earlier.amount != op.amount)
            ):
                raise LedgerError("exists_with_different_fields", f"transfer {op.id} exists with different fields")
            return earlier
        debit, credit = hold["debit_account_id"], hold["credit_account_id"]
        for account in (debit, credit):
            self._account(account)
        resolution = self.resolved.get(op.pending_id)
        if resolution is not None:
            raise LedgerError(
                _ALREADY[resolution], f"pending transfer {op.pending_id} was already resolved ({resolution})"
            )
        expires_at = _aware(hold["expires_at"])
        lapsed = expires_at is not None and self.now >= expires_at
        if op.kind == "expire" and not lapsed:
            raise LedgerError("not_expired", f"pending transfer {op.pending_id} has not reached its timeout")
        if op.kind != "expire" and expires_at is not None and lapsed:
            raise LedgerError("expired", f"pending transfer {op.pending_id} expired at {expires_at.isoformat()}")
        settled = hold["amount"] if op.amount is None or op.kind != "post" else op.amount
        if settled > hold["amount"]:
            raise LedgerError("exceeds_pending_amount", f"{settled} is more than the {hold['amount']} held")
        posted = settled if op.kind == "post" else 0
        self._check_room(debit, self.accounts[debit], 1, posted)
        self._check_room(credit, self.accounts[credit], 3, posted)
        row = {
            "id": op.id,
            "debit_account_id": debit,
            "credit_account_id": credit,
            "amount": settled,
            "currency": hold["currency"],
            "code": hold["code"],
            "reference": hold["reference"],
            "organization_id": hold["organization_id"],
            "kind": op.kind,
            "pending_id": op.pending_id,
            "expires_at": None,
            "created_at": self.now,
        }
        self.totals[debit][0] -= hold["amount"]
        self.totals[debit][1] += posted
        self.totals[credit][2] -= hold["amount"]
        self.totals[credit][3] += posted
        self.resolved[op.pending_id] = op.kind
        self.closed.append(op.pending_id)
        return self._record(row, {"post": "posted", "void": "voided", "expire": "expired"}[op.kind])

    def _check_room(self, account: uuid.UUID, row: Row[Any], column: int, amount: int) -> None:
        if self.totals[account][column] + amount > MAX_TOTAL:
            raise LedgerError("invalid_amount", f"account {row.code}: {_COLUMNS[column]} would overflow")

    def _record(self, row: dict[str, Any], status: str) -> TransferView:
        self.rows.append(row)
        view = _view(row, status)
        self.views[row["id"]] = view
        return view

    # --- writing ----------------------------------------------------------------------------

    def _write(self) -> bool:
        """Write what was decided; False (nothing of it kept) when a concurrent transaction
        inserted one of these ids first — the only write the account locks do not serialise."""
        session = self.session
        savepoint = session.begin_nested() if len(self.rows) > 1 else None
        inserted = set(session.execute(_insert_returning(session), self.rows).scalars())
        if len(inserted) != len(self.rows):
            if savepoint is not None:
                savepoint.rollback()
            return False
        changed = [
            {
                "account": account,
                "dpe": totals[0] - row.debits_pending,
                "dpo": totals[1] - row.debits_posted,
                "cpe": totals[2] - row.credits_pending,
                "cpo": totals[3] - row.credits_posted,
                "now": self.now,
            }
            for account, row in sorted(self.accounts.items())
            for totals in [self.totals[account]]
            if totals != [getattr(row, c) for c in _COLUMNS]
        ]
        if changed:
            session.execute(_MOVE, changed)
        if self.opened:
            session.execute(insert(OPEN), self.opened)
        if self.closed:
            session.execute(_CLOSE, {"ids": self.closed})
        if savepoint is not None:
            savepoint.commit()
        return True


def _lock(session: Session, account_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Row[Any]]:
    """Lock the accounts that exist among these (in id order) and return their rows."""
    if session.get_bind().dialect.name == "sqlite":
        # The transaction's write lock: serialises writers, so the reads below are current.
        session.execute(_TAKE_WRITE_LOCK)
    return {row.id: row for row in session.execute(_LOCK, {"ids": sorted(set(account_ids))})}


# --- reading transfers ----------------------------------------------------------------------------


def get_transfer(session: Session, transfer_id: uuid.UUID) -> TransferView | None:
    return _existing(session, transfer_id)


def transfer_views(session: Session, stmt_rows: Sequence[Any]) -> list[TransferView]:
    """Views of transfer rows selected with `status_column()` labelled "resolution"."""
    return [_view(row._mapping, _status(row.kind, row.resolution)) for row in stmt_rows]


def with_status() -> Any:
    """A SELECT of transfers with each hold's resolution kind (label "resolution")."""
    return _WITH_STATUS


def _existing(session: Session, transfer_id: uuid.UUID) -> TransferView | None:
    rows = session.execute(_BY_ID, {"transfer_id": transfer_id}).all()
    return transfer_views(session, rows)[0] if rows else None


def _status(kind: str, resolution: str | None) -> str:
    if kind in ("single", "post"):
        return "posted"
    if kind == "void":
        return "voided"
    if kind == "expire":
        return "expired"
    return {None: "pending", "post": "posted_pending", "void": "voided", "expire": "expired"}[resolution]


def _view(row: Any, status: str) -> TransferView:
    return TransferView(
        id=row["id"],
        debit_account_id=row["debit_account_id"],
        credit_account_id=row["credit_account_id"],
        amount=row["amount"],
        currency=row["currency"],
        code=row["code"],
        reference=row["reference"],
        pending=row["kind"] == "pending",
        pending_id=row["pending_id"],
        status=status,
        created_at=cast(datetime, _aware(row["created_at"])),
        expires_at=_aware(row["expires_at"]),
        organization_id=row["organization_id"],
        kind=row["kind"],
    )


def _aware(value: datetime | None) -> datetime | None:
    # Core rows already come through UTCDateTime; this only guards a naive value.
    from datetime import UTC

    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _same_or_refuse(existing: TransferView, wanted: dict[str, Any]) -> TransferView:
    timeout = (
        int((existing.expires_at - existing.created_at).total_seconds()) if existing.expires_at is not None else None
    )
    have = {
        "debit_account_id": existing.debit_account_id,
        "credit_account_id": existing.credit_account_id,
        "amount": existing.amount,
        "code": existing.code,
        "reference": existing.reference,
        "organization_id": existing.organization_id,
        "kind": existing.kind,
        "timeout": timeout,
    }
    differing = sorted(k for k in wanted if wanted[k] != have[k])
    if differing:
        raise LedgerError(
            "exists_with_different_fields", f"transfer {existing.id} exists with other {', '.join(differing)}"
        )
    return existing


# --- invariants -----------------------------------------------------------------------------------


def check_invariants(session: Session) -> list[str]:
    """Every broken ledger invariant, as sentences ([] when the ledger is sound):
    Σ debits = Σ credits per currency (posted and pending); each account's totals equal the
    sums of its transfers; no account that must not overdraw is below −credit_limit; each
    hold resolved at most once, by a transfer on its own accounts for at most its amount;
    the open-holds list is exactly the unresolved holds."""
    problems: list[str] = []
    sums = session.execute(
        select(
            ACCOUNTS.c.currency,
            func.sum(ACCOUNTS.c.debits_posted),
            func.sum(ACCOUNTS.c.credits_posted),
            func.sum(ACCOUNTS.c.debits_pending),
            func.sum(ACCOUNTS.c.credits_pending),
        ).group_by(ACCOUNTS.c.currency)
    ).all()
    for currency, dpo, cpo, dpe, cpe in sums:
        if dpo != cpo:
            problems.append(f"{currency}: posted debits {dpo} != posted credits {cpo}")
        if dpe != cpe:
            problems.append(f"{currency}: pending debits {dpe} != pending credits {cpe}")

    expected: dict[uuid.UUID, dict[str, int]] = {}
    resolver = aliased(LedgerTransfer)
    rows = session.execute(
        select(
            TRANSFERS.c.debit_account_id,
            TRANSFERS.c.credit_account_id,
            TRANSFERS.c.kind,
            TRANSFERS.c.amount,
            resolver.kind,
        ).outerjoin(resolver, resolver.pending_id == TRANSFERS.c.id)
    ).all()
    for debit, credit, kind, amount, resolution in rows:
        if kind in ("single", "post"):
            side = "posted"
        elif kind == "pending" and resolution is None:
            side = "pending"
        else:
            continue
        for account, column in ((debit, f"debits_{side}"), (credit, f"credits_{side}")):
            expected.setdefault(account, dict.fromkeys(_COLUMNS, 0))[column] += amount
    for account in session.execute(select(ACCOUNTS)).all():
        want = expected.get(account.id, dict.fromkeys(_COLUMNS, 0))
        for column in _COLUMNS:
            if getattr(account, column) != want[column]:
                problems.append(
                    f"account {account.code}: {column} is {getattr(account, column)}, its transfers say {want[column]}"
                )
        if account.debits_must_not_exceed_credits and (
            account.debits_pending + account.debits_posted > account.credits_posted + account.credit_limit
        ):
            problems.append(f"account {account.code} is below -credit_limit ({account.credit_limit})")

    pending = aliased(LedgerTransfer)
    bad_resolutions = (
        session.execute(
            select(TRANSFERS.c.id)
            .join(pending, pending.id == TRANSFERS.c.pending_id)
            .where(
                or_(
                    pending.kind != "pending",
                    TRANSFERS.c.amount > pending.amount,
                    and_(TRANSFERS.c.kind != "post", TRANSFERS.c.amount != pending.amount),
                    TRANSFERS.c.debit_account_id != pending.debit_account_id,
                    TRANSFERS.c.credit_account_id != pending.credit_account_id,
                )
            )
        )
        .scalars()
        .all()
    )
    problems.extend(f"transfer {t} does not resolve its hold faithfully" for t in bad_resolutions)

    unresolved = set(
        session.execute(
            select(TRANSFERS.c.id)
            .outerjoin(resolver, resolver.pending_id == TRANSFERS.c.id)
            .where(TRANSFERS.c.kind == "pending", resolver.id.is_(None))
        ).scalars()
    )
    listed = set(session.execute(select(OPEN.c.pending_id)).scalars())
    if unresolved != listed:
        problems.append(f"open holds listed {len(listed)} but {len(unresolved)} are unresolved")
    return problems


# --- helpers --------------------------------------------------------------------------------------


def _check_amount(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0 or amount > MAX_TOTAL:
        raise LedgerError("invalid_amount", f"an amount is a positive integer of minor units, got {amount!r}")


def _check_overflow(account: Row[Any], column: str, amount: int) -> None:
    if getattr(account, column) + amount > MAX_TOTAL:
        raise LedgerError("invalid_amount", f"account {account.code}: {column} would overflow")


def balance_of(row: Row[Any]) -> Balance:
    """The Balance of an account row (as lock_accounts returns them)."""
    return Balance(
        account_id=row.id,
        currency=row.currency,
        credits_posted=row.credits_posted,
        debits_posted=row.debits_posted,
        credits_pending=row.credits_pending,
        debits_pending=row.debits_pending,
        credit_limit=row.credit_limit,
    )


def _insert_returning(session: Session, table: Table = TRANSFERS) -> Any:
    """INSERT … ON CONFLICT DO NOTHING RETURNING the key, built once per dialect and table:
    executed with many rows it returns the keys of the rows it inserted."""
    dialect = session.get_bind().dialect.name
    stmt = _INSERTS.get((dialect, table.name))
    if stmt is None:
        if dialect == "postgresql":
            stmt = pg_insert(table).on_conflict_do_nothing()
        elif dialect == "sqlite":
            stmt = sqlite_insert(table).on_conflict_do_nothing()
        else:  # pragma: no cover - the two supported databases are above
            stmt = insert(table)
        # RETURNING, not rowcount: psycopg reports -1 for an INSERT … ON CONFLICT through SQLAlchemy.
        stmt = stmt.returning(next(iter(table.primary_key.columns)))
        _INSERTS[(dialect, table.name)] = stmt
    return stmt


def _insert_ignore(session: Session, table: Table, values: dict[str, Any]) -> bool:
    """INSERT that does nothing on a uniqueness conflict; True if the row was inserted."""
    return session.execute(_insert_returning(session, table), values).first() is not None
