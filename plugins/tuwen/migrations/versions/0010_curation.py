"""curation: one verdict per accepted image (curated / held / rejected) before synthesis

The curation stage (issue 18, `tuwen.curate`) judges each accepted image's model-ready copy and OCR text
with versioned filters (QR-code posters, near-blank images, simple graphics, personal data, unsafe
content) and a Chinese-text share policy. Its verdict is one row per image — status, stable reason
names, the filters' scores, the curation config version that decided, when and which Airflow task —
rewritten when the config changes. Synthesis takes only `curated` images. Analysts read it through
v_curation and v_curation_counts (sql/curation_views.sql).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SQL_DIR = Path(__file__).resolve().parents[4] / "sql"


def upgrade() -> None:
    op.create_table(
        "curation",
        sa.Column("image_id", sa.BigInteger(), sa.ForeignKey("image.id", name=op.f("fk_curation_image_id_image")),
                  nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reasons", JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
        sa.Column("scores", JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("config_version", sa.String(40), nullable=False),
        sa.Column("curated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("dag_id", sa.String(250), nullable=True),
        sa.Column("run_id", sa.String(250), nullable=True),
        sa.Column("task_id", sa.String(250), nullable=True),
        sa.Column("map_index", sa.Integer(), nullable=True),
        sa.CheckConstraint("status IN ('curated', 'held', 'rejected')", name=op.f("ck_curation_status")),
        sa.CheckConstraint("status = 'curated' OR reasons <> '[]'::jsonb", name=op.f("ck_curation_reason")),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_curation")),
    )
    op.create_index("ix_curation_status", "curation", ["status"])
    op.execute((SQL_DIR / "curation_views.sql").read_text(encoding="utf-8"))
    op.execute((SQL_DIR / "analyst_role.sql").read_text(encoding="utf-8"))


def downgrade() -> None:
    op.execute("DROP VIEW v_curation_counts, v_curation")
    op.drop_index("ix_curation_status", table_name="curation")
    op.drop_table("curation")
