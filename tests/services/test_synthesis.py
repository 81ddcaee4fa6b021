"""Synthesis against real PostgreSQL, the S3 server and the stand-in VLM server (over HTTP)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from sqlalchemy import create_engine, text

from bench.common import seed_images
from tuwen.config import Settings
from tuwen.domain import Partition
from tuwen.local.standin_vlm import StandinProcess
from tuwen.storage import ObjectStore
from tuwen.synthesis.prompts import get_prompt
from tuwen.synthesis.runner import RunParams, plan_partition, run_batch
from tuwen.synthesis.vlm_client import CircuitOpenError

DAY = dt.date(2026, 11, 19)
PARTITION = Partition(DAY, DAY + dt.timedelta(days=1))


def _rows(settings: Settings, sql: str) -> list:
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)))
    finally:
        engine.dispose()


def _ready(settings: Settings, n: int, **overrides) -> Settings:
    settings = dataclasses.replace(settings, **overrides)
    ObjectStore(settings).ensure_bucket()
    seed_images(settings, n, DAY, width=224, height=168)
    return settings


def _run_all(settings: Settings, params: RunParams | None = None) -> list:
    params = params or RunParams()
    plan = plan_partition(settings, PARTITION, params)
    return [run_batch(settings, batch["image_ids"], params) for batch in plan.batches]


def test_each_image_gets_one_sample_and_a_rerun_pays_nothing(settings: Settings) -> None:
    with StandinProcess() as vlm:
        settings = _ready(settings, 24, vlm_base_url=vlm.base_url, batch_size=10)
        plan = plan_partition(settings, PARTITION, RunParams())
        assert plan.images == 24 and plan.to_request == 24 and len(plan.batches) == 3
        for batch in plan.batches:
            run_batch(settings, batch["image_ids"], RunParams())
        assert vlm.stats()["requests"] == 24

        rows = _rows(settings, "SELECT g.status, g.prompt_sha256, g.task_type, s.conversations, s.rounds "
                               "FROM generation g LEFT JOIN sample s ON s.generation_id = g.id")
        assert len(rows) == 24 and Counter(r.status for r in rows) == {"succeeded": 24}
        for row in rows:
            # The prompt sent is the versioned prompt file's text (v1 = the seed's, verbatim).
            assert row.prompt_sha256 == get_prompt(row.task_type, "zh", 1, settings.prompts_dir).sha256
            turns = row.conversations
            assert turns[0]["from"] == "human" and turns[0]["value"].startswith("<image>\n")
            assert sum(t["value"].count("<image>") for t in turns) == 1
            assert [t["from"] for t in turns] == ["human", "gpt"] * row.rounds
            assert row.rounds == 1 or row.task_type == "conversation"

        # Rerun: the plan finds everything done, and even a batch run directly sends nothing.
        again = plan_partition(settings, PARTITION, RunParams())
        assert again.to_request == 0 and again.already_done == 24 and again.batches == []
        ids = [r[0] for r in _rows(settings, "SELECT id FROM image")]
        result = run_batch(settings, ids, RunParams())
        assert result.requested == 0 and result.skipped_done == 24
        assert vlm.stats()["requests"] == 24
        assert _rows(settings, "SELECT count(*) FROM generation")[0][0] == 24
        assert _rows(settings, "SELECT count(*) FROM sample")[0][0] == 24


def test_a_new_prompt_version_or_language_is_a_new_request(settings: Settings, tmp_path) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for path in settings.prompts_dir.glob("*.txt"):
        (prompts / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    with StandinProcess() as vlm:
        settings = _ready(settings, 6, vlm_base_url=vlm.base_url, prompts_dir=prompts)
        _run_all(settings)
        for task in ("conversation", "complex_reasoning", "detail"):
            text_v1 = (prompts / f"{task}.zh.v1.txt").read_text(encoding="utf-8")
            (prompts / f"{task}.zh.v2.txt").write_text(text_v1 + "\n请用简体中文回答。", encoding="utf-8")
        get_prompt.__globals__["_cached_prompts"].cache_clear()
        _run_all(settings)  # latest = v2: every image asked again, once
        _run_all(settings, RunParams(prompt_version=1))  # v1 answers are stored: nothing sent
        assert vlm.stats()["requests"] == 12
        versions = Counter(r[0] for r in _rows(settings, "SELECT prompt_version FROM generation"))
        assert versions == {1: 6, 2: 6}
        _run_all(settings, RunParams(language="en", en_share=1.0))
        assert vlm.stats()["requests"] == 18
        langs = Counter(r[0] for r in _rows(settings, "SELECT language FROM sample"))
        assert langs == {"zh": 12, "en": 6}


@pytest.mark.parametrize("fault", ["500", "503", "429", "reset", "timeout", "truncated", "malformed", "refusal"])
def test_every_fault_ends_with_an_answer_or_a_recorded_reason(settings: Settings, fault: str) -> None:
    with StandinProcess(fault_rates={fault: 0.4}, fault_seed=3, hang_s=3.0, retry_after_s=0) as vlm:
        settings = _ready(settings, 12, vlm_base_url=vlm.base_url, vlm_timeout_s=1.5, vlm_max_retries=3)
        _run_all(settings)
        rows = _rows(settings, "SELECT g.request_key, g.status, g.error_type, g.raw_text, g.finish_reason, "
                               "s.id AS sample FROM generation g LEFT JOIN sample s ON s.generation_id = g.id")
        assert len(rows) == 12 and len({r.request_key for r in rows}) == 12
        for row in rows:
            assert row.status in ("succeeded", "unparseable", "failed")
            if row.status == "succeeded":
                assert row.sample is not None
            else:
                assert row.sample is None and row.error_type  # a recorded reason, never silently dropped
            if row.status == "unparseable":
                assert row.raw_text  # the paid-for text is kept
        statuses = Counter(r.status for r in rows)
        assert vlm.stats()["faults_injected"].get(fault, 0) > 0
        if fault in ("malformed", "refusal"):
            assert statuses["unparseable"] > 0
        if fault == "truncated":
            assert any(r.finish_reason == "length" for r in rows)
        # Rerun: failed requests are retried, stored answers are not requested again.
        stored_before = {r.request_key for r in rows if r.status != "failed"}
        _run_all(settings)
        after = {r.request_key: r.status
                 for r in _rows(settings, "SELECT request_key, status FROM generation")}
        assert len(after) == 12
        assert all(after[k] in ("succeeded", "unparseable") for k in stored_before)


def test_endpoint_down_stops_fast_and_marks_nothing_done(settings: Settings) -> None:
    from tuwen.local.services import free_port

    settings = _ready(settings, 40, vlm_base_url=f"http://127.0.0.1:{free_port()}/v1", vlm_max_retries=4)
    plan = plan_partition(settings, PARTITION, RunParams())
    started = time.monotonic()
    with pytest.raises(CircuitOpenError, match="127.0.0.1"):
        run_batch(settings, plan.batches[0]["image_ids"], RunParams())
    assert time.monotonic() - started < 30
    statuses = Counter(r[0] for r in _rows(settings, "SELECT status FROM generation"))
    assert statuses.get("succeeded", 0) == 0 and statuses.get("unparseable", 0) == 0
    assert _rows(settings, "SELECT count(*) FROM sample")[0][0] == 0


KILL_SCRIPT = """
import dataclasses, sys
from tuwen.config import Settings
from tuwen.synthesis.runner import RunParams, run_batch
settings = dataclasses.replace(Settings.from_env(), vlm_max_in_flight=4)
ids = [int(x) for x in sys.argv[1].split(",")]
run_batch(settings, ids, RunParams())
"""


def test_sigkill_mid_batch_loses_nothing_stored_and_resends_nothing_stored(settings: Settings) -> None:
    with StandinProcess(latency="fixed:0.25") as vlm:
        settings = _ready(settings, 60, vlm_base_url=vlm.base_url)
        plan = plan_partition(settings, PARTITION, RunParams())
        ids = [i for b in plan.batches for i in b["image_ids"]]
        env = {**os.environ, "TUWEN_DATABASE_URL": settings.database_url, "TUWEN_S3_ENDPOINT": settings.s3_endpoint,
               "TUWEN_S3_BUCKET": settings.s3_bucket, "TUWEN_VLM_BASE_URL": vlm.base_url,
               "TUWEN_VLM_MODEL": vlm.model}
        worker = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, ",".join(map(str, ids))], env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = _rows(settings, "SELECT count(*) FROM generation WHERE status = 'succeeded'")[0][0]
            if done >= 15:
                break
            time.sleep(0.1)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        stored = {r[0]: r[1] for r in _rows(
            settings, "SELECT request_key, raw_text FROM generation WHERE status = 'succeeded'")}
        assert 15 <= len(stored) < 60
        requests_at_kill = vlm.stats()["requests"]

        _run_all(settings)  # the rerun
        rows = _rows(settings, "SELECT request_key, status, raw_text FROM generation")
        assert len(rows) == 60 and all(r.status == "succeeded" for r in rows)
        # Zero stored answers lost or changed.
        assert all(stored[r.request_key] == r.raw_text for r in rows if r.request_key in stored)
        assert _rows(settings, "SELECT count(*) FROM sample")[0][0] == 60
        # Zero requests re-sent for stored answers: the rerun asked only for the ones not stored.
        assert vlm.stats()["requests"] - requests_at_kill == 60 - len(stored)


def test_three_day_backfill_run_twice_pays_once(settings: Settings) -> None:
    """What a backfill over three crawl dates does, run twice: the second run finds every key stored."""
    from tuwen.domain import resolve_partition

    days = [DAY - dt.timedelta(days=i) for i in range(3)]
    with StandinProcess() as vlm:
        settings = dataclasses.replace(settings, vlm_base_url=vlm.base_url, batch_size=8)
        ObjectStore(settings).ensure_bucket()
        for i, day in enumerate(days):
            seed_images(settings, 6 + i, day, width=224 + 28 * i, height=168)
        totals = []
        for _ in range(2):
            for day in days:  # one run per day, as Airflow's backfill creates them
                context = {"data_interval_start": dt.datetime.combine(day, dt.time(3), dt.UTC),
                           "data_interval_end": dt.datetime.combine(day + dt.timedelta(days=1), dt.time(3), dt.UTC),
                           "params": {}}
                partition = resolve_partition(context)
                assert partition.start == day
                plan = plan_partition(settings, partition, RunParams())
                for batch in plan.batches:
                    run_batch(settings, batch["image_ids"], RunParams())
            totals.append((_rows(settings, "SELECT count(*) FROM generation")[0][0],
                           _rows(settings, "SELECT count(*) FROM sample")[0][0], vlm.stats()["requests"]))
        assert totals[0] == (21, 21, 21)
        assert totals[1] == totals[0]  # identical counts, no new generations, nothing sent
        per_day = dict(_rows(settings, "SELECT i.crawl_date, count(*) FROM sample s JOIN image i ON i.id = s.image_id "
                                       "GROUP BY 1"))
        assert per_day == {days[0]: 6, days[1]: 7, days[2]: 8}


def test_presigned_url_mode_lets_the_server_fetch_the_image(settings: Settings) -> None:
    with StandinProcess() as vlm:
        settings = _ready(settings, 3, vlm_base_url=vlm.base_url, vlm_image_mode="presigned_url")
        _run_all(settings)
        stats = vlm.stats()
        assert stats["ok"] == 3 and len(stats["by_image"]) == 3  # the stand-in decoded 3 distinct images
        assert Counter(r[0] for r in _rows(settings, "SELECT status FROM generation")) == {"succeeded": 3}
