"""invitations and membership status

Revision ID: 8548a3db5c4d
Revises: 06ae62f60754
Create Date: 2026-11-28 02:00:14.700755

Reviewed autogenerate output, plus what autogenerate cannot see:
- `memberships.status` is NOT NULL, so existing rows need a value: it is added with a
  temporary server default of 'active', memberships of users who never set a password become
  'invited' (the status the API derived from the user until now), and the default is dropped
  again (the model sets the status explicitly).
- the CHECK constraint on `memberships.status` (autogenerate does not compare CHECKs).
- memberships is altered before `invitations` exists: on SQLite the batch mode rebuilds the
  table, which must not be referenced by a foreign key while it is dropped and recreated.
  The rebuild copies from `_memberships()`, the table as it stands, instead of reflecting
  it, so the revision also renders as offline SQL (`alembic upgrade --sql`).

Migrations never import application code: types are rendered as plain SQLAlchemy types
(hangar.db.UTCDateTime becomes sa.DateTime(timezone=True)), so old revisions keep working
when the models move on. On SQLite, alter operations must use op.batch_alter_table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "8548a3db5c4d"
down_revision: str | Sequence[str] | None = "06ae62f60754"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _memberships(*, status: bool) -> sa.Table:
    """memberships as revision 06ae62f60754 left it, plus (status=True) the status column
    step 1 of upgrade() adds, with its temporary default: what SQLite's batch rebuild copies."""
    extra: list[sa.SchemaItem] = []
    if status:
        extra.append(sa.Column("status", sa.String(length=20), nullable=False, server_default="active"))
    return sa.Table(
        "memberships",
        sa.MetaData(),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        *extra,
        sa.CheckConstraint("role IN ('owner', 'admin', 'member', 'billing', 'viewer')", name="ck_memberships_role"),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name="fk_memberships_organization_id_organizations",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_memberships_user_id_users", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_memberships"),
        sa.UniqueConstraint("organization_id", "user_id", name="uq_memberships_organization_id_user_id"),
        sa.Index("ix_memberships_org_created", "organization_id", "created_at", "id"),
        sa.Index("ix_memberships_user_id", "user_id"),
    )


def upgrade() -> None:
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status", sa.String(length=20), nullable=False, server_default="active"))
    op.execute(
        "UPDATE memberships SET status = 'invited' WHERE user_id IN (SELECT id FROM users WHERE status = 'invited')"
    )
    with op.batch_alter_table("memberships", schema=None, copy_from=_memberships(status=True)) as batch_op:
        batch_op.alter_column(
            "status", existing_type=sa.String(length=20), existing_nullable=False, server_default=None
        )
        batch_op.create_check_constraint(op.f("ck_memberships_status"), "status IN ('invited', 'active')")

    op.create_table(
        "invitations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("membership_id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["membership_id"],
            ["memberships.id"],
            name=op.f("fk_invitations_membership_id_memberships"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invitations")),
        sa.UniqueConstraint("membership_id", name=op.f("uq_invitations_membership_id")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_invitations_token_hash")),
    )


def downgrade() -> None:
    op.drop_table("invitations")
    after = _memberships(status=True)
    after.c.status.server_default = None
    after.append_constraint(sa.CheckConstraint("status IN ('invited', 'active')", name="ck_memberships_status"))
    with op.batch_alter_table("memberships", schema=None, copy_from=after) as batch_op:
        batch_op.drop_constraint(op.f("ck_memberships_status"), type_="check")
        batch_op.drop_column("status")
