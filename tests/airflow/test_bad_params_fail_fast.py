"""Through Airflow: a DAG param no retry can fix fails the task on its first try, with the param named.

`tuwen_synthesize` retries its tasks (a VLM or database outage passes); a reversed date range does
not, so `plan` must fail at once as AirflowFailException, not retry it and bury the message."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest

from tests.conftest import _db_url
from tuwen.config import Settings
from tuwen.local.airflow_stack import AirflowRunError, airflow_env, dags_test, migrate_metadata, settings_env
from tuwen.local.services import drop_database, ensure_database

DAY = dt.date(2026, 11, 21)


def test_a_reversed_date_range_fails_plan_once_without_retry(settings: Settings, tmp_path: Path) -> None:
    airflow_url = _db_url(f"airflow_test_{uuid.uuid4().hex[:10]}")
    ensure_database(airflow_url)
    try:
        env = airflow_env(airflow_url, tmp_path / "airflow", extra=settings_env(settings))
        logs = tmp_path / "logs"
        migrate_metadata(env, logs)
        with pytest.raises(AirflowRunError):
            dags_test("tuwen_synthesize", DAY, env, logs, conf={"date_from": "2026-11-22", "date_to": "2026-11-21"})
        log = (logs / f"tuwen_synthesize-{DAY.isoformat()}.log").read_text(errors="replace")
        # AirflowFailException is what makes a scheduled task skip its retries (`dags test` runs each
        # task once either way), so the log must show it, once, carrying the param's message.
        assert "AirflowFailException: PartitionError" in log and "date_to" in log, log[-3000:]
        assert "up_for_retry" not in log.lower(), log[-3000:]
        assert log.count("AirflowFailException: PartitionError") == 1, log[-3000:]
    finally:
        drop_database(airflow_url)
