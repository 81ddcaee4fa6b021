"""Synthesis against real PostgreSQL, the S3 server and the stand-in VLM server (over HTTP)."""

from __future__ import annotations

import asyncio
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
from tuwen.resources import Resources
from tuwen.synthesis import runner
from tuwen.synthesis.keys import RunParams
from tuwen.synthesis.planning import plan_partition
from tuwen.synthesis.prompts import forget_prompts, get_prompt
from tuwen.synthesis.runner import run_batch
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


def _ready(settings: Settings, n: int, **overrides) -> Resources:
    resources = Resources.from_settings(dataclasses.replace(settings, **overrides))
    resources.store.ensure_bucket()
    seed_images(resources.settings, n, DAY, width=224, height=168)
    return resources


def _run_all(resources: Resources, params: RunParams | None = None) -> list:
    params = params or RunParams()
    plan = plan_partition(resources, PARTITION, params)
    return [run_batch(resources, batch["image_ids"], params) for batch in plan.batches]


def test_each_image_gets_one_sample_and_a_rerun_pays_nothing(settings: Settings) -> None:
    with StandinProcess() as vlm:
        resources = _ready(settings, 24, vlm_base_url=vlm.base_url, batch_size=10)
        settings = resources.settings
        plan = plan_partition(resources, PARTITION, RunParams())
        assert plan.images == 24 and plan.to_request == 24 and len(plan.batches) == 3
        for batch in plan.batches:
            run_batch(resources, batch["image_ids"], RunParams())
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
        again = plan_partition(resources, PARTITION, RunParams())
        assert again.to_request == 0 and again.already_done == 24 and again.batches == []
        ids = [r[0] for r in _rows(settings, "SELECT id FROM image")]
        result = run_batch(resources, ids, RunParams())
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
        resources = _ready(settings, 6, vlm_base_url=vlm.base_url, prompts_dir=prompts)
        settings = resources.settings
        _run_all(resources)
        for task in ("conversation", "complex_reasoning", "detail"):
            text_v1 = (prompts / f"{task}.zh.v1.txt").read_text(encoding="utf-8")
            (prompts / f"{task}.zh.v2.txt").write_text(text_v1 + "\n请用简体中文回答。", encoding="utf-8")
        forget_prompts()
        _run_all(resources)  # latest = v2: every image asked again, once
        _run_all(resources, RunParams(prompt_version=1))  # v1 answers are stored: nothing sent
        assert vlm.stats()["requests"] == 12
        versions = Counter(r[0] for r in _rows(settings, "SELECT prompt_version FROM generation"))
        assert versions == {1: 6, 2: 6}
        _run_all(resources, RunParams(language="en", en_share=1.0))
        assert vlm.stats()["requests"] == 18
        langs = Counter(r[0] for r in _rows(settings, "SELECT language FROM sample"))
        assert langs == {"zh": 12, "en": 6}


@pytest.mark.parametrize("fault", ["500", "503", "429", "reset", "timeout", "truncated", "malformed", "refusal"])
def test_every_fault_ends_with_an_answer_or_a_recorded_reason(settings: Settings, fault: str) -> None:
    with StandinProcess(fault_rates={fault: 0.4}, fault_seed=3, hang_s=3.0, retry_after_s=0) as vlm:
        resources = _ready(settings, 12, vlm_base_url=vlm.base_url, vlm_timeout_s=1.5, vlm_max_retries=3)
        settings = resources.settings
        _run_all(resources)
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
        _run_all(resources)
        after = {r.request_key: r.status
                 for r in _rows(settings, "SELECT request_key, status FROM generation")}
        assert len(after) == 12
        assert all(after[k] in ("succeeded", "unparseable") for k in stored_before)


def test_endpoint_down_stops_fast_and_marks_nothing_done(settings: Settings) -> None:
    from tuwen.local.services import free_port

    resources = _ready(settings, 40, vlm_base_url=f"http://127.0.0.1:{free_port()}/v1", vlm_max_retries=4)
    settings = resources.settings
    plan = plan_partition(resources, PARTITION, RunParams())
    started = time.monotonic()
    with pytest.raises(CircuitOpenError, match="127.0.0.1"):
        run_batch(resources, plan.batches[0]["image_ids"], RunParams())
    assert time.monotonic() - started < 30
    statuses = Counter(r[0] for r in _rows(settings, "SELECT status FROM generation"))
    assert statuses.get("succeeded", 0) == 0 and statuses.get("unparseable", 0) == 0
    assert _rows(settings, "SELECT count(*) FROM sample")[0][0] == 0


