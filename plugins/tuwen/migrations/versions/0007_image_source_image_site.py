"""image_source (image_id, site) index for samples per site

`v_site_samples` joins every sample to the distinct (image, site) pairs of image_source. With only an
index on image_id, each parallel worker read and sorted all of image_source (600k rows, spilling to
disk) for every run of sql/queries/02: 0.9-1.2 s at seed size. An index on (image_id, site) hands the
pairs over already sorted as an index-only scan (0.3 s), and serves every lookup by image_id that the
old one-column index served, so it replaces it.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_image_source_image_site", "image_source", ["image_id", "site"])
    op.drop_index("ix_image_source_image_id", table_name="image_source")


def downgrade() -> None:
    op.create_index("ix_image_source_image_id", "image_source", ["image_id"])
    op.drop_index("ix_image_source_image_site", table_name="image_source")
