"""Payments operation handlers (temporary bodies while the context is being written)."""

from __future__ import annotations

import uuid

from generated import models
from hangar.context import RequestContext


def list_payment_methods(ctx: RequestContext, limit: int, cursor: str | None) -> models.PaymentMethodList:
    raise NotImplementedError


def create_payment_method(ctx: RequestContext, body: models.PaymentMethodCreate) -> models.PaymentMethod:
    raise NotImplementedError


def get_payment_method(ctx: RequestContext, payment_method_id: uuid.UUID) -> models.PaymentMethod:
    raise NotImplementedError


def delete_payment_method(ctx: RequestContext, payment_method_id: uuid.UUID) -> None:
    raise NotImplementedError


def list_top_ups(
    ctx: RequestContext, limit: int, cursor: str | None, status: models.TopUpStatus | None
) -> models.TopUpList:
    raise NotImplementedError


def create_top_up(ctx: RequestContext, body: models.TopUpCreate) -> models.TopUp:
    raise NotImplementedError


def get_top_up(ctx: RequestContext, top_up_id: uuid.UUID) -> models.TopUp:
    raise NotImplementedError


def confirm_top_up(ctx: RequestContext, top_up_id: uuid.UUID) -> models.TopUp:
    raise NotImplementedError


def cancel_top_up(ctx: RequestContext, top_up_id: uuid.UUID) -> models.TopUp:
    raise NotImplementedError


def list_refunds(ctx: RequestContext, top_up_id: uuid.UUID, limit: int, cursor: str | None) -> models.RefundList:
    raise NotImplementedError


def create_refund(ctx: RequestContext, top_up_id: uuid.UUID, body: models.RefundCreate) -> models.Refund:
    raise NotImplementedError


def receive_sandbox_webhook(ctx: RequestContext, body: models.SandboxEvent) -> models.WebhookReceipt:
    raise NotImplementedError
