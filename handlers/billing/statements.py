"""Monthly statements (docs/billing.md, "Reading a statement").

A statement covers one calendar month (UTC) of one organization's wallet in one currency:

- opening_balance / closing_balance: the wallet's posted balance at the month's first and
  last instant, from the ledger's transfers (a balance is derived, never stored);
- totals by kind, signed from the wallet's side: top_ups, refunds, usage (codes "usage" and
  "hold": a settled hold is a charge), credits ("signup_credit", "promotion"), adjustments,
  other — and closing = opening + Σ totals (a CHECK constraint on the stored row);
- lines: usage per resource for the month (metering's usage records), then one line per
  posted transfer that is not usage. When what the wallet was charged for usage differs from
  what was metered in the month (usage the balance could not cover goes to
  platform:uncollected; a tick just after midnight charges the last seconds of the month
  before), one reconciling usage line says so, so Σ lines = closing − opening too.

The current month (and a past month within `GRACE` of its end, while the last ticks land)
is `open`: computed on every read, never stored. A past month is finalised on first read:
its row and lines are inserted once (`INSERT … ON CONFLICT DO NOTHING` on the unique
(organization, currency, period)), so concurrent readers finalise it once, and it is read
from the table ever after: a transfer written later with an earlier timestamp cannot change it.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, case, func, or_, select
from sqlalchemy.orm import Session

from handlers.billing import ledger, metering
from handlers.billing.tables import Statement, StatementLine

STATEMENTS = cast(Table, Statement.__table__)
LINES = cast(Table, StatementLine.__table__)
TRANSFERS = ledger.TRANSFERS
_NAMESPACE = uuid.UUID("1d7c3f0e-5a2b-5c9d-8e1f-2a3b4c5d6e7f")

# A past month stays open this long after it ends: metering charges the last seconds of a
# month on its first tick of the next one.
GRACE = timedelta(hours=1)

CATEGORIES: dict[str, str] = {
    "top_up": "top_up",
    "refund": "refund",
    "usage": "usage",
    "hold": "usage",
    "usage_uncollected": "usage",
    "signup_credit": "credit",
    "promotion": "credit",
    "adjustment": "adjustment",
}
TOTALS = ("top_up", "refund", "usage", "credit", "adjustment", "other")


@dataclass(frozen=True)
class Line:
    kind: str
    description: str
    amount: int
    resource_type: str | None = None
    resource_id: uuid.UUID | None = None
    seconds: int | None = None
    transfer_id: uuid.UUID | None = None
    code: str | None = None
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class StatementView:
    id: uuid.UUID
    organization_id: uuid.UUID
    currency: str
    period: str
    period_start: date
    status: str  # open | finalized
    opening_balance: int
    closing_balance: int
    totals: dict[str, int]
    finalized_at: datetime | None
    lines: list[Line] = field(default_factory=list)


def statement_id(organization_id: uuid.UUID, currency: str, period: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"statement:{organization_id}:{currency}:{period}")


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month(start: date) -> date:
    return date(start.year + (start.month == 12), start.month % 12 + 1, 1)


def _instant(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def periods(
    session: Session, organization_id: uuid.UUID, *, now: datetime, currency: str = ledger.CURRENCY
) -> list[date]:
    """The months the organization's wallet has existed in, newest first ([] without a wallet)."""
    wallet_id = ledger.account_id(ledger.wallet_code(organization_id), currency)
    opened = session.execute(select(ledger.ACCOUNTS.c.created_at).where(ledger.ACCOUNTS.c.id == wallet_id)).scalar()
    if opened is None:
        return []
    first = session.execute(
        select(func.min(TRANSFERS.c.created_at)).where(
            or_(TRANSFERS.c.debit_account_id == wallet_id, TRANSFERS.c.credit_account_id == wallet_id)
        )
    ).scalar()
    start = month_start(min(opened, first).date() if first is not None else opened.date())
    out: list[date] = []
    current = month_start(now.date())
    while start <= current:
        out.append(start)
        start = next_month(start)
    return out[::-1]


def statement(
    session: Session, organization_id: uuid.UUID, start: date, *, now: datetime, currency: str = ledger.CURRENCY
) -> StatementView:
    """The statement for the month starting `start`: the stored one if finalised; else
    finalised now if the month is over (plus GRACE); else computed live (open)."""
    period = f"{start.year:04d}-{start.month:02d}"
    stored = _stored(session, organization_id, currency, period)
    if stored is not None:
        return stored
    view = _compute(session, organization_id, currency, start, now=now)
    if now < _instant(next_month(start)) + GRACE:
        return view
    return _finalize(session, view, now=now)


def find(session: Session, organization_id: uuid.UUID, wanted: uuid.UUID, *, now: datetime) -> StatementView | None:
    """The organization's statement with this id, or None (another organization's is None too)."""
    for start in periods(session, organization_id, now=now):
        period = f"{start.year:04d}-{start.month:02d}"
        if statement_id(organization_id, ledger.CURRENCY, period) == wanted:
            return statement(session, organization_id, start, now=now)
    return None


# --- computing ------------------------------------------------------------------------------------


def _signed(wallet_id: uuid.UUID) -> Any:
    return case((TRANSFERS.c.credit_account_id == wallet_id, TRANSFERS.c.amount), else_=-TRANSFERS.c.amount)


def _posted_touching(wallet_id: uuid.UUID) -> Any:
    return and_(
        TRANSFERS.c.kind.in_(("single", "post")),
        or_(TRANSFERS.c.debit_account_id == wallet_id, TRANSFERS.c.credit_account_id == wallet_id),
    )


