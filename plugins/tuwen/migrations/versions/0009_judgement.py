"""faithfulness judge: one `judgement` row per paid judge completion about a sample

The optional judge stage (issue 17) asks the VLM to verify each sample against its image. Each call is
stored like a generation — under a unique request key (sample, judge prompt, model, params), so a
rerun pays nothing — with the statement counts and labelled statements the quality gate reads.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "judgement",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("request_key", sa.String(64), nullable=False),
        sa.Column("sample_id", sa.String(40), sa.ForeignKey("sample.id", name=op.f("fk_judgement_sample_id_sample")),
                  nullable=False),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("prompt_id", sa.String(100), nullable=False),
        sa.Column("prompt_version", sa.Integer(), nullable=False),
        sa.Column("prompt_sha256", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("params", JSONB(), nullable=False),
        sa.Column("status", sa.String(20), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("n_supported", sa.Integer(), nullable=True),
        sa.Column("n_contradicted", sa.Integer(), nullable=True),
        sa.Column("n_unverifiable", sa.Integer(), nullable=True),
        sa.Column("statements", JSONB(), nullable=True),
        sa.Column("raw_text", sa.Text(), nullable=True),
        sa.Column("finish_reason", sa.String(30), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("error_type", sa.String(50), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("dag_id", sa.String(250), nullable=True),
        sa.Column("run_id", sa.String(250), nullable=True),
        sa.Column("task_id", sa.String(250), nullable=True),
        sa.Column("map_index", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'succeeded', 'failed', 'unparseable')",
                           name=op.f("ck_judgement_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_judgement")),
        sa.UniqueConstraint("request_key", name=op.f("uq_judgement_request_key")),
    )
    op.create_index("ix_judgement_sample_id", "judgement", ["sample_id"])


def downgrade() -> None:
    op.drop_index("ix_judgement_sample_id", table_name="judgement")
    op.drop_table("judgement")
