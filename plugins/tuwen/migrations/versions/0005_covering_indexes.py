"""covering indexes for the analysts' aggregate queries

`sample` and `generation` rows are wide (conversations, raw text and response JSON), so an aggregate
over every sample reads gigabytes of heap at seed size. These indexes hold just the grouped columns,
so the aggregates in sql/queries/ can run as index-only scans.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_sample_image_task_language_qc", "sample",
                    ["image_id", "task_type", "language", "qc_status"])
    op.create_index("ix_generation_stats", "generation", ["model", "prompt_id", "prompt_version", "status"],
                    postgresql_include=["attempts", "prompt_tokens", "completion_tokens", "latency_ms"])


def downgrade() -> None:
    op.drop_index("ix_generation_stats", table_name="generation")
    op.drop_index("ix_sample_image_task_language_qc", table_name="sample")
