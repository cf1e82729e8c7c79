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
    if session.get_bind().dialect.name == "sqlite":
        # The transaction's write lock: serialises writers, so the reads below are current.
        session.execute(_TAKE_WRITE_LOCK)
    rows = session.execute(_LOCK, {"ids": ordered}).all()
    found = {row.id: row for row in rows}
    missing = [str(i) for i in ordered if i not in found]
    if missing:
        raise LedgerError("account_not_found", f"no such account: {', '.join(missing)}")
    return found


def balance(session: Session, account_id: uuid.UUID) -> Balance:
    row = session.execute(select(ACCOUNTS).where(ACCOUNTS.c.id == account_id)).first()
    if row is None:
        raise LedgerError("account_not_found", f"no such account: {account_id}")
    return _balance(row)


def wallet_balance(session: Session, organization_id: uuid.UUID, *, currency: str = CURRENCY) -> Balance:
    """The wallet's balance; all zero (account_id None) if the organization has none yet."""
    wallet_id = account_id(wallet_code(organization_id), currency)
    row = session.execute(select(ACCOUNTS).where(ACCOUNTS.c.id == wallet_id)).first()
    if row is None:
        return Balance(None, currency, 0, 0, 0, 0, 0)
    return _balance(row)


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


# --- transfers ------------------------------------------------------------------------------------


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
    _check_amount(amount)
    if debit == credit:
        raise LedgerError("same_account", "a transfer needs two different accounts")
    if not code or len(code) > 32:
        raise LedgerError("invalid_code", "a transfer code is 1 to 32 characters")
    if reference is not None and len(reference) > 255:
        raise LedgerError("invalid_reference", "a reference is at most 255 characters")
    if timeout_seconds is not None and (not pending or not 0 < timeout_seconds <= MAX_TIMEOUT_SECONDS):
        raise LedgerError("invalid_timeout", "a timeout is for holds only, 1 second to 366 days")
    accounts = lock_accounts(session, [debit, credit])
    d, c = accounts[debit], accounts[credit]
    if d.currency != c.currency:
        raise LedgerError("currency_mismatch", f"the accounts hold {d.currency} and {c.currency}")
    expires_at = now + timedelta(seconds=timeout_seconds) if timeout_seconds else None
    wanted = {
        "debit_account_id": debit,
        "credit_account_id": credit,
        "amount": amount,
        "code": code,
        "reference": reference,
        "organization_id": organization_id,
        "kind": "pending" if pending else "single",
        "timeout": timeout_seconds,
    }
    existing = _existing(session, id)
    if existing is not None:
        return _same_or_refuse(existing, wanted)
    if d.debits_must_not_exceed_credits and (
        d.debits_pending + d.debits_posted + amount > d.credits_posted + d.credit_limit
    ):
        available = d.credits_posted + d.credit_limit - d.debits_pending - d.debits_posted
        raise InsufficientFunds(f"{amount} {d.currency} needed, {max(available, 0)} available")
    side = "pending" if pending else "posted"
    _check_overflow(d, f"debits_{side}", amount)
    _check_overflow(c, f"credits_{side}", amount)
    row = {
        "id": id,
        "debit_account_id": debit,
        "credit_account_id": credit,
        "amount": amount,
        "currency": d.currency,
        "code": code,
        "reference": reference,
        "organization_id": organization_id,
        "kind": wanted["kind"],
        "pending_id": None,
        "expires_at": expires_at,
        "created_at": now,
    }
    if not _insert_ignore(session, TRANSFERS, row):
        raise LedgerError("exists_with_different_fields", f"transfer {id} was just written with other accounts")
    _move(session, debit, credit, {f"debits_{side}": amount}, {f"credits_{side}": amount}, now)
    if pending:
        session.execute(insert(OPEN).values(pending_id=id, expires_at=expires_at))
    return TransferView(
        id=id,
        debit_account_id=debit,
        credit_account_id=credit,
        amount=amount,
        currency=d.currency,
        code=code,
        reference=reference,
        pending=pending,
        pending_id=None,
        status="pending" if pending else "posted",
        created_at=now,
        expires_at=expires_at,
        organization_id=organization_id,
        kind=str(wanted["kind"]),
    )


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
    if amount is not None:
        _check_amount(amount)
    return _resolve(session, "post", id, pending_id, amount, now=now)


