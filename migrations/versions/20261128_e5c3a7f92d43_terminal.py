"""terminal

Revision ID: e5c3a7f92d43
Revises: d4b2f6e81c32
Create Date: 2026-11-28 10:30:00.000000

Terminal Gateway tables (handlers/terminal/tables.py): terminal sessions and their tickets.
Autogenerate against the models, review, and keep plain SQLAlchemy types (no application
imports) — see the provisioning revision's note.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "e5c3a7f92d43"
down_revision: str | Sequence[str] | None = "d4b2f6e81c32"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "terminal_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("instance_id", sa.Uuid(), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("command", sa.JSON(), nullable=True),
        sa.Column("cols", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("ticket_hash", sa.String(length=64), nullable=False),
        sa.Column("ticket_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ticket_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(length=32), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("close_requested", sa.String(length=32), nullable=True),
        sa.Column("client_address", sa.String(length=64), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'active', 'ended')", name=op.f("ck_terminal_sessions_status")),
        sa.CheckConstraint("bytes_in >= 0 AND bytes_out >= 0", name=op.f("ck_terminal_sessions_bytes")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_terminal_sessions")),
        sa.UniqueConstraint("ticket_hash", name=op.f("uq_terminal_sessions_ticket_hash")),
    )
    op.create_index(
        "ix_terminal_sessions_instance_status", "terminal_sessions", ["instance_id", "status"], unique=False
    )
    op.create_index(
        "ix_terminal_sessions_org_created", "terminal_sessions", ["organization_id", "created_at", "id"], unique=False
    )
    op.create_index("ix_terminal_sessions_org_status", "terminal_sessions", ["organization_id", "status"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_terminal_sessions_org_status", table_name="terminal_sessions")
    op.drop_index("ix_terminal_sessions_org_created", table_name="terminal_sessions")
    op.drop_index("ix_terminal_sessions_instance_status", table_name="terminal_sessions")
    op.drop_table("terminal_sessions")
