"""Billing & Ledger persistence: a double-entry ledger on TigerBeetle's model, and the
materialised monthly statements.

Accounts (`ledger_accounts`) keep four running totals — debits/credits, pending/posted —
rewritten in the same transaction as every transfer that moves them, so a balance is one
row read. Transfers (`ledger_transfers`) are immutable: the ledger only ever inserts them.
A pending transfer (a hold) is resolved by exactly one later transfer naming it in
`pending_id` — a post (≤ the held amount, the rest released), a void or an expiry — and the
unique index on `pending_id` makes a second resolution impossible to store, whatever the
code does. `ledger_open_pendings` lists the holds not yet resolved (inserted with the hold,
deleted by its resolution): the expiry sweep reads it instead of scanning history.

CHECK constraints are the second line behind ledger.py: amounts are positive, totals never
negative, and an account that must not overdraw (`debits_must_not_exceed_credits`, the
wallets) never has debits_pending + debits_posted > credits_posted + credit_limit.

Statements (`billing_statements`, `billing_statement_lines`) are written once, when a past
month is finalised, unique per (organization, currency, period); the open month is computed
live and never stored. See docs/billing.md.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from hangar.db import Base, UTCDateTime

# What a transfer row is: a one-step transfer, a hold, or the one row that resolves a hold.
TRANSFER_KINDS: tuple[str, ...] = ("single", "pending", "post", "void", "expire")
RESOLVING_KINDS: tuple[str, ...] = ("post", "void", "expire")
STATEMENT_LINE_KINDS: tuple[str, ...] = ("usage", "top_up", "refund", "credit", "adjustment", "other")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class LedgerAccount(Base):
    __tablename__ = "ledger_accounts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    # "org:<uuid>:wallet" or "platform:<name>"; one account per (code, currency).
    code: Mapped[str] = mapped_column(String(100))
    currency: Mapped[str] = mapped_column(String(3))
    organization_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True, index=True)
    debits_pending: Mapped[int] = mapped_column(BigInteger)
    debits_posted: Mapped[int] = mapped_column(BigInteger)
    credits_pending: Mapped[int] = mapped_column(BigInteger)
    credits_posted: Mapped[int] = mapped_column(BigInteger)
    debits_must_not_exceed_credits: Mapped[bool] = mapped_column(Boolean)
    # How far below zero the account may go (an operator's decision, wallets only).
    credit_limit: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("code", "currency"),
        CheckConstraint(
            "debits_pending >= 0 AND debits_posted >= 0 AND credits_pending >= 0 AND credits_posted >= 0",
            name="totals",
        ),
        CheckConstraint("credit_limit >= 0", name="credit_limit"),
        CheckConstraint(
            "NOT debits_must_not_exceed_credits OR debits_pending + debits_posted <= credits_posted + credit_limit",
            name="no_overdraft",
        ),
    )


class LedgerTransfer(Base):
    __tablename__ = "ledger_transfers"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    debit_account_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("ledger_accounts.id"))
    credit_account_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("ledger_accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    code: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str | None] = mapped_column(String(255), nullable=True)
    organization_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    kind: Mapped[str] = mapped_column(String(8))
    # The hold a post/void/expire resolves; unique: a hold is resolved at most once.
    pending_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("ledger_transfers.id"), nullable=True, unique=True
    )
    # Holds only: when the hold lapses unless posted or voided first.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("amount > 0", name="amount"),
        CheckConstraint("debit_account_id <> credit_account_id", name="accounts"),
        CheckConstraint(_in("kind", TRANSFER_KINDS), name="kind"),
        CheckConstraint(f"({_in('kind', RESOLVING_KINDS)}) = (pending_id IS NOT NULL)", name="pending_id"),
        CheckConstraint("kind = 'pending' OR expires_at IS NULL", name="expires_at"),
        # A wallet's transactions, newest first, from either side.
        Index("ix_ledger_transfers_debit", "debit_account_id", "created_at", "id"),
        Index("ix_ledger_transfers_credit", "credit_account_id", "created_at", "id"),
    )


class LedgerOpenPending(Base):
    """A hold not yet resolved (deleted in the transaction that resolves it)."""

    __tablename__ = "ledger_open_pendings"

    pending_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("ledger_transfers.id"), primary_key=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)


class Statement(Base):
    """A finalised month: written once, never updated (see statements.py)."""

    __tablename__ = "billing_statements"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    currency: Mapped[str] = mapped_column(String(3))
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM
    period_start: Mapped[date] = mapped_column(Date)
    opening_balance: Mapped[int] = mapped_column(BigInteger)
    closing_balance: Mapped[int] = mapped_column(BigInteger)
    top_ups: Mapped[int] = mapped_column(BigInteger)
    refunds: Mapped[int] = mapped_column(BigInteger)
    usage: Mapped[int] = mapped_column(BigInteger)
    credits: Mapped[int] = mapped_column(BigInteger)
    adjustments: Mapped[int] = mapped_column(BigInteger)
    other: Mapped[int] = mapped_column(BigInteger)
    finalized_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("organization_id", "currency", "period"),
        Index("ix_billing_statements_list", "organization_id", "period_start", "id"),
        # Every total is signed from the wallet's side (usage and refunds are normally < 0).
        CheckConstraint(
            "closing_balance = opening_balance + top_ups + refunds + usage + credits + adjustments + other",
            name="balanced",
        ),
    )


class StatementLine(Base):
    __tablename__ = "billing_statement_lines"

    statement_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("billing_statements.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(255))
    # Signed, from the wallet's side: credits to it positive, charges negative.
    amount: Mapped[int] = mapped_column(BigInteger)
    resource_type: Mapped[str | None] = mapped_column(String(16), nullable=True)
    resource_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    seconds: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    transfer_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    occurred_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (CheckConstraint(_in("kind", STATEMENT_LINE_KINDS), name="kind"),)


# Metering's tables (meters, edges, usage, per-organization state) live in their own module.
from handlers.billing import metering_tables  # noqa: E402,F401