KILL_SCRIPT = """
import dataclasses, sys
from tuwen.config import Settings
from tuwen.resources import Resources
from tuwen.synthesis.keys import RunParams
from tuwen.synthesis.runner import run_batch
settings = dataclasses.replace(Settings.from_env(), vlm_max_in_flight=4)
ids = [int(x) for x in sys.argv[1].split(",")]
run_batch(Resources.from_settings(settings), ids, RunParams())
"""


def test_sigkill_mid_batch_loses_nothing_stored_and_resends_nothing_stored(settings: Settings) -> None:
    with StandinProcess(latency="fixed:0.25") as vlm:
        resources = _ready(settings, 60, vlm_base_url=vlm.base_url)
        settings = resources.settings
        plan = plan_partition(resources, PARTITION, RunParams())
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

        _run_all(resources)  # the rerun
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
        resources = Resources.from_settings(dataclasses.replace(settings, vlm_base_url=vlm.base_url, batch_size=8))
        settings = resources.settings
        resources.store.ensure_bucket()
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
                plan = plan_partition(resources, partition, RunParams())
                for batch in plan.batches:
                    run_batch(resources, batch["image_ids"], RunParams())
            totals.append((_rows(settings, "SELECT count(*) FROM generation")[0][0],
                           _rows(settings, "SELECT count(*) FROM sample")[0][0], vlm.stats()["requests"]))
        assert totals[0] == (21, 21, 21)
        assert totals[1] == totals[0]  # identical counts, no new generations, nothing sent
        per_day = dict(_rows(settings, "SELECT i.crawl_date, count(*) FROM sample s JOIN image i ON i.id = s.image_id "
                                       "GROUP BY 1"))
        assert per_day == {days[0]: 6, days[1]: 7, days[2]: 8}


def test_presigned_url_mode_lets_the_server_fetch_the_image(settings: Settings) -> None:
    with StandinProcess() as vlm:
        resources = _ready(settings, 3, vlm_base_url=vlm.base_url, vlm_image_mode="presigned_url")
        settings = resources.settings
        _run_all(resources)
        stats = vlm.stats()
        assert stats["ok"] == 3 and len(stats["by_image"]) == 3  # the stand-in decoded 3 distinct images
        assert Counter(r[0] for r in _rows(settings, "SELECT status FROM generation")) == {"succeeded": 3}


