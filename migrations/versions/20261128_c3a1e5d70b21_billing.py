"""billing

Revision ID: c3a1e5d70b21
Revises: b5f2a8c4e611
Create Date: 2026-11-28 10:30:00.000000

Billing & Ledger tables (handlers/billing/tables.py): accounts, transfers, meters, usage, statements.
Autogenerate against the models, review, and keep plain SQLAlchemy types (no application
imports) — see the provisioning revision's note.
"""

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401 - used once the tables are written
from alembic import op  # noqa: F401 - used once the tables are written

# revision identifiers, used by Alembic.
revision: str = "c3a1e5d70b21"
down_revision: str | Sequence[str] | None = "b5f2a8c4e611"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
