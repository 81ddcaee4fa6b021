"""release lineage: takedown_image, release/QC/takedown views (sql/release_views.sql), export_item
without row-level foreign keys (their FOR KEY SHARE locks cost 41 s per 624k-sample release)

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

VIEWS_SQL = Path(__file__).resolve().parents[4] / "sql" / "release_views.sql"


EXPORT_ITEM_FKS = {
    "fk_export_item_export_id_export": ("export", "export_id", "CASCADE"),
    "fk_export_item_sample_id_sample": ("sample", "sample_id", None),
    "fk_export_item_image_id_image": ("image", "image_id", None),
}


def upgrade() -> None:
    op.create_table(
        "takedown_image",
        sa.Column("takedown_id", sa.BigInteger(), nullable=False),
        sa.Column("image_id", sa.BigInteger(), nullable=False),
        sa.Column("previous_status", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["takedown_id"], ["takedown.id"], name=op.f("fk_takedown_image_takedown_id_takedown"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["image_id"], ["image.id"], name=op.f("fk_takedown_image_image_id_image")),
        sa.PrimaryKeyConstraint("takedown_id", "image_id", name=op.f("pk_takedown_image")),
    )
    op.create_index("ix_takedown_image_image_id", "takedown_image", ["image_id"])
    for name in EXPORT_ITEM_FKS:
        op.drop_constraint(name, "export_item", type_="foreignkey")
    op.execute(VIEWS_SQL.read_text(encoding="utf-8"))


def downgrade() -> None:
    for name in reversed(re.findall(r"CREATE OR REPLACE VIEW (\w+)", VIEWS_SQL.read_text(encoding="utf-8"))):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for name, (table, column, ondelete) in EXPORT_ITEM_FKS.items():
        op.create_foreign_key(name, "export_item", table, [column], ["id"], ondelete=ondelete)
    op.drop_index("ix_takedown_image_image_id", table_name="takedown_image")
    op.drop_table("takedown_image")
