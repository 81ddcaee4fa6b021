"""v_generation_stats: p50 and p95 latency from one sort per group

Re-applies sql/views.sql (CREATE OR REPLACE), which now computes both percentiles with one
percentile_cont over an array of fractions: half the sorting at seed size.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

VIEWS_SQL = Path(__file__).resolve().parents[4] / "sql" / "views.sql"

PREVIOUS = """
CREATE OR REPLACE VIEW v_generation_stats AS
SELECT model, prompt_id, prompt_version, status,
       count(*) AS generations, sum(attempts) AS attempts,
       avg(prompt_tokens)::numeric(10, 1) AS avg_prompt_tokens,
       avg(completion_tokens)::numeric(10, 1) AS avg_completion_tokens,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50_latency_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95_latency_ms
FROM generation
GROUP BY model, prompt_id, prompt_version, status
"""


def upgrade() -> None:
    op.execute(VIEWS_SQL.read_text(encoding="utf-8"))


def downgrade() -> None:
    op.execute(PREVIOUS)
