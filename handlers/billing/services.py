"""Billing's read side for the API (the wallet's transactions, usage ranges) and the
operator's levers, on top of ledger.py and statements.py. Ledger refusals become problems
here: the codes are stable and become the problem's slug (`insufficient_funds` →
`insufficient-funds`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from handlers.billing import ledger, metering
from handlers.billing.ledger import LedgerError, TransferView
from handlers.billing.tables import LedgerTransfer
from hangar.pagination import Page, paginate
from hangar.problems import Conflict, NotFound, Unprocessable

MAX_USAGE_DAYS = 93


def problem(error: LedgerError) -> Conflict:
    return Conflict(error.message, slug=error.code.replace("_", "-"))


def existing_wallet(session: Session, organization_id: uuid.UUID) -> uuid.UUID:
    """The organization's wallet for an operator operation; 404 if billing has never seen the
    organization (wallets open on organization.created)."""
    wallet_id = ledger.account_id(ledger.wallet_code(organization_id), ledger.CURRENCY)
    if session.execute(select(ledger.ACCOUNTS.c.id).where(ledger.ACCOUNTS.c.id == wallet_id)).first() is None:
        raise NotFound(f"No organization {organization_id} is known to billing.")
    return wallet_id


# --- transactions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WalletTransaction:
    transfer: TransferView
    direction: str  # credit | debit


def transactions(
    session: Session, organization_id: uuid.UUID, *, limit: int, cursor: str | None, code: str | None
) -> Page[WalletTransaction]:
    """The wallet's transfers, newest first: one-step transfers, holds and their settlements
    (a hold's void/expiry shows as the hold's status, not as a row of its own)."""
    wallet_id = ledger.account_id(ledger.wallet_code(organization_id), ledger.CURRENCY)
    stmt = select(LedgerTransfer).where(
        or_(LedgerTransfer.debit_account_id == wallet_id, LedgerTransfer.credit_account_id == wallet_id),
        LedgerTransfer.kind.in_(("single", "pending", "post")),
    )
    if code is not None:
        stmt = stmt.where(LedgerTransfer.code == code)
    page = paginate(
        session, stmt, (LedgerTransfer.created_at, LedgerTransfer.id), limit=limit, cursor=cursor, descending=True
    )
    ids = [t.id for t in page.items]
    views: dict[uuid.UUID, TransferView] = {}
    if ids:
        rows = session.execute(ledger.with_status().where(ledger.TRANSFERS.c.id.in_(ids))).all()
        views = {v.id: v for v in ledger.transfer_views(session, rows)}
    return Page(
        [WalletTransaction(views[t.id], "credit" if t.credit_account_id == wallet_id else "debit") for t in page.items],
        page.next_cursor,
    )


# --- usage ----------------------------------------------------------------------------------------


def usage_range(start: date | None, end: date | None, *, now: datetime) -> tuple[date, date]:
    today = now.date()
    start = start or today.replace(day=1)
    end = end or today + timedelta(days=1)
    if end <= start:
        raise Unprocessable(
            "`to` must be after `from`.",
            slug="invalid-range",
            errors=[{"location": "query.to", "message": "must be after `from`"}],
        )
    if (end - start).days > MAX_USAGE_DAYS:
        raise Unprocessable(
            f"A usage range is at most {MAX_USAGE_DAYS} days; ask for several.",
            slug="range-too-long",
            errors=[{"location": "query.to", "message": f"at most {MAX_USAGE_DAYS} days after `from`"}],
        )
    return start, end


def usage(
    session: Session, organization_id: uuid.UUID, *, start: date, end: date, resource_type: str | None
) -> list[Any]:
    lines = metering.usage_lines(session, organization_id, start=start, end=end, resource_type=resource_type)
    return sorted(lines, key=lambda u: (u.day, u.resource_type, str(u.resource_id)))


# --- operator -------------------------------------------------------------------------------------


def set_credit_limit(
    session: Session, organization_id: uuid.UUID, credit_limit: int, *, now: datetime
) -> ledger.Balance:
    existing_wallet(session, organization_id)
    try:
        return ledger.set_credit_limit(session, organization_id, credit_limit, now=now)
    except LedgerError as exc:
        raise problem(exc) from None


def adjust(
    session: Session, organization_id: uuid.UUID, *, direction: str, amount: int, reason: str, now: datetime
) -> tuple[TransferView, ledger.Balance]:
    wallet_id = existing_wallet(session, organization_id)
    promotions = ledger.platform_account(session, "promotions", now=now)
    debit, credit = (promotions, wallet_id) if direction == "credit" else (wallet_id, promotions)
    try:
        view = ledger.transfer(
            session,
            id=uuid.uuid4(),
            debit=debit,
            credit=credit,
            amount=amount,
            code="adjustment",
            reference=reason,
            organization_id=organization_id,
            now=now,
        )
    except LedgerError as exc:
        raise problem(exc) from None
    return view, ledger.balance(session, wallet_id)
