"""billing

Revision ID: c3a1e5d70b21
Revises: b5f2a8c4e611
Create Date: 2026-11-28 10:30:00.000000

Billing & Ledger tables (handlers/billing/tables.py): accounts, transfers, meters, usage, statements.
Autogenerate against the models, review, and keep plain SQLAlchemy types (no application
imports) — see the provisioning revision's note.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "c3a1e5d70b21"
down_revision: str | Sequence[str] | None = "b5f2a8c4e611"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # --- ledger and statements (handlers/billing/tables.py) ---
    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("code", sa.String(length=100), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=True),
        sa.Column("debits_pending", sa.BigInteger(), nullable=False),
        sa.Column("debits_posted", sa.BigInteger(), nullable=False),
        sa.Column("credits_pending", sa.BigInteger(), nullable=False),
        sa.Column("credits_posted", sa.BigInteger(), nullable=False),
        sa.Column("debits_must_not_exceed_credits", sa.Boolean(), nullable=False),
        sa.Column("credit_limit", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "NOT debits_must_not_exceed_credits OR debits_pending + debits_posted <= credits_posted + credit_limit",
            name=op.f("ck_ledger_accounts_no_overdraft"),
        ),
        sa.CheckConstraint("credit_limit >= 0", name=op.f("ck_ledger_accounts_credit_limit")),
        sa.CheckConstraint(
            "debits_pending >= 0 AND debits_posted >= 0 AND credits_pending >= 0 AND credits_posted >= 0",
            name=op.f("ck_ledger_accounts_totals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_accounts")),
        sa.UniqueConstraint("code", "currency", name=op.f("uq_ledger_accounts_code_currency")),
    )
    op.create_index(op.f("ix_ledger_accounts_organization_id"), "ledger_accounts", ["organization_id"], unique=False)
    op.create_table(
        "ledger_transfers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("debit_account_id", sa.Uuid(), nullable=False),
        sa.Column("credit_account_id", sa.Uuid(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("reference", sa.String(length=255), nullable=True),
        sa.Column("organization_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("pending_id", sa.Uuid(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(kind IN ('post', 'void', 'expire')) = (pending_id IS NOT NULL)",
            name=op.f("ck_ledger_transfers_pending_id"),
        ),
        sa.CheckConstraint("kind = 'pending' OR expires_at IS NULL", name=op.f("ck_ledger_transfers_expires_at")),
        sa.CheckConstraint(
            "kind IN ('single', 'pending', 'post', 'void', 'expire')", name=op.f("ck_ledger_transfers_kind")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_ledger_transfers_amount")),
        sa.CheckConstraint("debit_account_id <> credit_account_id", name=op.f("ck_ledger_transfers_accounts")),
        sa.ForeignKeyConstraint(
            ["credit_account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_ledger_transfers_credit_account_id_ledger_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["debit_account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_ledger_transfers_debit_account_id_ledger_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["pending_id"], ["ledger_transfers.id"], name=op.f("fk_ledger_transfers_pending_id_ledger_transfers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_transfers")),
        sa.UniqueConstraint("pending_id", name=op.f("uq_ledger_transfers_pending_id")),
    )
    op.create_index("ix_ledger_transfers_credit", "ledger_transfers", ["credit_account_id", "created_at", "id"])
    op.create_index("ix_ledger_transfers_debit", "ledger_transfers", ["debit_account_id", "created_at", "id"])
    op.create_table(
        "ledger_open_pendings",
        sa.Column("pending_id", sa.Uuid(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["pending_id"], ["ledger_transfers.id"], name=op.f("fk_ledger_open_pendings_pending_id_ledger_transfers")
        ),
        sa.PrimaryKeyConstraint("pending_id", name=op.f("pk_ledger_open_pendings")),
    )
    op.create_index(op.f("ix_ledger_open_pendings_expires_at"), "ledger_open_pendings", ["expires_at"], unique=False)
    op.create_table(
        "billing_statements",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("opening_balance", sa.BigInteger(), nullable=False),
        sa.Column("closing_balance", sa.BigInteger(), nullable=False),
        sa.Column("top_ups", sa.BigInteger(), nullable=False),
        sa.Column("refunds", sa.BigInteger(), nullable=False),
        sa.Column("usage", sa.BigInteger(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("adjustments", sa.BigInteger(), nullable=False),
        sa.Column("other", sa.BigInteger(), nullable=False),
        sa.Column("finalized_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "closing_balance = opening_balance + top_ups + refunds + usage + credits + adjustments + other",
            name=op.f("ck_billing_statements_balanced"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_statements")),
        sa.UniqueConstraint(
            "organization_id", "currency", "period", name=op.f("uq_billing_statements_organization_id_currency_period")
        ),
    )
    op.create_index("ix_billing_statements_list", "billing_statements", ["organization_id", "period_start", "id"])
    op.create_table(
        "billing_statement_lines",
        sa.Column("statement_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("resource_type", sa.String(length=16), nullable=True),
        sa.Column("resource_id", sa.Uuid(), nullable=True),
        sa.Column("seconds", sa.BigInteger(), nullable=True),
        sa.Column("transfer_id", sa.Uuid(), nullable=True),
        sa.Column("code", sa.String(length=32), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "kind IN ('usage', 'top_up', 'refund', 'credit', 'adjustment', 'other')",
            name=op.f("ck_billing_statement_lines_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["statement_id"],
            ["billing_statements.id"],
            name=op.f("fk_billing_statement_lines_statement_id_billing_statements"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("statement_id", "position", name=op.f("pk_billing_statement_lines")),
    )
    # --- end of ledger and statements ---

    # --- metering (handlers/billing/metering_tables.py) ---
    op.create_table(
        "billing_meter_edges",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("resource_id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("rate", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('start', 'stop', 'end')", name=op.f("ck_billing_meter_edges_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_meter_edges")),
    )
    op.create_index("ix_billing_meter_edges_resource_at", "billing_meter_edges", ["resource_id", "at"], unique=False)
    op.create_table(
        "billing_metering_orgs",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("uncollected", sa.BigInteger(), nullable=False),
        sa.Column("low", sa.Boolean(), nullable=False),
        sa.Column("depleted", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("uncollected >= 0 AND seq >= 0", name=op.f("ck_billing_metering_orgs_amounts")),
        sa.PrimaryKeyConstraint("organization_id", name=op.f("pk_billing_metering_orgs")),
    )
    op.create_table(
        "billing_meters",
        sa.Column("resource_id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("resource_type", sa.String(length=16), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("period_seconds", sa.BigInteger(), nullable=False),
        sa.Column("running", sa.Boolean(), nullable=False),
        sa.Column("rate", sa.BigInteger(), nullable=False),
        sa.Column("charged_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("charged_units", sa.BigInteger(), nullable=False),
        sa.Column("charged_amount", sa.BigInteger(), nullable=False),
        sa.Column("pending", sa.Boolean(), nullable=False),
        sa.Column("dirty_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("resource_type IN ('instance', 'volume')", name=op.f("ck_billing_meters_resource_type")),
        sa.CheckConstraint(
            "period_seconds > 0 AND rate >= 0 AND charged_units >= 0", name=op.f("ck_billing_meters_amounts")
        ),
        sa.PrimaryKeyConstraint("resource_id", name=op.f("pk_billing_meters")),
    )
    op.create_index("ix_billing_meters_active_org", "billing_meters", ["active", "organization_id"], unique=False)
    op.create_index("ix_billing_meters_org", "billing_meters", ["organization_id"], unique=False)
    op.create_table(
        "billing_usage",
        sa.Column("resource_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("resource_type", sa.String(length=16), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("seconds", sa.BigInteger(), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("resource_id", "day", name=op.f("pk_billing_usage")),
    )
    op.create_index("ix_billing_usage_org_day", "billing_usage", ["organization_id", "day"], unique=False)
    # --- end of metering ---


def downgrade() -> None:
    # --- metering ---
    op.drop_index("ix_billing_usage_org_day", table_name="billing_usage")
    op.drop_table("billing_usage")
    op.drop_index("ix_billing_meters_org", table_name="billing_meters")
    op.drop_index("ix_billing_meters_active_org", table_name="billing_meters")
    op.drop_table("billing_meters")
    op.drop_table("billing_metering_orgs")
    op.drop_index("ix_billing_meter_edges_resource_at", table_name="billing_meter_edges")
    op.drop_table("billing_meter_edges")
    # --- end of metering ---
    # --- ledger and statements ---
    op.drop_table("billing_statement_lines")
    op.drop_index("ix_billing_statements_list", table_name="billing_statements")
    op.drop_table("billing_statements")
    op.drop_index(op.f("ix_ledger_open_pendings_expires_at"), table_name="ledger_open_pendings")
    op.drop_table("ledger_open_pendings")
    op.drop_index("ix_ledger_transfers_debit", table_name="ledger_transfers")
    op.drop_index("ix_ledger_transfers_credit", table_name="ledger_transfers")
    op.drop_table("ledger_transfers")
    op.drop_index(op.f("ix_ledger_accounts_organization_id"), table_name="ledger_accounts")
    op.drop_table("ledger_accounts")
    # --- end of ledger and statements ---
