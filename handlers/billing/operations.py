"""Billing & Ledger operation handlers, one per operationId (see docs/architecture.md and
docs/billing.md). The logic is in ledger.py, statements.py and services.py; these functions
translate between their views and the generated models. Every tenant operation reads the
caller's own organization only; a statement id of another organization is a 404."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from generated import models
from handlers.billing import ledger, services, statements
from handlers.billing.ledger import Balance
from hangar.context import RequestContext
from hangar.pagination import Page, decode_cursor, encode_cursor
from hangar.problems import NotFound

# --- tenant ---------------------------------------------------------------------------------------


def get_balance(ctx: RequestContext) -> models.BillingBalance:
    return _balance(ledger.wallet_balance(ctx.session, ctx.caller.organization_id))


def list_transactions(ctx: RequestContext, limit: int, cursor: str | None, code: str | None) -> models.TransactionList:
    page = services.transactions(ctx.session, ctx.caller.organization_id, limit=limit, cursor=cursor, code=code)
    return models.TransactionList(
        data=[
            models.Transaction(
                id=t.transfer.id,
                code=t.transfer.code,
                direction=models.Direction(t.direction),
                amount=t.transfer.amount,
                currency=t.transfer.currency,
                status=models.TransactionStatus(t.transfer.status),
                reference=t.transfer.reference,
                pending_id=t.transfer.pending_id,
                created_at=t.transfer.created_at,
                expires_at=t.transfer.expires_at,
            )
            for t in page.items
        ],
        next_cursor=page.next_cursor,
    )


def list_usage(
    ctx: RequestContext,
    limit: int,
    cursor: str | None,
    from_: dt.date | None,
    to: dt.date | None,
    resource_type: models.ResourceType | None,
) -> models.UsageList:
    start, end = services.usage_range(from_, to, now=ctx.now)
    lines = services.usage(
        ctx.session,
        ctx.caller.organization_id,
        start=start,
        end=end,
        resource_type=resource_type.value if resource_type is not None else None,
    )
    total = sum(u.amount for u in lines if u.currency == ledger.CURRENCY)

    def key(u: object) -> str:
        return f"{u.day.isoformat()}/{u.resource_type}/{u.resource_id}"  # type: ignore[attr-defined]

    page = _page(lines, key, limit, cursor)
    return models.UsageList(
        data=[
            models.UsageLine(
                day=u.day,
                resource_type=models.ResourceType(u.resource_type),
                resource_id=u.resource_id,
                description=u.description[:255],
                seconds=u.seconds,
                amount=u.amount,
                currency=u.currency,
            )
            for u in page.items
        ],
        next_cursor=page.next_cursor,
        from_=start,
        to=end,
        total=total,
        currency=ledger.CURRENCY,
    )


def list_statements(ctx: RequestContext, limit: int, cursor: str | None) -> models.StatementList:
    org = ctx.caller.organization_id
    months = statements.periods(ctx.session, org, now=ctx.now)
    page = _page(months, lambda m: m.isoformat(), limit, cursor, descending=True)
    views = [statements.statement(ctx.session, org, m, now=ctx.now) for m in page.items]
    return models.StatementList(
        data=[models.StatementSummary(**_summary(v)) for v in views], next_cursor=page.next_cursor
    )


def get_statement(ctx: RequestContext, statement_id: uuid.UUID) -> models.Statement:
    view = _find(ctx, statement_id)
    return models.Statement(**_summary(view), lines=[_line(line) for line in view.lines])


def list_statement_lines(
    ctx: RequestContext, statement_id: uuid.UUID, limit: int, cursor: str | None
) -> models.StatementLineList:
    view = _find(ctx, statement_id)
    numbered = list(enumerate(view.lines))
    page = _page(numbered, lambda p: f"{p[0]:08d}", limit, cursor)
    return models.StatementLineList(data=[_line(line) for _, line in page.items], next_cursor=page.next_cursor)


# --- operator -------------------------------------------------------------------------------------


def get_organization_balance(ctx: RequestContext, organization_id: uuid.UUID) -> models.BillingBalance:
    services.existing_wallet(ctx.session, organization_id)
    return _balance(ledger.wallet_balance(ctx.session, organization_id))


def set_credit_limit(
    ctx: RequestContext, organization_id: uuid.UUID, body: models.CreditLimitUpdate
) -> models.BillingBalance:
    return _balance(services.set_credit_limit(ctx.session, organization_id, body.credit_limit, now=ctx.now))


def create_credit_adjustment(
    ctx: RequestContext, organization_id: uuid.UUID, body: models.CreditAdjustmentCreate
) -> models.CreditAdjustment:
    direction = body.direction.value
    view, after = services.adjust(
        ctx.session, organization_id, direction=direction, amount=body.amount, reason=body.reason, now=ctx.now
    )
    ctx.emit(
        "credit.adjusted",
        organization_id,
        {
            "adjustment_id": str(view.id),
            "direction": direction,
            "amount": view.amount,
            "currency": view.currency,
            "reason": body.reason,
            "balance": after.posted,
        },
    )
    return models.CreditAdjustment(
        id=view.id,
        organization_id=organization_id,
        direction=body.direction,
        amount=view.amount,
        currency=view.currency,
        reason=body.reason,
        created_at=view.created_at,
        balance=_balance(after),
    )


# --- translation ----------------------------------------------------------------------------------


def _find(ctx: RequestContext, statement_id: uuid.UUID) -> statements.StatementView:
    view = statements.find(ctx.session, ctx.caller.organization_id, statement_id, now=ctx.now)
    if view is None:
        raise NotFound(f"No statement {statement_id}.")
    return view


def _balance(b: Balance) -> models.BillingBalance:
    return models.BillingBalance(
        currency=b.currency,
        balance=b.posted,
        available=b.available,
        held=b.debits_pending,
        credit_limit=b.credit_limit,
    )


def _summary(v: statements.StatementView) -> dict[str, Any]:
    return {
        "id": v.id,
        "period": v.period,
        "status": models.StatementStatus(v.status),
        "currency": v.currency,
        "opening_balance": v.opening_balance,
        "closing_balance": v.closing_balance,
        "top_ups": v.totals["top_up"],
        "refunds": v.totals["refund"],
        "usage": v.totals["usage"],
        "credits": v.totals["credit"],
        "adjustments": v.totals["adjustment"],
        "other": v.totals["other"],
        "finalized_at": v.finalized_at,
    }


def _line(line: statements.Line) -> models.StatementLine:
    return models.StatementLine(
        kind=models.Kind(line.kind),
        description=line.description,
        amount=line.amount,
        resource_type=models.ResourceType(line.resource_type) if line.resource_type else None,
        resource_id=line.resource_id,
        seconds=line.seconds,
        transaction_id=line.transfer_id,
        occurred_at=line.occurred_at,
    )


def _page(items, key, limit, cursor, *, descending=False):  # type: ignore[no-untyped-def]
    """Keyset paging over a small, fully computed list (months, a range's usage lines, a
    statement's lines): the cursor is the last key served."""
    ordered = sorted(items, key=key, reverse=descending)
    if cursor is not None:
        (after,) = decode_cursor(cursor, 1)
        ordered = [i for i in ordered if (key(i) < str(after) if descending else key(i) > str(after))]
    chunk = ordered[:limit]
    more = len(ordered) > limit
    return Page(chunk, encode_cursor([key(chunk[-1])]) if more and chunk else None)
