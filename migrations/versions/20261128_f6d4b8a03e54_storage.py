"""storage

Revision ID: f6d4b8a03e54
Revises: e5c3a7f92d43
Create Date: 2026-11-28 10:30:00.000000

Storage tables (handlers/storage/tables.py): volumes, attachments, volume actions, snapshots.
Autogenerate against the models, review, and keep plain SQLAlchemy types (no application
imports) — see the provisioning revision's note.
"""

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401 - used once the tables are written
from alembic import op  # noqa: F401 - used once the tables are written

# revision identifiers, used by Alembic.
revision: str = "f6d4b8a03e54"
down_revision: str | Sequence[str] | None = "e5c3a7f92d43"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
