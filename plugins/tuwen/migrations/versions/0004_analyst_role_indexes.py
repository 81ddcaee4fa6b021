"""analyst role (sql/analyst_role.sql: SELECT on views only) and indexes for the query library

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ROLE_SQL = Path(__file__).resolve().parents[4] / "sql" / "analyst_role.sql"

# Each serves a query in sql/queries/ (see sql/README.md); measured at 641,868 samples by bench_export.
INDEXES = {
    # lineage by page URL (07/08_*), and url takedowns, which match page URLs too
    "ix_image_source_page_url": ("image_source", ["page_url"]),
}


def upgrade() -> None:
    for name, (table, columns) in INDEXES.items():
        op.create_index(name, table, columns)
    op.execute(ROLE_SQL.read_text(encoding="utf-8"))


def downgrade() -> None:
    op.execute("""
        DO $$
        DECLARE rel record;
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tuwen_analyst') THEN
                FOR rel IN SELECT viewname FROM pg_views WHERE schemaname = 'public' AND viewname LIKE 'v\\_%' LOOP
                    EXECUTE format('REVOKE ALL ON public.%I FROM tuwen_analyst', rel.viewname);
                END LOOP;
                EXECUTE 'REVOKE USAGE ON SCHEMA public FROM tuwen_analyst';
                EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM tuwen_analyst', current_database());
            END IF;
        END
        $$;
    """)
    for name, (table, _) in INDEXES.items():
        op.drop_index(name, table_name=table)
