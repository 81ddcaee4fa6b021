"""analyst views (sql/views.sql)

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import re
from pathlib import Path

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

VIEWS_SQL = Path(__file__).resolve().parents[4] / "sql" / "views.sql"


def _view_names() -> list[str]:
    return re.findall(r"CREATE OR REPLACE VIEW (\w+)", VIEWS_SQL.read_text(encoding="utf-8"))


def upgrade() -> None:
    op.execute(VIEWS_SQL.read_text(encoding="utf-8"))


def downgrade() -> None:
    for name in reversed(_view_names()):
        op.execute(f"DROP VIEW IF EXISTS {name}")
