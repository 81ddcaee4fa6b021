"""The lineage schema's migrations: up from empty, down to empty, and no drift from the models."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import create_engine, inspect

from tuwen.config import REPO_ROOT
from tuwen.db.migrate import downgrade, upgrade
from tuwen.db.models import Base


def _schema(url: str) -> tuple[set[str], set[str]]:
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        return set(inspector.get_table_names()), set(inspector.get_view_names())
    finally:
        engine.dispose()


def test_upgrade_from_empty_then_downgrade_to_empty(empty_db: str) -> None:
    assert _schema(empty_db) == (set(), set())
    upgrade(empty_db)
    tables, views = _schema(empty_db)
    assert set(Base.metadata.tables) <= tables
    assert {"v_sample", "v_daily_counts", "v_sample_lineage", "v_release_contents"} <= views
    downgrade(empty_db)
    tables, views = _schema(empty_db)
    assert tables == {"alembic_version"} and views == set()  # only Alembic's own (empty) bookkeeping
    upgrade(empty_db)  # and back up again: downgrades leave nothing behind that blocks a re-upgrade
    assert set(Base.metadata.tables) <= _schema(empty_db)[0]


def test_alembic_cli_and_models_agree(empty_db: str) -> None:
    """`alembic upgrade head` from the repo root works, and `alembic check` finds no model drift."""
    env = {**os.environ, "TUWEN_DATABASE_URL": empty_db}
    alembic = [sys.executable, "-m", "alembic"]
    for args in (["upgrade", "head"], ["check"], ["downgrade", "base"]):
        result = subprocess.run([*alembic, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"alembic {' '.join(args)}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
