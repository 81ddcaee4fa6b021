"""Through Airflow: `tuwen_export` checks its release before the quality gate runs — a published name
without `overwrite` fails the run at once, with no qc_run written and the published release untouched."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import _db_url
from tests.services.test_export import file_hashes, seed
from tuwen.config import Settings
from tuwen.local.airflow_stack import AirflowRunError, airflow_env, dags_test, migrate_metadata, settings_env
from tuwen.local.services import drop_database, ensure_database
from tuwen.release.export import ReleaseParams, write_release
from tuwen.resources import Resources

DAY = dt.date(2026, 11, 21)


def test_a_published_name_fails_the_run_before_the_gate(settings: Settings, resources: Resources,
                                                        tmp_path: Path) -> None:
    seed(settings, 8, with_images=False)
    published = write_release(resources, ReleaseParams(name="taken", include_images=False))
    before = file_hashes(published.local_path)
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        qc_runs = conn.execute(text("SELECT count(*) FROM qc_run")).scalar_one()  # the seed's own
    airflow_url = _db_url(f"airflow_test_{uuid.uuid4().hex[:10]}")
    ensure_database(airflow_url)
    try:
        env = airflow_env(airflow_url, tmp_path / "airflow", extra=settings_env(settings))
        logs = tmp_path / "logs"
        migrate_metadata(env, logs)
        with pytest.raises(AirflowRunError):
            dags_test("tuwen_export", DAY, env, logs, conf={"release": "taken"})
        log = (logs / f"tuwen_export-{DAY.isoformat()}.log").read_text(errors="replace")
        assert "ReleaseExists" in log and "already published" in log
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM qc_run")).scalar_one() == qc_runs  # no gate ran
            rows = conn.execute(text("SELECT id, status FROM export WHERE name = 'taken'")).all()
        engine.dispose()
        assert [tuple(r) for r in rows] == [(published.export_id, "published")]
        assert file_hashes(published.local_path) == before
    finally:
        drop_database(airflow_url)
