"""immutable releases: versions of a release name, `superseded` status, one published release per name

A published release is never overwritten in place. Re-exporting under a published name (only with an
explicit overwrite) writes a new `export` row — the next `version` of that name, under its own object
prefix — and, once it is complete, marks the previous one `superseded` in the same transaction that
publishes the new one. The old row keeps its `export_item` rows, files and prefix, so "which release
shipped this sample" still answers for it. The unique index on the name alone becomes (name, version),
plus a partial unique index: at most one published release per name. The release views gain the
version (sql/release_versions_views.sql).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SQL_DIR = Path(__file__).resolve().parents[4] / "sql"


def upgrade() -> None:
    op.add_column("export", sa.Column("version", sa.Integer(), server_default="1", nullable=False))
    op.add_column("export", sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True))
    op.drop_constraint(op.f("uq_export_name"), "export", type_="unique")
    op.create_unique_constraint(op.f("uq_export_name_version"), "export", ["name", "version"])
    op.create_index(op.f("uq_export_published_name"), "export", ["name"], unique=True,
                    postgresql_where=sa.text("status = 'published'"))
    op.drop_constraint(op.f("ck_export_status"), "export", type_="check")
    op.create_check_constraint(op.f("ck_export_status"), "export",
                               "status IN ('writing', 'published', 'failed', 'superseded')")
    op.execute((SQL_DIR / "release_versions_views.sql").read_text(encoding="utf-8"))
    op.execute((SQL_DIR / "analyst_role.sql").read_text(encoding="utf-8"))


def downgrade() -> None:
    # A view loses columns only by being dropped; the earlier definitions are then created again.
    op.execute("DROP VIEW v_release, v_release_contents, v_takedown_items")
    for name in ("views.sql", "release_views.sql", "analyst_role.sql"):
        op.execute((SQL_DIR / name).read_text(encoding="utf-8"))
    # One row per name again: the published version if there is one, else the newest attempt.
    dropped = """SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY name ORDER BY status = 'published' DESC,
                                                            version DESC) AS rank FROM export) AS ranked
                 WHERE rank > 1"""
    op.execute(f"DELETE FROM export_item WHERE export_id IN ({dropped})")
    op.execute(f"DELETE FROM export WHERE id IN ({dropped})")
    op.execute("UPDATE export SET status = 'failed' WHERE status = 'superseded'")
    op.drop_constraint(op.f("ck_export_status"), "export", type_="check")
    op.create_check_constraint(op.f("ck_export_status"), "export", "status IN ('writing', 'published', 'failed')")
    op.drop_index(op.f("uq_export_published_name"), table_name="export")
    op.drop_constraint(op.f("uq_export_name_version"), "export", type_="unique")
    op.create_unique_constraint(op.f("uq_export_name"), "export", ["name"])
    op.drop_column("export", "superseded_at")
    op.drop_column("export", "version")
