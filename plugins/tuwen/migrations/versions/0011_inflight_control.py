"""in-flight control shared through the lineage database

Every run through one VLM endpoint (every mapped task of every DAG run) shares one AIMD controller
(issue 19, `tuwen.synthesis.inflight.SharedInflight`): `vlm_flow` holds its state per endpoint,
`vlm_flow_member` each run's requests in flight and demand as of its last tick, from which each run
takes its fair share of the flow's limit. Rows live as long as runs do; nothing here is lineage.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

SQL_DIR = Path(__file__).resolve().parents[4] / "sql"


def upgrade() -> None:
    op.create_table(
        "vlm_flow",
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("state", JSONB(), nullable=True),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", name=op.f("pk_vlm_flow")),
    )
    op.create_table(
        "vlm_flow_member",
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("member", sa.Text(), nullable=False),
        sa.Column("in_flight", sa.Integer(), nullable=False),
        sa.Column("demand", sa.Integer(), nullable=False),
        sa.Column("ceiling", sa.Integer(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(["endpoint"], ["vlm_flow.endpoint"], ondelete="CASCADE",
                                name=op.f("fk_vlm_flow_member_endpoint_vlm_flow")),
        sa.PrimaryKeyConstraint("endpoint", "member", name=op.f("pk_vlm_flow_member")),
    )
    # Analysts get nothing on base tables (this also undoes a deployment's default privileges).
    op.execute((SQL_DIR / "analyst_role.sql").read_text(encoding="utf-8"))


def downgrade() -> None:
    op.drop_table("vlm_flow_member")
    op.drop_table("vlm_flow")