def test_a_slow_image_read_holds_up_its_own_request_only(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # A GET that stalls (an object store's hiccup, a read's retries): the requests behind it in the read-ahead
    # window go out meanwhile, instead of every request slot draining behind it.
    real_image_url = runner.image_url
    slow: list[str] = []

    async def first_read_slow(resources: Resources, reader, job) -> str:
        if not slow:
            slow.append(job.image_sha256)
            await asyncio.sleep(2.0)
        return await real_image_url(resources, reader, job)

    monkeypatch.setattr(runner, "image_url", first_read_slow)
    with StandinProcess(latency="fixed:0.05") as vlm:
        resources = _ready(settings, 20, vlm_base_url=vlm.base_url, vlm_max_in_flight=4,
                           vlm_inflight_control="fixed")
        plan = plan_partition(resources, PARTITION, RunParams())
        result = run_batch(resources, [i for batch in plan.batches for i in batch["image_ids"]], RunParams())
        assert result.succeeded == 20 and vlm.stats()["requests"] == 20
    sent = {row.sha256: row.sent for row in _rows(
        resources.settings, "SELECT i.sha256, g.completed_at - g.latency_ms * interval '1 ms' AS sent "
                            "FROM generation g JOIN image i ON i.id = g.image_id")}
    slow_sent = sent.pop(slow[0])
    # 19 requests of 0.05 s, 4 at a time, take a fraction of the slow read's 2 s: all of them before it.
    assert len(sent) == 19 and max(sent.values()) < slow_sent


def test_hostile_items_are_recorded_on_their_own_and_the_batch_goes_on(settings: Settings) -> None:
    """One missing object, a NUL answer, a lone surrogate, an enormous answer and a long run of blanks
    in one batch: each recorded on its own generation with a reason, every other answer stored,
    and a rerun pays for none of the stored ones."""
    with StandinProcess() as vlm:
        resources = _ready(settings, 12, vlm_base_url=vlm.base_url, batch_size=64)
        settings = resources.settings
        images = _rows(settings, "SELECT id, sha256, model_key FROM image ORDER BY sha256")
        missing, nul, surrogate, enormous, blanks, no_copy = images[:6]
        missing_bytes = resources.store.get_bytes(missing.model_key)
        resources.store.remove(missing.model_key)
        with resources.engine.begin() as conn:
            conn.execute(text(f"UPDATE image SET model_key = NULL WHERE id = {no_copy.id}"))
        vlm.set_faults(image_faults={nul.sha256: "nul", surrogate.sha256: "surrogate",
                                     enormous.sha256: "enormous", blanks.sha256: "blank_run"})

        started = time.monotonic()
        [result] = _run_all(resources)
        assert time.monotonic() - started < 60  # the blank run parses in linear time
        rows = {r.sha256: r for r in _rows(
            settings, "SELECT i.sha256, g.status, g.error_type, g.error, g.attempts, g.raw_text, s.id AS sample "
                      "FROM generation g JOIN image i ON i.id = g.image_id "
                      "LEFT JOIN sample s ON s.generation_id = g.id")}
        assert len(rows) == 12
        assert (rows[missing.sha256].status, rows[missing.sha256].error_type) == ("failed", "image_missing")
        assert rows[missing.sha256].attempts == 0 and missing.model_key in rows[missing.sha256].error
        assert (rows[no_copy.sha256].status, rows[no_copy.sha256].error_type) == ("failed", "image_missing")
        assert {missing.sha256, no_copy.sha256}.isdisjoint(vlm.stats()["by_image"])  # nothing paid for them
        for hostile in (nul, surrogate):
            row = rows[hostile.sha256]
            assert (row.status, row.error) == ("unparseable", "invalid_characters") and row.sample is None
            assert "\\u0000" in row.raw_text or "\\udc80" in row.raw_text  # kept, escaped
        assert (rows[enormous.sha256].status, rows[enormous.sha256].error) == ("unparseable", "answer_too_long")
        assert rows[blanks.sha256].status in ("succeeded", "unparseable")
        others = [r for sha, r in rows.items() if sha not in {missing.sha256, nul.sha256, surrogate.sha256,
                                                               enormous.sha256, blanks.sha256, no_copy.sha256}]
        assert len(others) == 6 and all(r.status == "succeeded" and r.sample for r in others)
        assert result.failed_by_type == {"image_missing": 2}
        assert result.unparseable_by_reason["invalid_characters"] == 2

        # The rerun pays for nothing stored; the missing image is still missing and still not sent.
        requests = vlm.stats()["requests"]
        _run_all(resources)
        assert vlm.stats()["requests"] == requests
        # Once the object is back (a recrawl restores it), the next run asks for that one image only.
        resources.store.put_bytes(missing.model_key, missing_bytes, "image/jpeg")
        _run_all(resources)
        assert vlm.stats()["requests"] == requests + 1
        assert _rows(settings, f"SELECT status FROM generation WHERE image_id = {missing.id}")[0][0] == "succeeded"


def test_force_regenerate_adds_samples_and_keeps_the_old_ones(settings: Settings) -> None:
    with StandinProcess() as vlm:
        resources = _ready(settings, 6, vlm_base_url=vlm.base_url)
        settings = resources.settings
        _run_all(resources)
        before = {r.id: (r.conversations, r.generation_id) for r in _rows(
            settings, "SELECT id, conversations, generation_id FROM sample")}
        forced = RunParams.from_params({"force_regenerate": True}, run_id="manual__regen-1")
        plan = plan_partition(resources, PARTITION, forced)
        assert plan.to_request == 6
        for batch in plan.batches:
            run_batch(resources, batch["image_ids"], forced)
        assert vlm.stats()["requests"] == 12
        samples = _rows(settings, "SELECT id, image_id, conversations, generation_id, created_at FROM sample")
        assert len(samples) == 12 and _rows(settings, "SELECT count(*) FROM generation")[0][0] == 12
        # The samples a release may have shipped are still there, unchanged.
        assert {r.id: (r.conversations, r.generation_id) for r in samples if r.id in before} == before
        # Per image the regenerated sample is the newest: the one a release's selection takes.
        per_image: dict[int, list] = {}
        for r in samples:
            per_image.setdefault(r.image_id, []).append(r)
        for pair in per_image.values():
            old, new = sorted(pair, key=lambda r: r.id not in before)
            assert new.created_at > old.created_at
        # A retry of the same forced run finds its own answers; nothing is paid twice.
        assert plan_partition(resources, PARTITION, forced).to_request == 0
        _run_all(resources, forced)
        assert vlm.stats()["requests"] == 12


def test_a_replica_killed_mid_batch_leaves_the_work_to_the_other(settings: Settings) -> None:
    import threading

    with StandinProcess(latency="fixed:0.05") as doomed, StandinProcess(latency="fixed:0.05") as survivor:
        resources = _ready(settings, 60, vlm_base_url=f"{doomed.base_url},{survivor.base_url}", batch_size=60,
                           vlm_max_in_flight=8)
        settings = resources.settings
        plan = plan_partition(resources, PARTITION, RunParams())
        assert len(plan.batches) == 1
        asked_before_kill: list[int] = []

        def kill_when_busy() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and doomed.stats()["ok"] < 10:
                time.sleep(0.02)
            asked_before_kill.append(doomed.stats()["requests"])
            assert doomed.pid is not None
            os.kill(doomed.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_when_busy)
        killer.start()
        result = run_batch(resources, plan.batches[0]["image_ids"], RunParams())
        killer.join()

        assert result.succeeded == 60 and result.failed == 0
        rows = _rows(settings, "SELECT image_id, request_key, status, model, response->>'tuwen_replica' AS replica "
                               "FROM generation")
        # Every image has exactly one succeeded generation; no request key is stored twice.
        assert len(rows) == 60 and Counter(r.status for r in rows) == {"succeeded": 60}
        assert len({r.image_id for r in rows}) == 60 and len({r.request_key for r in rows}) == 60
        assert {r.model for r in rows} == {survivor.model}  # the model name, as with one URL
        by_replica = Counter(r.replica for r in rows)
        assert set(by_replica) == {doomed.base_url, survivor.base_url}
        assert by_replica[doomed.base_url] <= asked_before_kill[0]
        # The survivor was asked once per answer it gave: nothing was paid twice.
        assert survivor.stats()["requests"] == by_replica[survivor.base_url]

        # A rerun sends nothing (and does not trip over the dead replica).
        again = run_batch(resources, [r.image_id for r in rows], RunParams())
        assert again.requested == 0 and again.skipped_done == 60
        assert survivor.stats()["requests"] == by_replica[survivor.base_url]
        assert _rows(settings, "SELECT count(*) FROM sample")[0][0] == 60


def test_an_object_store_outage_stops_the_batch_clearly_with_nothing_paid_and_the_rerun_does_it_all(
        settings: Settings) -> None:
    """The store's images are read on the batch's event loop: a store that does not answer stops the batch
    (after the reader's bounded retries) with the endpoint in the message, before a request is paid for,
    and leaves every row to do; once the store is back, the rerun stores each image once."""
    from tuwen.local.services import free_port
    from tuwen.storage import StorageError

    with StandinProcess() as vlm:
        resources = _ready(settings, 4, vlm_base_url=vlm.base_url)
        plan = plan_partition(resources, PARTITION, RunParams())
        ids = [i for batch in plan.batches for i in batch["image_ids"]]
        dead = f"127.0.0.1:{free_port()}"  # nothing listens there
        down = Resources.from_settings(dataclasses.replace(resources.settings, s3_endpoint=dead))
        started = time.monotonic()
        with pytest.raises(StorageError) as stopped:
            run_batch(down, ids, RunParams())
        assert dead in str(stopped.value) and "model/" in str(stopped.value)
        assert time.monotonic() - started < 30  # bounded retries, not a hang
        assert vlm.stats()["ok"] == 0  # nothing was sent, so nothing paid
        assert Counter(r[0] for r in _rows(resources.settings, "SELECT status FROM generation")) == {"pending": 4}

        rerun = run_batch(resources, ids, RunParams())
        assert (rerun.succeeded, rerun.failed) == (4, 0)
        assert vlm.stats()["ok"] == 4
        assert _rows(resources.settings, "SELECT count(*), count(DISTINCT image_id) FROM sample")[0] == (4, 4)
