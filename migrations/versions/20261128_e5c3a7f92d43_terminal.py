"""terminal

Revision ID: e5c3a7f92d43
Revises: d4b2f6e81c32
Create Date: 2026-11-28 10:30:00.000000

Terminal Gateway tables (handlers/terminal/tables.py): terminal sessions and their tickets.
Autogenerate against the models, review, and keep plain SQLAlchemy types (no application
imports) — see the provisioning revision's note.
"""

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401 - used once the tables are written
from alembic import op  # noqa: F401 - used once the tables are written

# revision identifiers, used by Alembic.
revision: str = "e5c3a7f92d43"
down_revision: str | Sequence[str] | None = "d4b2f6e81c32"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
