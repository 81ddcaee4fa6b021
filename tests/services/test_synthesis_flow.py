"""Continuous flow (issue 19): a run's batch tasks take over each other's pending work, never the same request twice.

Real PostgreSQL, the S3 server and the stand-in VLM server over HTTP; the mapped tasks of one Airflow
run are called as Airflow calls them (the plan with the run's ids, then `run_batch` per batch with
the task's ids), in threads or in a process killed outright.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence

import pytest
from sqlalchemy import create_engine, text

from bench.common import seed_images
from tuwen.config import Settings
from tuwen.domain import Partition
from tuwen.local.standin_vlm import StandinProcess
from tuwen.resources import Resources
from tuwen.synthesis import lineage
from tuwen.synthesis.keys import RunParams
from tuwen.synthesis.planning import plan_partition
from tuwen.synthesis.runner import AirflowIds, run_batch

DAY = dt.date(2026, 11, 12)
PARTITION = Partition(DAY, DAY + dt.timedelta(days=1))
DAG, RUN = "tuwen_synthesize", "backfill__2026-11-12T00:00:00+00:00"


def _rows(settings: Settings, sql: str, **params: object) -> list:
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params))
    finally:
        engine.dispose()


def _ready(settings: Settings, n: int, **overrides: object) -> Resources:
    resources = Resources.from_settings(dataclasses.replace(settings, **overrides))
    resources.store.ensure_bucket()
    seed_images(resources.settings, n, DAY, width=224, height=168)
    return resources


def _task(index: int, run_id: str = RUN) -> AirflowIds:
    return AirflowIds(DAG, run_id, "synthesize", index)


def test_the_first_task_takes_over_the_batches_still_queued_and_they_find_their_work_done(settings: Settings) -> None:
    with StandinProcess() as vlm:
        resources = _ready(settings, 30, vlm_base_url=vlm.base_url, batch_size=10, synthesis_tasks=3)
        plan = plan_partition(resources, PARTITION, RunParams(), DAG, RUN)
        assert len(plan.batches) == 3
        # The plan queued every image as a pending row of the run, nothing claimed, nothing sent.
        queued = _rows(resources.settings, "SELECT status, dag_id, run_id, claimed_by FROM generation")
        assert len(queued) == 30 and {tuple(r) for r in queued} == {("pending", DAG, RUN, None)}
        # Queued longest answers first (the largest max_tokens: conversations), so the run ends on short ones.
        order = [r.max_tokens for r in _rows(resources.settings, "SELECT (sampling->>'max_tokens')::int AS max_tokens "
                                                                 "FROM generation ORDER BY id")]
        assert order == sorted(order, reverse=True) and order[0] > order[-1]
        assert vlm.stats()["requests"] == 0

        # Batch 0's task runs while batches 1 and 2 still wait for a pool slot: it sends all 30.
        first = run_batch(resources, plan.batches[0]["image_ids"], RunParams(), _task(0))
        assert (first.requested, first.taken_over, first.taken_by_others) == (30, 20, 0)
        assert first.succeeded == 30 and vlm.stats()["requests"] == 30
        # The later tasks find their batches stored by it, send nothing and say so.
        for index in (1, 2):
            later = run_batch(resources, plan.batches[index]["image_ids"], RunParams(), _task(index))
            assert (later.requested, later.skipped_done, later.taken_over) == (0, 10, 0)
        assert vlm.stats()["requests"] == 30
        rows = _rows(resources.settings, "SELECT g.image_id, g.status, g.task_id, g.map_index, s.id AS sample "
                                         "FROM generation g LEFT JOIN sample s ON s.generation_id = g.id")
        assert len(rows) == 30 and len({r.image_id for r in rows}) == 30
        assert all(r.status == "succeeded" and r.sample for r in rows)
        # Lineage says who sent each request: batch 0's task, for the rows of all three batches.
        assert {(r.task_id, r.map_index) for r in rows} == {("synthesize", 0)}


def test_concurrent_tasks_of_a_run_share_its_work_and_send_each_request_once(settings: Settings) -> None:
    with StandinProcess(latency="lognormal:0.05,0.5", fault_seed=5) as vlm:
        resources = _ready(settings, 80, vlm_base_url=vlm.base_url, batch_size=10, vlm_max_in_flight=4,
                           synthesis_tasks=8)
        plan = plan_partition(resources, PARTITION, RunParams(), DAG, RUN)
        assert len(plan.batches) == 8
        # Three pool slots: the eight mapped tasks run three at a time, in map order.
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda i: run_batch(resources, plan.batches[i]["image_ids"], RunParams(),
                                                         _task(i)), range(8)))
        stats = vlm.stats()
        assert stats["requests"] == 80
        assert set(Counter(stats["by_image"].values()).keys()) == {1}  # no image asked twice
        assert sum(r.requested for r in results) == 80 and sum(r.succeeded for r in results) == 80
        # Work moved between tasks: some took over rows of queued batches, whose tasks then sent less.
        assert sum(r.taken_over for r in results) > 0
        # Every row one task took over is a row its own task found stored at its start or lost to it later.
        assert sum(r.taken_over for r in results) == sum(r.skipped_done + r.taken_by_others for r in results)
        assert results[-1].requested < 10
        rows = _rows(resources.settings, "SELECT status, count(*) AS n FROM generation GROUP BY status")
        assert {(r.status, r.n) for r in rows} == {("succeeded", 80)}
        assert _rows(resources.settings, "SELECT count(*) FROM sample")[0][0] == 80


def test_a_queued_run_maps_no_more_tasks_than_can_send_at_once(settings: Settings) -> None:
    resources = _ready(settings, 50, batch_size=10, synthesis_tasks=3)
    # Without a run (no queue, no taking over) every batch is a task of its own, as before.
    assert len(plan_partition(resources, PARTITION, RunParams()).batches) == 5
    plan = plan_partition(resources, PARTITION, RunParams(), DAG, RUN)
    assert len(plan.batches) == 3 and sorted(i for b in plan.batches for i in b["image_ids"]) == sorted(
        r.id for r in _rows(resources.settings, "SELECT id FROM image"))


def test_rows_planned_under_other_settings_are_left_alone_and_the_task_ends(settings: Settings) -> None:
    with StandinProcess() as vlm:
        resources = _ready(settings, 8, vlm_base_url=vlm.base_url, batch_size=4)
        plan = plan_partition(resources, PARTITION, RunParams(), DAG, RUN)
        assert len(plan.batches) == 2
        # The sampling changed between the plan and the task: the queued keys are not the task's requests.
        changed = Resources.from_settings(dataclasses.replace(resources.settings, temperature=0.3))
        started = time.monotonic()
        result = run_batch(changed, plan.batches[0]["image_ids"], RunParams(), _task(0))
        assert time.monotonic() - started < 60
        # Its own 4 images are asked under its settings; all 8 rows the plan queued are someone else's keys.
        assert (result.requested, result.taken_over, result.stale_plan) == (4, 0, 8)
        assert vlm.stats()["requests"] == 4
        left = _rows(resources.settings, "SELECT status, claimed_by FROM generation WHERE task_id = 'plan'")
        assert sorted(tuple(r) for r in left) == [("pending", None)] * 8  # given back, none claimed


def test_another_run_does_not_take_a_runs_work_and_a_rerun_re_owns_what_failed(settings: Settings) -> None:
    with StandinProcess() as vlm:
        resources = _ready(settings, 12, vlm_base_url=vlm.base_url, batch_size=6)
        plan = plan_partition(resources, PARTITION, RunParams(), DAG, RUN)
        assert len(plan.batches) == 2
        # A task of another run with an empty batch finds nothing of this run to take.
        other = run_batch(resources, [], RunParams(), _task(0, run_id="manual__other"))
        assert other.requested == 0 and vlm.stats()["requests"] == 0
        # One image's object is gone: its request fails for that item, and is not retried within the run.
        gone = _rows(resources.settings, "SELECT id, model_key FROM image ORDER BY id LIMIT 1")[0]
        kept = resources.store.get_bytes(gone.model_key)
        resources.store.remove(gone.model_key)
        results = [run_batch(resources, b["image_ids"], RunParams(), _task(i)) for i, b in enumerate(plan.batches)]
        assert sum(r.failed for r in results) == 1 and sum(r.succeeded for r in results) == 11
        again = run_batch(resources, plan.batches[0]["image_ids"], RunParams(), _task(0))  # a retry of task 0
        assert again.requested == 0
        # The next run makes the failed row its own again and asks once more, now that the image is back.
        resources.store.put_bytes(gone.model_key, kept, "image/jpeg")
        replan = plan_partition(resources, PARTITION, RunParams(), DAG, "scheduled__next")
        assert replan.to_request == 1
        rerun = run_batch(resources, replan.batches[0]["image_ids"], RunParams(), _task(0, "scheduled__next"))
        assert (rerun.requested, rerun.succeeded) == (1, 1)
        assert vlm.stats()["requests"] == 12
        row = _rows(resources.settings, "SELECT status, run_id, claimed_by FROM generation WHERE image_id = :i",
                    i=gone.id)[0]
        assert (row.status, row.run_id) == ("succeeded", "scheduled__next")


def test_a_large_batch_claims_its_rows_a_window_at_a_time_past_rows_another_task_holds(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    with StandinProcess() as vlm:
        resources = _ready(settings, 150, vlm_base_url=vlm.base_url, batch_size=150, vlm_max_in_flight=16)
        plan = plan_partition(resources, PARTITION, RunParams(), DAG, RUN)
        assert len(plan.batches) == 1
        # The first 70 rows in queue order (more than a claim names at once) are leased to a live task.
        held = {r.id for r in _rows(resources.settings, "SELECT id FROM generation ORDER BY id LIMIT 70")}
        engine = create_engine(resources.settings.database_url)
        with engine.begin() as conn:
            conn.execute(text("UPDATE generation SET claimed_by = 'another/task', "
                              "claimed_until = now() + interval '5 minutes' WHERE id = ANY(:ids)"), {"ids": list(held)})
        engine.dispose()
        named: list[int] = []
        claim_own = lineage.RequestClaims.claim_own

        def counting(self: lineage.RequestClaims, keys: Sequence[str], want: int, held: Iterable[int]) -> list:
            named.append(len(keys))
            return claim_own(self, keys, want, held)

        monkeypatch.setattr(lineage.RequestClaims, "claim_own", counting)
        result = run_batch(resources, plan.batches[0]["image_ids"], RunParams(), _task(0))
        # Every row nobody holds is sent as the task's own (none by the run phase), once; the held ones are left.
        assert (result.requested, result.succeeded, result.taken_over) == (80, 80, 0)
        assert vlm.stats()["requests"] == 80
        rows = _rows(resources.settings, "SELECT id, status FROM generation")
        assert {r.id for r in rows if r.status == "pending"} == held
        # Each claim named a window of the batch, never all 150 of its keys.
        assert named and max(named) <= 64 and sum(named) < 150 * len(named) / 2


KILLED_TASK = """
import dataclasses, sys
from tuwen.config import Settings
from tuwen.resources import Resources
from tuwen.synthesis.keys import RunParams
from tuwen.synthesis.runner import AirflowIds, run_batch
settings = dataclasses.replace(Settings.from_env(), vlm_max_in_flight=4)
ids = [int(x) for x in sys.argv[1].split(",")]
run_batch(Resources.from_settings(settings), ids, RunParams(), AirflowIds(*sys.argv[2:5], int(sys.argv[5])))
"""


def test_a_killed_tasks_leases_hold_until_its_retry_takes_them_back(settings: Settings) -> None:
    with StandinProcess(latency="fixed:0.4") as vlm:
        resources = _ready(settings, 40, vlm_base_url=vlm.base_url, batch_size=20)
        settings = resources.settings
        plan = plan_partition(resources, PARTITION, RunParams(), DAG, RUN)
        assert len(plan.batches) == 2
        env = {**os.environ, "TUWEN_DATABASE_URL": settings.database_url, "TUWEN_S3_ENDPOINT": settings.s3_endpoint,
               "TUWEN_S3_BUCKET": settings.s3_bucket, "TUWEN_VLM_BASE_URL": vlm.base_url,
               "TUWEN_VLM_MODEL": vlm.model, "TUWEN_VLM_INFLIGHT_CONTROL": "fixed"}
        batch0 = ",".join(map(str, plan.batches[0]["image_ids"]))
        worker = subprocess.Popen([sys.executable, "-c", KILLED_TASK, batch0, DAG, RUN, "synthesize", "0"], env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if _rows(settings, "SELECT count(*) FROM generation WHERE status = 'succeeded'")[0][0] >= 6:
                break
            time.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        leased = {r.id for r in _rows(settings, "SELECT id FROM generation WHERE status = 'pending' "
                                                "AND claimed_until > now()")}
        assert leased  # requests in flight (and read ahead) when it died
        asked_at_kill = vlm.stats()["requests"]

        # Batch 1's task takes its own rows and the run's unleased rest, never the dead task's leases.
        other = run_batch(resources, plan.batches[1]["image_ids"], RunParams(), _task(1))
        assert other.failed == 0
        pending = {r.id for r in _rows(settings, "SELECT id FROM generation WHERE status = 'pending'")}
        assert pending == leased
        # Airflow's retry of task 0 (the same claimer) takes them back at once and finishes the run.
        retry = run_batch(resources, plan.batches[0]["image_ids"], RunParams(), _task(0))
        assert retry.requested == len(leased)
        rows = _rows(settings, "SELECT status, count(*) AS n FROM generation GROUP BY status")
        assert {(r.status, r.n) for r in rows} == {("succeeded", 40)}
        # Paid for once each, except what was in flight when the task died (never stored, so asked again).
        assert vlm.stats()["requests"] == asked_at_kill + other.requested + retry.requested
        assert _rows(settings, "SELECT count(*) FROM sample")[0][0] == 40


def test_the_plan_leaves_the_planner_statistics_of_the_rows_it_read_and_wrote(settings: Settings) -> None:
    """Without them PostgreSQL planned each task's image query as a nested loop over every curated row per
    image (0.8 s instead of 8 ms for 750 images): the plan ANALYZEs what the run's tasks then query."""
    resources = _ready(settings, 40, batch_size=10, synthesis_tasks=2)
    tables = ("image", "curation", "generation")
    sql = "SELECT relname, reltuples FROM pg_class WHERE relname IN ('image', 'curation', 'generation')"
    before = {r.relname: r.reltuples for r in _rows(resources.settings, sql)}
    assert any(before[t] != 40 for t in tables)  # the seeding's rows are not in the statistics yet
    plan_partition(resources, PARTITION, RunParams(), DAG, RUN)
    after = {r.relname: r.reltuples for r in _rows(resources.settings, sql)}
    assert {t: after[t] for t in tables} == {t: 40 for t in tables}


def test_a_vacuum_holding_the_tables_does_not_hold_up_the_plan(settings: Settings,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """ANALYZE waits for a VACUUM of the same table (a lock of the same mode, held here by another
    connection): the plan waits a few seconds at most, then plans with the statistics it has."""
    resources = _ready(settings, 20, batch_size=10, synthesis_tasks=2)
    blocker = create_engine(resources.settings.database_url).connect()
    try:
        blocker.execute(text("LOCK TABLE generation IN SHARE UPDATE EXCLUSIVE MODE"))  # what VACUUM takes
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="tuwen.synthesis.lineage"):
            plan = plan_partition(resources, PARTITION, RunParams(), DAG, RUN)
        waited = time.monotonic() - started
    finally:
        blocker.rollback()
        blocker.close()
    assert sum(len(b["image_ids"]) for b in plan.batches) == 20
    assert waited < 15
    assert "planner statistics not refreshed" in caplog.text
