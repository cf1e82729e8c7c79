"""payments

Revision ID: d4b2f6e81c32
Revises: c3a1e5d70b21
Create Date: 2026-11-28 10:30:00.000000

Payments tables (handlers/payments/tables.py): payment methods, top-ups, refunds, webhook events.
Autogenerate against the models, review, and keep plain SQLAlchemy types (no application
imports) — see the provisioning revision's note.
"""

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401 - used once the tables are written
from alembic import op  # noqa: F401 - used once the tables are written

# revision identifiers, used by Alembic.
revision: str = "d4b2f6e81c32"
down_revision: str | Sequence[str] | None = "c3a1e5d70b21"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
