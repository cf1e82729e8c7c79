"""payments

Revision ID: d4b2f6e81c32
Revises: c3a1e5d70b21
Create Date: 2026-11-28 10:30:00.000000

Payments tables (handlers/payments/tables.py): payment methods, top-ups, refunds, webhook events
(received, deduplicated by id), and the sandbox provider's own vault, webhook outbox and
generated signing secret.
Autogenerate against the models, review, and keep plain SQLAlchemy types (no application
imports) — see the provisioning revision's note.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "d4b2f6e81c32"
down_revision: str | Sequence[str] | None = "c3a1e5d70b21"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payment_methods",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("brand", sa.String(length=16), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("exp_month", sa.Integer(), nullable=False),
        sa.Column("exp_year", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_methods")),
    )
    op.create_index(
        "ix_payment_methods_org_created", "payment_methods", ["organization_id", "created_at", "id"], unique=False
    )
    op.create_table(
        "payment_webhook_events",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("top_up_id", sa.Uuid(), nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_webhook_events")),
    )
    op.create_table(
        "payments_provider_secrets",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments_provider_secrets")),
    )
    op.create_table(
        "sandbox_cards",
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("behaviour", sa.String(length=16), nullable=False),
        sa.Column("brand", sa.String(length=16), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("exp_month", sa.Integer(), nullable=False),
        sa.Column("exp_year", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token", name=op.f("pk_sandbox_cards")),
    )
    op.create_table(
        "sandbox_webhook_outbox",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("top_up_id", sa.Uuid(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sandbox_webhook_outbox")),
    )
    op.create_index("ix_sandbox_webhook_outbox_due", "sandbox_webhook_outbox", ["delivered_at", "due_at"], unique=False)
    op.create_table(
        "top_ups",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("amount_refunded", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("payment_method_id", sa.Uuid(), nullable=True),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("provider_token", sa.String(length=64), nullable=False),
        sa.Column("card_brand", sa.String(length=16), nullable=False),
        sa.Column("card_last4", sa.String(length=4), nullable=False),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("failure_message", sa.String(length=500), nullable=True),
        sa.Column("transfer_id", sa.Uuid(), nullable=True),
        sa.Column("balance_after", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('requires_confirmation', 'processing', 'succeeded', 'failed', 'canceled')",
            name=op.f("ck_top_ups_status"),
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_top_ups_amount")),
        sa.CheckConstraint("amount_refunded >= 0 AND amount_refunded <= amount", name=op.f("ck_top_ups_refunded")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_top_ups")),
    )
    op.create_index("ix_top_ups_org_created", "top_ups", ["organization_id", "created_at", "id"], unique=False)
    op.create_table(
        "top_up_refunds",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("top_up_id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("transfer_id", sa.Uuid(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_top_up_refunds_amount")),
        sa.ForeignKeyConstraint(["top_up_id"], ["top_ups.id"], name=op.f("fk_top_up_refunds_top_up_id_top_ups")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_top_up_refunds")),
    )
    op.create_index(
        "ix_top_up_refunds_top_up_created", "top_up_refunds", ["top_up_id", "created_at", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_top_up_refunds_top_up_created", table_name="top_up_refunds")
    op.drop_table("top_up_refunds")
    op.drop_index("ix_top_ups_org_created", table_name="top_ups")
    op.drop_table("top_ups")
    op.drop_index("ix_sandbox_webhook_outbox_due", table_name="sandbox_webhook_outbox")
    op.drop_table("sandbox_webhook_outbox")
    op.drop_table("sandbox_cards")
    op.drop_table("payments_provider_secrets")
    op.drop_table("payment_webhook_events")
    op.drop_index("ix_payment_methods_org_created", table_name="payment_methods")
    op.drop_table("payment_methods")
