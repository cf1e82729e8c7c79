"""Payments operation handlers, one per operationId (see docs/architecture.md and
docs/payments.md). Each calls services.py and returns the generated response model; rows →
models is in the `_`-prefixed helpers, field by field, so the provider's token never leaks.
"""

from __future__ import annotations

import uuid

from generated import models
from handlers.payments import configuration, services, webhooks
from handlers.payments.signing import HEADER
from handlers.payments.tables import PaymentMethod, Refund, TopUp
from hangar.context import RequestContext
from hangar.problems import BadRequest

CURRENCY = "USD"


def list_payment_methods(ctx: RequestContext, limit: int, cursor: str | None) -> models.PaymentMethodList:
    page = services.list_payment_methods(ctx.session, ctx.caller.organization_id, limit=limit, cursor=cursor)
    return models.PaymentMethodList(data=[_method(m) for m in page.items], next_cursor=page.next_cursor)


def create_payment_method(ctx: RequestContext, body: models.PaymentMethodCreate) -> models.PaymentMethod:
    method = services.create_payment_method(
        ctx.session,
        ctx.caller.organization_id,
        number=body.number,
        exp_month=body.exp_month,
        exp_year=body.exp_year,
        now=ctx.now,
    )
    return _method(method)


def get_payment_method(ctx: RequestContext, payment_method_id: uuid.UUID) -> models.PaymentMethod:
    return _method(services.get_payment_method(ctx.session, ctx.caller.organization_id, payment_method_id))


def delete_payment_method(ctx: RequestContext, payment_method_id: uuid.UUID) -> None:
    services.delete_payment_method(ctx.session, ctx.caller.organization_id, payment_method_id, ctx.now)


def list_top_ups(
    ctx: RequestContext, limit: int, cursor: str | None, status: models.TopUpStatus | None
) -> models.TopUpList:
    page = services.list_top_ups(
        ctx.session,
        ctx.caller.organization_id,
        limit=limit,
        cursor=cursor,
        status=status.value if status is not None else None,
    )
    return models.TopUpList(data=[_top_up(t) for t in page.items], next_cursor=page.next_cursor)


def create_top_up(ctx: RequestContext, body: models.TopUpCreate) -> models.TopUp:
    top_up = services.create_top_up(
        ctx.session,
        ctx.caller.organization_id,
        amount=body.amount,
        currency=body.currency.value if body.currency is not None else CURRENCY,
        payment_method_id=uuid.UUID(str(body.payment_method)) if body.payment_method is not None else None,
        card=body.card,
        confirm=body.confirm if body.confirm is not None else True,
        settings=configuration.current(),
        now=ctx.now,
    )
    return _top_up(top_up)


def get_top_up(ctx: RequestContext, top_up_id: uuid.UUID) -> models.TopUp:
    return _top_up(services.get_top_up(ctx.session, ctx.caller.organization_id, top_up_id))


def confirm_top_up(ctx: RequestContext, top_up_id: uuid.UUID) -> models.TopUp:
    top_up = services.confirm_top_up(
        ctx.session, ctx.caller.organization_id, top_up_id, settings=configuration.current(), now=ctx.now
    )
    return _top_up(top_up)


def cancel_top_up(ctx: RequestContext, top_up_id: uuid.UUID) -> models.TopUp:
    return _top_up(services.cancel_top_up(ctx.session, ctx.caller.organization_id, top_up_id, ctx.now))


def list_refunds(ctx: RequestContext, top_up_id: uuid.UUID, limit: int, cursor: str | None) -> models.RefundList:
    page = services.list_refunds(ctx.session, ctx.caller.organization_id, top_up_id, limit=limit, cursor=cursor)
    return models.RefundList(data=[_refund(r) for r in page.items], next_cursor=page.next_cursor)


def create_refund(ctx: RequestContext, top_up_id: uuid.UUID, body: models.RefundCreate) -> models.Refund:
    refund = services.create_refund(
        ctx.session, ctx.caller.organization_id, top_up_id, amount=body.amount, reason=body.reason, now=ctx.now
    )
    return _refund(refund)


def receive_sandbox_webhook(ctx: RequestContext, body: models.SandboxEvent) -> models.WebhookReceipt:
    # The signature is over the bytes received (hangar.validators keeps them in ctx.raw_body);
    # `body` is the same event, already validated against the schema.
    if ctx.raw_body is None:
        raise BadRequest("The webhook needs its body.")
    receipt = webhooks.receive(
        ctx.session,
        header=ctx.headers.get(HEADER),
        raw_body=ctx.raw_body,
        settings=configuration.current(),
        now=ctx.now,
    )
    return models.WebhookReceipt(
        event_id=receipt.event_id,
        type=models.SandboxEventType(receipt.type),
        top_up_id=receipt.top_up_id,
        applied=receipt.applied,
        status=models.TopUpStatus(receipt.status),
    )


# --- rows → API models ------------------------------------------------------------------------


def _method(method: PaymentMethod) -> models.PaymentMethod:
    return models.PaymentMethod(
        id=method.id,
        provider=models.PaymentProvider(method.provider),
        brand=models.CardBrand(method.brand),
        last4=method.last4,
        exp_month=method.exp_month,
        exp_year=method.exp_year,
        created_at=method.created_at,
    )


def _top_up(top_up: TopUp) -> models.TopUp:
    error = (
        models.TopUpError(code=top_up.failure_code, message=top_up.failure_message or top_up.failure_code)
        if top_up.failure_code
        else None
    )
    return models.TopUp(
        id=top_up.id,
        status=models.TopUpStatus(top_up.status),
        processing=top_up.status == "processing",
        amount=top_up.amount,
        amount_refunded=top_up.amount_refunded,
        currency=models.Currency(top_up.currency),
        payment_method=top_up.payment_method_id,
        card_brand=models.CardBrand(top_up.card_brand),
        card_last4=top_up.card_last4,
        failure_code=top_up.failure_code,
        error=error,
        balance_after=top_up.balance_after,
        created_at=top_up.created_at,
        updated_at=top_up.updated_at,
        completed_at=top_up.completed_at,
    )


def _refund(refund: Refund) -> models.Refund:
    return models.Refund(
        id=refund.id,
        top_up_id=refund.top_up_id,
        status=models.RefundStatus(refund.status),
        amount=refund.amount,
        currency=models.Currency(refund.currency),
        reason=refund.reason,
        balance_after=refund.balance_after,
        created_at=refund.created_at,
    )
