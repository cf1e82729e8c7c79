"""Payments persistence.

Hangar's side: saved payment methods, top-ups (payment intents), their refunds, and the
webhook events received (one row per event id: the deduplication). The sandbox provider's
side — what a real PSP keeps on its own servers — is here too, in its own tables: its card
vault (token → test-card behaviour, brand, last 4; never the number) and its outbox of signed
webhook events waiting to be delivered.

No table has a column that could hold a card number: the widest card field is `last4`.
No foreign keys leave the context (`organization_id` is identity's, transfer ids are the
ledger's); they travel as values.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from hangar.db import Base, UTCDateTime

TOP_UP_STATUSES: tuple[str, ...] = ("requires_confirmation", "processing", "succeeded", "failed", "canceled")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class PaymentMethod(Base):
    """A saved card: the provider's token and what may be shown about the card."""

    __tablename__ = "payment_methods"
    __table_args__ = (Index("ix_payment_methods_org_created", "organization_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    provider: Mapped[str] = mapped_column(String(16))
    token: Mapped[str] = mapped_column(String(64))  # the provider's token, never shown
    brand: Mapped[str] = mapped_column(String(16))
    last4: Mapped[str] = mapped_column(String(4))
    exp_month: Mapped[int] = mapped_column(Integer)
    exp_year: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Removed cards stay (top-ups name them) but are neither listed nor usable.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TopUp(Base):
    """A payment intent that credits the organization's wallet once it succeeds.
    `status` changes only through services.py's transitions (states.py's table)."""

    __tablename__ = "top_ups"
    __table_args__ = (
        CheckConstraint(_in("status", TOP_UP_STATUSES), name="status"),
        CheckConstraint("amount > 0", name="amount"),
        CheckConstraint("amount_refunded >= 0 AND amount_refunded <= amount", name="refunded"),
        Index("ix_top_ups_org_created", "organization_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    amount: Mapped[int] = mapped_column(BigInteger)  # minor units of `currency`
    amount_refunded: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(24))
    payment_method_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    provider: Mapped[str] = mapped_column(String(16))
    provider_token: Mapped[str] = mapped_column(String(64))
    card_brand: Mapped[str] = mapped_column(String(16))
    card_last4: Mapped[str] = mapped_column(String(4))
    failure_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    failure_message: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # The ledger transfer that credited the wallet, and the wallet's posted balance right after.
    transfer_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    balance_after: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Refund(Base):
    __tablename__ = "top_up_refunds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount"),
        Index("ix_top_up_refunds_top_up_created", "top_up_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    top_up_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("top_ups.id"))
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    transfer_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookEvent(Base):
    """A verified provider event, recorded in the transaction that applied (or ignored) it:
    the primary key makes a second delivery of the same id a replay, even concurrently."""

    __tablename__ = "payment_webhook_events"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(32))
    top_up_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    applied: Mapped[bool] = mapped_column(Boolean)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


# --- the sandbox provider's own state (what a PSP keeps on its side) -----------------------


class SandboxCard(Base):
    """The sandbox provider's vault: a token stands for a tokenized test card. It keeps how the
    test card behaves, never the number."""

    __tablename__ = "sandbox_cards"

    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    behaviour: Mapped[str] = mapped_column(String(16))  # "succeed" | "decline" | "fail_later"
    brand: Mapped[str] = mapped_column(String(16))
    last4: Mapped[str] = mapped_column(String(4))
    exp_month: Mapped[int] = mapped_column(Integer)
    exp_year: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SandboxWebhook(Base):
    """A signed-later event the sandbox provider owes Hangar: written in the confirmation's
    transaction, delivered by the background deliverer once due (background.py)."""

    __tablename__ = "sandbox_webhook_outbox"
    __table_args__ = (Index("ix_sandbox_webhook_outbox_due", "delivered_at", "due_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the event id
    top_up_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    payload: Mapped[str] = mapped_column(Text)  # the exact JSON that is signed and sent
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ProviderSecret(Base):
    """The webhook signing secret generated for this database when none is configured
    (settings.payments_webhook_secrets empty): one row, id 1."""

    __tablename__ = "payments_provider_secrets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