def _compute(
    session: Session, organization_id: uuid.UUID, currency: str, start: date, *, now: datetime
) -> StatementView:
    end = next_month(start)
    wallet_id = ledger.account_id(ledger.wallet_code(organization_id), currency)
    opening = session.execute(
        select(func.coalesce(func.sum(_signed(wallet_id)), 0)).where(
            _posted_touching(wallet_id), TRANSFERS.c.created_at < _instant(start)
        )
    ).scalar_one()
    rows = session.execute(
        select(TRANSFERS, _signed(wallet_id).label("signed"))
        .where(
            _posted_touching(wallet_id),
            TRANSFERS.c.created_at >= _instant(start),
            TRANSFERS.c.created_at < _instant(end),
        )
        .order_by(TRANSFERS.c.created_at, TRANSFERS.c.id)
    ).all()
    totals = dict.fromkeys(TOTALS, 0)
    others: list[Line] = []
    for row in rows:
        kind = CATEGORIES.get(row.code, "other")
        totals[kind] += row.signed
        if kind != "usage":
            others.append(
                Line(
                    kind=kind,
                    description=(row.reference or row.code)[:255],
                    amount=row.signed,
                    transfer_id=row.id,
                    code=row.code,
                    occurred_at=row.created_at,
                )
            )
    usage: dict[tuple[str, uuid.UUID], list[Any]] = defaultdict(lambda: ["", 0, 0])
    for u in metering.usage_lines(session, organization_id, start=start, end=end):
        if u.currency != currency:
            continue
        acc = usage[(u.resource_type, u.resource_id)]
        acc[0] = u.description
        acc[1] += u.seconds
        acc[2] += u.amount
    usage_lines = [
        Line(
            kind="usage",
            description=f"{rtype} {desc}"[:255],
            amount=-amount,
            resource_type=rtype,
            resource_id=rid,
            seconds=seconds,
        )
        for (rtype, rid), (desc, seconds, amount) in sorted(usage.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))
    ]
    metered = sum(line.amount for line in usage_lines)
    if totals["usage"] != metered:
        usage_lines.append(
            Line(
                kind="usage",
                description=(
                    "usage charged to the balance in this month differs from usage metered in it "
                    "(charged in another month, or not covered by the balance)"
                ),
                amount=totals["usage"] - metered,
            )
        )
    period = f"{start.year:04d}-{start.month:02d}"
    return StatementView(
        id=statement_id(organization_id, currency, period),
        organization_id=organization_id,
        currency=currency,
        period=period,
        period_start=start,
        status="open",
        opening_balance=int(opening),
        closing_balance=int(opening) + sum(totals.values()),
        totals=totals,
        finalized_at=None,
        lines=usage_lines + others,
    )


# --- finalising -----------------------------------------------------------------------------------


def _finalize(session: Session, view: StatementView, *, now: datetime) -> StatementView:
    row = {
        "id": view.id,
        "organization_id": view.organization_id,
        "currency": view.currency,
        "period": view.period,
        "period_start": view.period_start,
        "opening_balance": view.opening_balance,
        "closing_balance": view.closing_balance,
        "top_ups": view.totals["top_up"],
        "refunds": view.totals["refund"],
        "usage": view.totals["usage"],
        "credits": view.totals["credit"],
        "adjustments": view.totals["adjustment"],
        "other": view.totals["other"],
        "finalized_at": now,
    }
    if ledger._insert_ignore(session, STATEMENTS, row):
        if view.lines:
            session.execute(
                LINES.insert(),
                [
                    {
                        "statement_id": view.id,
                        "position": i,
                        "kind": line.kind,
                        "description": line.description,
                        "amount": line.amount,
                        "resource_type": line.resource_type,
                        "resource_id": line.resource_id,
                        "seconds": line.seconds,
                        "transfer_id": line.transfer_id,
                        "code": line.code,
                        "occurred_at": line.occurred_at,
                    }
                    for i, line in enumerate(view.lines)
                ],
            )
        return replace(view, status="finalized", finalized_at=now)
    # Someone else finalised it first (their transaction committed while we computed).
    stored = _stored(session, view.organization_id, view.currency, view.period)
    assert stored is not None
    return stored


def _stored(session: Session, organization_id: uuid.UUID, currency: str, period: str) -> StatementView | None:
    row = session.execute(
        select(STATEMENTS).where(
            STATEMENTS.c.organization_id == organization_id,
            STATEMENTS.c.currency == currency,
            STATEMENTS.c.period == period,
        )
    ).first()
    if row is None:
        return None
    lines = session.execute(select(LINES).where(LINES.c.statement_id == row.id).order_by(LINES.c.position)).all()
    return StatementView(
        id=row.id,
        organization_id=row.organization_id,
        currency=row.currency,
        period=row.period,
        period_start=row.period_start,
        status="finalized",
        opening_balance=row.opening_balance,
        closing_balance=row.closing_balance,
        totals={
            "top_up": row.top_ups,
            "refund": row.refunds,
            "usage": row.usage,
            "credit": row.credits,
            "adjustment": row.adjustments,
            "other": row.other,
        },
        finalized_at=row.finalized_at,
        lines=[
            Line(
                kind=r.kind,
                description=r.description,
                amount=r.amount,
                resource_type=r.resource_type,
                resource_id=r.resource_id,
                seconds=r.seconds,
                transfer_id=r.transfer_id,
                code=r.code,
                occurred_at=r.occurred_at,
            )
            for r in lines
        ],
    )
