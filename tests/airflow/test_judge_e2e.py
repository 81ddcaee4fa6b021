"""End to end through Airflow: `tuwen_synthesize` with the faithfulness judge on (`airflow dags test`),
against real PostgreSQL, the S3 server and a stand-in VLM that puts known contradictions into 30 % of
its answers.

The stand-in judges by its own rules (it re-measures the image), so this measures the judge's
plumbing end to end — a contradiction written into a sample comes back as a stored `contradicted`
verdict, clean samples pass, a dead judge endpoint leaves samples unjudged without failing the run,
and a rerun pays nothing — not how well a model judges.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections import Counter
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.common import seed_images
from tests.conftest import _db_url
from tuwen.config import Settings
from tuwen.local.airflow_stack import airflow_env, dags_test, ensure_pool, migrate_metadata
from tuwen.local.services import drop_database, ensure_database, free_port
from tuwen.local.standin_vlm import StandinProcess
from tuwen.storage import ObjectStore

DAY = dt.date(2026, 11, 22)  # the crawl date of the seeded images, passed as date_from/date_to
N_IMAGES = 60
CONF = {"date_from": DAY.isoformat(), "date_to": DAY.isoformat(), "judge": True}


def _rows(engine, sql: str) -> list:
    with engine.connect() as conn:
        return list(conn.execute(text(sql)))


def test_judge_through_airflow_catches_injected_contradictions_and_pays_once(
        settings: Settings, tmp_path: Path, postgres: str) -> None:
    airflow_url = _db_url(f"airflow_test_{uuid.uuid4().hex[:10]}")
    ensure_database(airflow_url)
    with StandinProcess(contradiction_rate=0.3) as vlm:
        try:
            settings = dataclasses.replace(settings, vlm_base_url=vlm.base_url, vlm_model=vlm.model, batch_size=20)
            ObjectStore(settings).ensure_bucket()
            seed_images(settings, N_IMAGES, DAY, width=224, height=168)
            dead = dataclasses.replace(settings, judge_base_url=f"http://127.0.0.1:{free_port()}/v1",
                                       vlm_max_retries=1)
            logs = tmp_path / "logs"
            env = airflow_env(airflow_url, tmp_path / "airflow", extra=settings.to_env())
            dead_env = airflow_env(airflow_url, tmp_path / "airflow", extra=dead.to_env())
            migrate_metadata(env, logs)
            ensure_pool(env, logs, slots=2)
            engine = create_engine(settings.database_url)

            # 1. The judge's endpoint is down: synthesis completes, the run succeeds (dags_test raises
            #    otherwise), every sample is left unjudged with the reason.
            log = dags_test("tuwen_synthesize", DAY, dead_env, logs, conf=CONF).read_text(errors="replace")
            n_samples = _rows(engine, "SELECT count(*) FROM sample")[0][0]
            assert n_samples >= N_IMAGES * 0.95
            failed = _rows(engine, "SELECT status, error_type, error FROM judgement")
            assert len(failed) == n_samples and {r.status for r in failed} == {"failed"}
            assert all(r.error_type and r.error for r in failed)
            assert "the judge endpoint was down" in log
            synthesis_requests = vlm.stats()["requests"]

            # 2. Endpoint back: every sample judged once, injected contradictions caught.
            dags_test("tuwen_synthesize", DAY, env, logs, conf=CONF)
            assert vlm.stats()["requests"] == synthesis_requests + n_samples  # synthesis paid nothing again
            statuses = Counter(r[0] for r in _rows(engine, "SELECT status FROM judgement"))
            assert statuses == {"succeeded": n_samples}

            injected = {i["statement"] for i in vlm.injections()}
            samples = _rows(engine, "SELECT id, conversations FROM sample")
            dirty = {s.id for s in samples
                     if any(stmt in turn["value"] for turn in s.conversations for stmt in injected)}
            clean = {s.id for s in samples} - dirty
            flagged = {r[0] for r in _rows(engine, "SELECT sample_id FROM judgement WHERE n_contradicted > 0")}
            assert len(dirty) >= 5 and clean
            recall = len(flagged & dirty) / len(dirty)
            false_flags = len(flagged & clean) / len(clean)
            print(f"judge plumbing through Airflow: {len(dirty)} samples with an injected contradiction, recall "
                  f"{recall:.3f}; {len(clean)} clean, false flags {false_flags:.3f}")
            assert recall >= 0.9
            assert false_flags <= 0.05

            # 3. A rerun pays nothing: no synthesis and no judge request reaches the stand-in.
            before = vlm.stats()["requests"]
            dags_test("tuwen_synthesize", DAY, env, logs, conf=CONF)
            assert vlm.stats()["requests"] == before
            assert _rows(engine, "SELECT count(*) FROM judgement")[0][0] == n_samples

            # 4. Off (the setting's default, param empty): nothing is planned and nothing is sent.
            dags_test("tuwen_synthesize", DAY, env, logs, conf={**CONF, "judge": None})
            assert vlm.stats()["requests"] == before
            engine.dispose()
        finally:
            drop_database(airflow_url)