def void_pending(session: Session, *, id: uuid.UUID, pending_id: uuid.UUID, now: datetime) -> TransferView:
    """Release a hold in full. Resolves the hold; idempotent by id."""
    return _resolve(session, "void", id, pending_id, None, now=now)


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
    holds = session.execute(select(TRANSFERS).where(TRANSFERS.c.id.in_(due))).all()
    # Every account up front, in one order: this transaction resolves many holds.
    lock_accounts(session, [a for h in holds for a in (h.debit_account_id, h.credit_account_id)])
    still_open = set(session.execute(select(OPEN.c.pending_id).where(OPEN.c.pending_id.in_(due))).scalars())
    expired = 0
    for hold in holds:
        if hold.id not in still_open:
            continue  # another sweep, a post or a void got there first
        _write_resolution(session, "expire", _expiry_id(hold.id), hold, hold.amount, now)
        expired += 1
    return expired


def _expiry_id(pending_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"expire:{pending_id}")


def _resolve(
    session: Session,
    kind: str,
    resolution_id: uuid.UUID,
    pending_id: uuid.UUID,
    amount: int | None,
    *,
    now: datetime,
) -> TransferView:
    hold = session.execute(select(TRANSFERS).where(TRANSFERS.c.id == pending_id)).first()
    if hold is None or hold.kind != "pending":
        raise LedgerError("pending_not_found", f"no pending transfer {pending_id}")
    lock_accounts(session, [hold.debit_account_id, hold.credit_account_id])
    existing = _existing(session, resolution_id)
    if existing is not None:
        if (
            existing.kind != kind
            or existing.pending_id != pending_id
            or (amount is not None and existing.amount != amount)
        ):
            raise LedgerError("exists_with_different_fields", f"transfer {resolution_id} exists with different fields")
        return existing
    resolution = session.execute(select(TRANSFERS.c.kind).where(TRANSFERS.c.pending_id == pending_id)).first()
    if resolution is not None:
        already = {"post": "already_posted", "void": "already_voided", "expire": "expired"}[resolution.kind]
        raise LedgerError(already, f"pending transfer {pending_id} was already resolved ({resolution.kind})")
    if hold.expires_at is not None and now >= hold.expires_at:
        raise LedgerError("expired", f"pending transfer {pending_id} expired at {hold.expires_at.isoformat()}")
    settled = hold.amount if amount is None or kind == "void" else amount
    if settled > hold.amount:
        raise LedgerError("exceeds_pending_amount", f"{settled} is more than the {hold.amount} held")
    return _write_resolution(session, kind, resolution_id, hold, settled, now)


def _write_resolution(
    session: Session, kind: str, resolution_id: uuid.UUID, hold: Row[Any], amount: int, now: datetime
) -> TransferView:
    row = {
        "id": resolution_id,
        "debit_account_id": hold.debit_account_id,
        "credit_account_id": hold.credit_account_id,
        "amount": amount,
        "currency": hold.currency,
        "code": hold.code,
        "reference": hold.reference,
        "organization_id": hold.organization_id,
        "kind": kind,
        "pending_id": hold.id,
        "expires_at": None,
        "created_at": now,
    }
    if not _insert_ignore(session, TRANSFERS, row):
        raise LedgerError("exists_with_different_fields", f"transfer {resolution_id} was just written")
    posted = amount if kind == "post" else 0
    debit_delta = {"debits_pending": -hold.amount, "debits_posted": posted}
    credit_delta = {"credits_pending": -hold.amount, "credits_posted": posted}
    _move(session, hold.debit_account_id, hold.credit_account_id, debit_delta, credit_delta, now)
    session.execute(delete(OPEN).where(OPEN.c.pending_id == hold.id))
    status = {"post": "posted", "void": "voided", "expire": "expired"}[kind]
    return _view(row, status)


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


def _balance(row: Row[Any]) -> Balance:
    return Balance(
        account_id=row.id,
        currency=row.currency,
        credits_posted=row.credits_posted,
        debits_posted=row.debits_posted,
        credits_pending=row.credits_pending,
        debits_pending=row.debits_pending,
        credit_limit=row.credit_limit,
    )


def _move(
    session: Session,
    debit: uuid.UUID,
    credit: uuid.UUID,
    debit_delta: dict[str, int],
    credit_delta: dict[str, int],
    now: datetime,
) -> None:
    # Increments (the locks are already held), both accounts in one executemany.
    session.execute(
        _MOVE,
        [
            {
                "account": account,
                "dpe": delta.get("debits_pending", 0),
                "dpo": delta.get("debits_posted", 0),
                "cpe": delta.get("credits_pending", 0),
                "cpo": delta.get("credits_posted", 0),
                "now": now,
            }
            for account, delta in sorted(((debit, debit_delta), (credit, credit_delta)), key=lambda p: p[0])
        ],
    )


def _insert_ignore(session: Session, table: Table, values: dict[str, Any]) -> bool:
    """INSERT that does nothing on a uniqueness conflict; True if the row was inserted."""
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
    return session.execute(stmt, values).first() is not None
