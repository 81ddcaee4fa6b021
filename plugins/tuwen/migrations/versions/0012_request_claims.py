"""request claims: a run's pending generations as a work queue its mapped tasks draw from

Issue 19 (no idle slots at batch ends): a synthesis run's plan creates the pending generation row of
every image it will ask about, owned by the run (dag_id, run_id), and each mapped task claims rows
as its request slots free up — its own batch first, then the run's rows nobody holds — so no task
waits for its slowest request while work is left. A claim is a lease: `claimed_by` (the claiming
task: dag/run/task/map index, the same across Airflow's tries, so a retry takes its dead try's
rows back at once) until `claimed_until`, renewed while the task lives; a task killed outright
leaves rows that any other task of the run may take once the lease has run out. The partial index
serves the claim query: a run's pending rows.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("generation", sa.Column("claimed_by", sa.String(300), nullable=True))
    op.add_column("generation", sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_generation_run_pending", "generation", ["dag_id", "run_id", "id"],
                    postgresql_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    op.drop_index("ix_generation_run_pending", table_name="generation")
    op.drop_column("generation", "claimed_until")
    op.drop_column("generation", "claimed_by")
