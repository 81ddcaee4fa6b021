"""Through Airflow: a batch below the quality bar fails `quality_gate`, and `tuwen_export` publishes
nothing — no published export row, no manifest in the bucket, no release folder — while the qc_run
row and the QC report say why."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import _db_url, insert_labelled, labelled_rows
from tuwen.config import Settings
from tuwen.local.airflow_stack import AirflowRunError, airflow_env, dags_test, migrate_metadata, settings_env
from tuwen.local.services import drop_database, ensure_database
from tuwen.storage import ObjectStore

DAY = dt.date(2026, 11, 20)
RELEASE = "blocked"


def test_failed_gate_blocks_the_export(settings: Settings, tmp_path: Path) -> None:
    # What a broken prompt or model produces: refusals, meta talk, truncations, loops... and a few good
    # samples, far below the 80% minimum. Seeded straight into the lineage DB: nothing to crawl.
    rows = labelled_rows()
    bad = [r for r in rows if r["expected"] == "fail" and r["task_type"] != "caption" and r["language"] == "zh"]
    good = [r for r in rows if r["expected"] == "pass" and r["language"] == "zh"][:6]
    insert_labelled(settings, bad + good, image_size=(128, 96))
    airflow_url = _db_url(f"airflow_test_{uuid.uuid4().hex[:10]}")
    ensure_database(airflow_url)
    try:
        env = airflow_env(airflow_url, tmp_path / "airflow", extra=settings_env(settings))
        logs = tmp_path / "logs"
        migrate_metadata(env, logs)
        with pytest.raises(AirflowRunError) as failed:
            dags_test("tuwen_export", DAY, env, logs, conf={"release": RELEASE})
        log = (logs / f"tuwen_export-{DAY.isoformat()}.log").read_text(errors="replace")
        assert "QualityGateFailed" in log, str(failed.value)[-2000:]

        engine = create_engine(settings.database_url)
        with engine.connect() as conn:
            qc = conn.execute(text("SELECT * FROM qc_run ORDER BY id DESC")).all()
            assert len(qc) == 1
            run = qc[0]
            assert run.success is False and run.dag_id == "tuwen_export"
            assert run.n_samples == len(bad) + len(good) and run.n_passed == len(good)
            assert run.pass_rate < 0.8
            # Every verdict is recorded even though the batch failed: the rejects are quarantined.
            statuses = dict(conn.execute(text("SELECT qc_status, count(*) FROM sample GROUP BY 1")).all())
            assert statuses == {"failed": len(bad), "passed": len(good)}
            assert conn.execute(text("SELECT count(*) FROM export WHERE status = 'published'")).scalar_one() == 0
            assert conn.execute(text("SELECT count(*) FROM export_item")).scalar_one() == 0
        engine.dispose()
        store = ObjectStore(settings)
        assert not store.exists(f"exports/{RELEASE}/manifest.json")
        assert store.list_keys("exports/") == []
        assert not (settings.release_dir / RELEASE).exists()
        assert not settings.release_dir.exists() or not any(settings.release_dir.iterdir())
        # ...and the people deciding what to fix have the report.
        assert store.exists(run.results["report_key"])
        assert store.exists(run.data_docs_key)
    finally:
        drop_database(airflow_url)
