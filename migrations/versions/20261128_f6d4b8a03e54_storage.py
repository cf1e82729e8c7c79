"""storage

Revision ID: f6d4b8a03e54
Revises: e5c3a7f92d43
Create Date: 2026-11-28 10:30:00.000000

Storage tables (handlers/storage/tables.py): volumes (the attachment is a column of the volume),
volume actions, snapshots.
Autogenerate against the models, review, and keep plain SQLAlchemy types (no application
imports) — see the provisioning revision's note.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "f6d4b8a03e54"
down_revision: str | Sequence[str] | None = "e5c3a7f92d43"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "volumes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("region", sa.String(length=32), nullable=False),
        sa.Column("size_gib", sa.Integer(), nullable=False),
        sa.Column("snapshot_id", sa.Uuid(), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("state_reason", sa.String(length=500), nullable=True),
        sa.Column("instance_id", sa.Uuid(), nullable=True),
        sa.Column("attached_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("action_id", sa.Uuid(), nullable=True),
        sa.Column("step", sa.String(length=16), nullable=True),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("step_errors", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(instance_id IS NULL AND NOT state IN ('attaching', 'detaching', 'in_use')) OR "
            "(instance_id IS NOT NULL AND state IN ('attaching', 'detaching', 'in_use'))",
            name=op.f("ck_volumes_attachment"),
        ),
        sa.CheckConstraint(
            "state IN ('creating', 'available', 'attaching', 'in_use', 'detaching', 'deleting', 'deleted', 'error')",
            name=op.f("ck_volumes_state"),
        ),
        sa.CheckConstraint("size_gib >= 1 AND size_gib <= 16384", name=op.f("ck_volumes_size_gib")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_volumes")),
    )
    op.create_index("ix_volumes_instance", "volumes", ["instance_id"], unique=False)
    op.create_index("ix_volumes_next_run_at", "volumes", ["next_run_at"], unique=False)
    op.create_index("ix_volumes_org_created", "volumes", ["organization_id", "created_at", "id"], unique=False)
    # Names are unique per organization and region among volumes that are not deleted.
    op.create_index(
        "uq_volumes_live_name",
        "volumes",
        ["organization_id", "region", "name"],
        unique=True,
        sqlite_where=sa.text("state <> 'deleted'"),
        postgresql_where=sa.text("state <> 'deleted'"),
    )

    op.create_table(
        "volume_actions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("volume_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.Uuid(), nullable=True),
        sa.Column("size_gib", sa.Integer(), nullable=True),
        sa.Column("previous_size_gib", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')", name=op.f("ck_volume_actions_status")
        ),
        sa.CheckConstraint(
            "type IN ('create', 'attach', 'detach', 'resize', 'delete')", name=op.f("ck_volume_actions_type")
        ),
        sa.CheckConstraint("progress >= 0 AND progress <= 100", name=op.f("ck_volume_actions_progress")),
        sa.ForeignKeyConstraint(
            ["volume_id"], ["volumes.id"], name=op.f("fk_volume_actions_volume_id_volumes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_volume_actions")),
    )
    op.create_index(
        "ix_volume_actions_volume_created", "volume_actions", ["volume_id", "created_at", "id"], unique=False
    )

    op.create_table(
        "volume_snapshots",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("volume_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("region", sa.String(length=32), nullable=False),
        sa.Column("size_gib", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("state_reason", sa.String(length=500), nullable=True),
        sa.Column("step", sa.String(length=16), nullable=True),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("step_errors", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'available', 'error', 'deleting', 'deleted')", name=op.f("ck_volume_snapshots_state")
        ),
        sa.ForeignKeyConstraint(
            ["volume_id"], ["volumes.id"], name=op.f("fk_volume_snapshots_volume_id_volumes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_volume_snapshots")),
    )
    op.create_index("ix_volume_snapshots_next_run_at", "volume_snapshots", ["next_run_at"], unique=False)
    op.create_index(
        "ix_volume_snapshots_org_created", "volume_snapshots", ["organization_id", "created_at", "id"], unique=False
    )
    op.create_index("ix_volume_snapshots_volume", "volume_snapshots", ["volume_id"], unique=False)


def downgrade() -> None:
    op.drop_table("volume_snapshots")
    op.drop_table("volume_actions")
    op.drop_table("volumes")
