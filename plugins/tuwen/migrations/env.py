"""Alembic environment for the lineage schema (tuwen.db.models)."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from tuwen.db.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or os.environ.get(
    "TUWEN_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/tuwen"
)


def run_migrations() -> None:
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
