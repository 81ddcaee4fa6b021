"""End to end: Airflow itself runs tuwen_crawl, tuwen_synthesize and tuwen_export (`airflow dags test`)
against real PostgreSQL, the S3 server, the stand-in VLM server and the fixture website."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import uuid
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from tests.conftest import _db_url, write_sites_file
from tuwen.config import Settings
from tuwen.local.airflow_stack import airflow_env, dags_test, ensure_pool, migrate_metadata
from tuwen.local.fixture_site import SiteManifest, expected_curation
from tuwen.local.services import drop_database, ensure_database
from tuwen.storage import ObjectStore

DAY = dt.date(2026, 11, 20)  # the run's logical date (midnight)
# tuwen_crawl runs at 01:00 UTC: the run for 2026-11-20T00:00 is the one whose interval started at
# 2026-11-18T01:00, so its images are labelled 2026-11-18, and tuwen_synthesize (03:00) works on the same day.
PARTITION = dt.date(2026, 11, 18)


def _counts(engine, sql: str) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(text(sql)).all())


def test_airflow_runs_crawl_synthesize_export(settings: Settings, fixture_site: tuple[str, Path],
                                              standin_url: str, tmp_path: Path, postgres: str) -> None:
    site_url, site_dir = fixture_site
    manifest = SiteManifest.load(site_dir)
    settings = dataclasses.replace(settings, sites_file=write_sites_file(tmp_path / "sites.yaml", site_url))
    ObjectStore(settings).ensure_bucket()
    airflow_url = _db_url(f"airflow_test_{uuid.uuid4().hex[:10]}")
    ensure_database(airflow_url)
    try:
        env = airflow_env(airflow_url, tmp_path / "airflow", extra=dataclasses.replace(settings, batch_size=40).to_env())
        logs = tmp_path / "logs"
        migrate_metadata(env, logs)
        ensure_pool(env, logs, slots=2)
        stats_url = standin_url.removesuffix("/v1") + "/stand-in/stats"
        requests_before = httpx.get(stats_url).json()["requests"]

        dags_test("tuwen_crawl", DAY, env, logs)
        dags_test("tuwen_synthesize", DAY, env, logs)
        dags_test("tuwen_export", DAY, env, logs, conf={"release": "e2e"})

        engine = create_engine(settings.database_url)
        expected_accepted = manifest.expected_counts["by_outcome"]["accepted"]
        images = _counts(engine, "SELECT status, count(*) FROM image GROUP BY status")
        assert images.get("accepted") == expected_accepted
        # The crawl DAG curated every accepted image as the manifest says (OCR is off in these settings);
        # synthesis took the curated ones only.
        curation = _counts(engine, "SELECT status, count(*) FROM curation GROUP BY status")
        assert curation == expected_curation(manifest.images, ocr_ran=False)
        expected_curated = curation["curated"]
        assert expected_curated < expected_accepted
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(DISTINCT crawl_date) FROM image")).scalar() == 1
            assert conn.execute(text("SELECT min(crawl_date) FROM image")).scalar() == PARTITION
            # Every curated image got exactly one task type and exactly one paid completion; no other did.
            assert conn.execute(text(
                "SELECT count(*) FROM image WHERE status = 'accepted' AND task_type IS NULL")).scalar() == \
                expected_accepted - expected_curated
            gens = dict(conn.execute(text("SELECT status, count(*) FROM generation GROUP BY status")).all())
            assert sum(gens.values()) == expected_curated
            assert gens.get("succeeded", 0) >= expected_curated * 0.95
            n_samples = conn.execute(text("SELECT count(*) FROM sample")).scalar()
            assert n_samples == gens["succeeded"]
            # The seed's prompt text (version 1, verbatim) is what was sent.
            assert set(conn.execute(text("SELECT DISTINCT prompt_version FROM generation")).scalars()) == {1}
            # The mix follows the seed's ratio (small partition: within 2 images per task).
            tasks = dict(conn.execute(text("SELECT task_type, count(*) FROM image "
                                           "WHERE status = 'accepted' AND task_type IS NOT NULL GROUP BY 1")).all())
            seed = {"conversation": 247431, "complex_reasoning": 194646, "detail": 199791}
            for task, weight in seed.items():
                assert abs(tasks[task] - expected_curated * weight / sum(seed.values())) <= 2
            qc = conn.execute(text("SELECT n_samples, n_passed, success, results FROM qc_run ORDER BY id DESC")).first()
            assert qc.n_samples == n_samples and qc.success
            qc_results = qc.results
            export = conn.execute(text("SELECT id, status, n_samples, local_path FROM export "
                                       "WHERE name = 'e2e'")).first()
            assert export.status == "published"
            assert export.n_samples == qc.n_passed
            items = conn.execute(text("SELECT count(*) FROM export_item WHERE export_id = :e"),
                                 {"e": export.id}).scalar()
            assert items == export.n_samples

        # The exported JSON loads as one array and every record follows the output rules.
        release = Path(export.local_path)
        [all_file] = [p for p in release.glob("llava_instruct_zh_*.json")]
        records = json.loads(all_file.read_text(encoding="utf-8"))
        assert isinstance(records, list) and len(records) == export.n_samples
        assert len({r["id"] for r in records}) == len(records)
        assert len({r["image"] for r in records}) == len(records)  # each sample on a distinct image
        for record in records:
            assert set(record) == {"id", "image", "conversations"}
            turns = record["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) % 2 == 0
            assert sum(t["value"].count("<image>") for t in turns) == 1
            assert "<image>" in turns[0]["value"]
            assert all(t["value"].strip() for t in turns)
            assert (release / record["image"]).is_file()
        store = ObjectStore(settings)
        assert store.exists("exports/e2e/manifest.json")
        # The QC report the gate published travels with the release.
        report_key = qc_results["report_key"]
        assert store.exists(report_key)
        assert (release / "qc_report" / "index.html").read_bytes() == store.get_bytes(report_key)
        assert (release / "qc_report" / "plots" / "distributions.png").is_file()
        # ... listed in the manifest with its checksum, and published with the release.
        manifest = json.loads((release / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["qc_report"] == "qc_report/index.html"
        listed = manifest["files"]["qc_report/index.html"]
        assert listed["sha256"] == hashlib.sha256(store.get_bytes(report_key)).hexdigest()
        assert store.get_bytes("exports/e2e/qc_report/index.html") == store.get_bytes(report_key)
        assert store.exists(f"exports/e2e/{all_file.name}")

        # A second synthesis run pays for nothing: no new generations, no request reaches the server.
        requests_after_first = httpx.get(stats_url).json()["requests"]
        assert requests_after_first - requests_before == expected_curated
        dags_test("tuwen_synthesize", DAY, env, logs)
        assert httpx.get(stats_url).json()["requests"] == requests_after_first
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM generation")).scalar() == expected_curated
            assert conn.execute(text("SELECT count(*) FROM sample")).scalar() == n_samples
        engine.dispose()
    finally:
        drop_database(airflow_url)
