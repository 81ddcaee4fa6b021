"""A three-day backfill through Airflow against the stand-in's serving model: is the emulated GPU kept busy?

Issue 19's must-show, end to end: Airflow itself (scheduler, dag-processor, api-server, LocalExecutor;
`tuwen.local.airflow_stack`) runs `tuwen_synthesize` over three crawl dates as a backfill from the
REST API (what the UI's Backfill dialog posts: reprocess "none", the configuration's max active runs),
every mapped batch task of every run in the pool `vlm` (the configuration's slots), against the stand-in with `--serving h100-32b`
(an EMULATION of vLLM's continuous batching scaled to a 32B VLM on one H100, max_num_seqs 64; see
tuwen.local.standin_vlm.serving) with its durations divided by 20. Each configuration (CONFIGS) on a
fresh stack and database with the same 3 x 600 images: the fixed limits of before issue 19
(`TUWEN_VLM_INFLIGHT_CONTROL=fixed`, 32 requests in flight per task, a task per batch of 64, pool 4:
4 x 32 = 128 for 64 sequences; max active runs 2) and today's defaults (one AIMD controller shared by
every task through PostgreSQL, 64 per task as its ceiling, 2 tasks per run, pool 8, max active runs 3:
every active run sends from its start, and the controller holds the total at the batch).

Both run with continuous flow (the DAG's only way now). Reported from the server's own step log: the
mean running sequences / max_num_seqs from the first step the batch is full until the last request
arrived (the issue's window) and until the last sequence finished, the waiting queue's mean and max,
the mean queue time, the client's timeouts (hang-ups the server saw) and failures, and every run's state.

    .venv/bin/python -m bench.bench_synthesis_airflow [before|defaults|defaults-with-daily|pool-4|pool-4-runs-2 ...]   (default: before defaults)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.common import bench_settings, machine, record_result, seed_images, server_metrics
from tuwen.db.session import get_engine
from tuwen.local.airflow_stack import AirflowRunError, AirflowStack
from tuwen.local.services import drop_database, ensure_database, free_port

PRESET = "h100-32b"
TIME_SCALE = 20.0
IMAGES_PER_DAY = 600
DAYS = [dt.date(2026, 11, 17) + dt.timedelta(days=i) for i in range(3)]
DAILY_DAY = DAYS[-1] + dt.timedelta(days=1)
SYNTH = "tuwen_synthesize"
POOL_SLOTS = 8  # VLM_POOL_SLOTS's default
TIMEOUT_S = 600.0  # per request at the preset's speed; scaled like the server (bench_synthesis_serving's doc)



@dataclasses.dataclass(frozen=True)
class Config:
    label: str
    control: str  # TUWEN_VLM_INFLIGHT_CONTROL
    max_in_flight: int  # TUWEN_VLM_MAX_IN_FLIGHT: per task, the limit (fixed) or the ceiling (aimd)
    tasks_per_run: int  # TUWEN_SYNTHESIS_TASKS
    max_active_runs: int = 3  # the backfill's (the UI dialog's "Max active runs")
    pool_slots: int = POOL_SLOTS  # the pool `vlm` (VLM_POOL_SLOTS)
    daily: bool = False  # a manual run of a fourth day triggered while the backfill sends (the daily run's place)


CONFIGS = {
    # The limits before issue 19: fixed, 32 per task, a task per batch of 64 (10 a day), 4 pool slots, the
    # backfill's max active runs 2.
    "before": Config("fixed limits of before: 32 in flight per task, a task per batch, pool 4, max active runs 2",
                     "fixed", 32, 1024, max_active_runs=2, pool_slots=4),
    # The defaults: one shared AIMD controller, 64 per task its ceiling, 2 tasks per run, a pool of 8 (2 tasks x
    # the backfill's 3 active runs + the daily run), so every active run sends from its start and none waits
    # for another to drain; the controller holds the total at the batch however many tasks send.
    "defaults": Config("defaults: shared aimd, 2 tasks per run x ceiling 64, pool 8, max active runs 3",
                       "aimd", 64, 2),
    # Session 9's sizing: a pool of 4, so the third run's tasks wait for a slot that frees only when a run drains.
    "pool-4": Config("defaults but pool 4 (the third active run waits for a slot)", "aimd", 64, 2, pool_slots=4),
    # The "a run must not starve the daily one": a fourth day's run triggered once the backfill's runs
    # fill the server; its 2 tasks take the pool's last 2 slots and the shared controller a fair share.
    "defaults-with-daily": Config("defaults, and a daily run triggered 10 s into the backfill", "aimd", 64, 2,
                                  daily=True),
    "pool-4-runs-2": Config("defaults but pool 4, max active runs 2", "aimd", 64, 2, max_active_runs=2,
                            pool_slots=4),
}


def _wait_backfill(api: Any, backfill_id: int, timeout_s: float = 1200) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        backfill = api.get(f"/backfills/{backfill_id}")
        if backfill["completed_at"]:
            return backfill
        time.sleep(2)
    raise AirflowRunError(f"backfill {backfill_id} not completed after {timeout_s:.0f}s")


def run_config(config: Config) -> dict[str, Any]:
    from tuwen.local.standin_vlm import StandinProcess

    label = config.label
    with tempfile.TemporaryDirectory() as tmp, bench_settings(Path(tmp)) as settings, \
            StandinProcess(serving=PRESET, serving_time_scale=TIME_SCALE) as vlm:
        run_dir = Path(tmp)
        settings = dataclasses.replace(
            settings, vlm_base_url=vlm.base_url, vlm_model=vlm.model, vlm_timeout_s=TIMEOUT_S / TIME_SCALE,
            vlm_max_in_flight=config.max_in_flight, vlm_inflight_control=config.control,
            vlm_metrics_poll_s=1.0 / TIME_SCALE, synthesis_tasks=config.tasks_per_run,
            judge_enabled=False, ocr_enabled=False, release_dir=run_dir / "releases")
        for i, day in enumerate(DAYS):
            seed_images(settings, IMAGES_PER_DAY, day, rng_seed=100 + i)
        if config.daily:
            seed_images(settings, IMAGES_PER_DAY, DAILY_DAY, rng_seed=200)
        metadata = settings.database_url.rsplit("/", 1)[0] + f"/airflow_bench_{uuid.uuid4().hex[:8]}"
        ensure_database(metadata)
        stack = AirflowStack(metadata_url=metadata, home=run_dir / "airflow", run_dir=run_dir, user="bench",
                             password=secrets.token_hex(12), api_port=free_port(), executor="local",
                             pool_slots=config.pool_slots, parallelism=config.pool_slots + 4, settings=settings,
                             extra_env={"TUWEN_RETRY_DELAY_S": "2"})
        try:
            started = time.monotonic()
            for line in stack.up():
                print(line, flush=True)
            api = stack.client()
            deadline = time.monotonic() + 180
            while api.get("/dags", tags="tuwen")["total_entries"] < 3:
                if time.monotonic() > deadline:
                    raise AirflowRunError("the dag-processor did not serialize the tuwen DAGs within 180s")
                time.sleep(2)
            api.patch(f"/dags/{SYNTH}", {"is_paused": False})
            print(f"Airflow ready in {time.monotonic() - started:.0f}s", flush=True)
            vlm.reset_stats()
            vlm.reset_serving()
            before = server_metrics(vlm.root_url)
            began = time.monotonic()
            backfill = api.post("/backfills", {
                "dag_id": SYNTH, "from_date": f"{DAYS[0]}T00:00:00Z", "to_date": f"{DAYS[-1]}T23:59:59Z",
                "run_backwards": False, "dag_run_conf": {}, "reprocess_behavior": "none",
                "max_active_runs": config.max_active_runs})
            daily_run = None
            if config.daily:
                time.sleep(10)
                daily_run = api.post(f"/dags/{SYNTH}/dagRuns", {"logical_date": None, "conf": {
                    "date_from": str(DAILY_DAY), "date_to": str(DAILY_DAY)}})["dag_run_id"]
            _wait_backfill(api, backfill["id"])
            while daily_run is not None and api.get(f"/dags/{SYNTH}/dagRuns/{daily_run}")["state"] not in (
                    "success", "failed"):
                if time.monotonic() - began > 1200:
                    raise AirflowRunError(f"the daily run {daily_run} did not end within 1200 s")
                time.sleep(2)
            wall = time.monotonic() - began
            runs = [r for r in api.get(f"/dags/{SYNTH}/dagRuns", run_type="backfill", limit=100)["dag_runs"]]
            tis = [ti for r in runs for ti in api.get(f"/dags/{SYNTH}/dagRuns/{r['dag_run_id']}/taskInstances",
                                                       task_id="synthesize", limit=1000)["task_instances"]]
        finally:
            for line in stack.down():
                print(line, flush=True)
            drop_database(metadata)
        after = server_metrics(vlm.root_url)
        serving = vlm.serving()
        stats = vlm.stats()
        with get_engine(settings.database_url).connect() as conn:
            statuses = dict(conn.execute(text("SELECT status, count(*) FROM generation GROUP BY status")).all())
            samples = conn.execute(text("SELECT count(*) FROM sample")).scalar_one()
            # Each run's answers and span, to see the daily run's share while the backfill sends.
            per_run = {r.run_id: (r.n, float(r.first_s), float(r.last_s)) for r in conn.execute(text(
                "SELECT run_id, count(*) AS n, "
                "extract(epoch FROM min(completed_at) - (SELECT min(completed_at) FROM generation)) AS first_s, "
                "extract(epoch FROM max(completed_at) - (SELECT min(completed_at) FROM generation)) AS last_s "
                "FROM generation WHERE status = 'succeeded' GROUP BY run_id"))}
            if config.daily:
                daily_key = next(run_id for run_id in per_run if not run_id.startswith("backfill"))
                # While the daily run was answered, what share of all answers were its own.
                during = conn.execute(text(
                    "SELECT count(*) FROM generation WHERE status = 'succeeded' AND completed_at BETWEEN "
                    "(SELECT min(completed_at) FROM generation WHERE run_id = :r) AND "
                    "(SELECT max(completed_at) FROM generation WHERE run_id = :r)"), {"r": daily_key}).scalar_one()
    queued = after["vllm:request_queue_time_seconds_count"] - before["vllm:request_queue_time_seconds_count"]
    queue_s = after["vllm:request_queue_time_seconds_sum"] - before["vllm:request_queue_time_seconds_sum"]
    row = {
        "label": label, "wall_s": wall, "runs": {r["state"] for r in runs}, "n_runs": len(runs),
        "task_instances": len(tis), "task_tries": sum(ti.get("try_number") or 1 for ti in tis),
        "statuses": statuses, "samples": samples, "requests": stats["requests"],
        "occupancy_until_last_arrival": serving.get("occupancy_until_last_arrival"),
        "occupancy": serving.get("occupancy"), "mean_waiting": serving.get("mean_waiting"),
        "max_waiting": serving.get("max_waiting"), "mean_queue_s": queue_s / queued if queued else 0.0,
        "client_hangups": stats["errors"].get("cancelled", 0), "first_full_s": serving.get("first_full_s"),
        "last_arrival_s": serving.get("last_arrival_s"), "span_s": serving.get("span_s"),
    }
    if config.daily:
        n, first_s, last_s = per_run[daily_key]
        row["daily"] = {"answers": n, "first_answer_s": first_s, "last_answer_s": last_s,
                        "share_while_answered": n / during if during else 0.0,
                        "runs_answering_then": sum(1 for (_, f, la) in per_run.values()
                                                   if f <= last_s and la >= first_s)}
        print(f"daily run: {n} answers from {first_s:.0f}s to {last_s:.0f}s after the first answer, "
              f"{row['daily']['share_while_answered']:.2f} of all answers meanwhile "
              f"({row['daily']['runs_answering_then']} runs answering then)", flush=True)
    print(f"{label}: {row['n_runs']} runs {row['runs']}, {row['task_instances']} mapped tasks ({row['task_tries']} "
          f"tries); generations {statuses}, {samples} samples, {row['requests']} requests at the server; occupancy "
          f"{row['occupancy_until_last_arrival'] or 0:.3f} from the first full step ({row['first_full_s'] or 0:.1f}s) "
          f"until the last request arrived ({row['last_arrival_s'] or 0:.1f}s), {row['occupancy'] or 0:.3f} until the "
          f"last finish ({row['span_s'] or 0:.1f}s); waiting mean {row['mean_waiting'] or 0:.1f} max "
          f"{row['max_waiting']}; mean queue time {row['mean_queue_s']:.2f}s (x {TIME_SCALE:g} on an H100); client "
          f"timeouts {row['client_hangups']}; backfill wall {wall:.0f}s", flush=True)
    return row


INTRO = f"""`python -m bench.bench_synthesis_airflow` (bench/bench_synthesis_airflow.py): a three-day backfill
({len(DAYS)} x {IMAGES_PER_DAY} images) posted to Airflow's REST API (reprocess none; max active runs and
the pool `vlm`'s slots as each row says), LocalExecutor, batches of 64, against the stand-in's emulation of a 32B VLM on
one H100 (max_num_seqs 64, durations / {TIME_SCALE:g}; the per-request timeout {TIMEOUT_S:g} s scaled alike).
Occupancy = the server's time-weighted mean running sequences / 64 from its first full step until the last
request arrived (the issue's window; after it the batch drains with nothing left to admit), and until the last
sequence finished. Target: >= 0.95 with no timeouts and a short waiting queue. Each configuration on a fresh
Airflow and database."""


def main(names: list[str]) -> list[dict[str, Any]]:
    print(f"== synthesis through Airflow against the serving model ({machine()}, "
          f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC) ==", flush=True)
    rows = [run_config(CONFIGS[name]) for name in names]
    load = os.getloadavg()[0]
    record_result(
        "Synthesis through Airflow: a three-day backfill against the serving model",
        f"- {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, `python -m bench.bench_synthesis_airflow`, {machine()}, "
        f"load avg {load:.1f} at the end:\n" + "\n".join(
            f"  - {r['label']}: runs {sorted(r['runs'])}, {r['task_instances']} mapped tasks, {r['samples']} "
            f"samples, {r['requests']} requests; occupancy **{r['occupancy_until_last_arrival'] or 0:.3f}** until "
            f"the last request arrived, {r['occupancy'] or 0:.3f} until the last finish; waiting mean "
            f"{r['mean_waiting'] or 0:.1f}, max {r['max_waiting']}; mean queue time {r['mean_queue_s']:.2f} s "
            f"(x {TIME_SCALE:g}); timeouts {r['client_hangups']}; backfill {r['wall_s']:.0f} s"
            + (f"; the daily run: {r['daily']['answers']} answers from {r['daily']['first_answer_s']:.0f} s to "
               f"{r['daily']['last_answer_s']:.0f} s, **{r['daily']['share_while_answered']:.2f}** of all answers "
               f"meanwhile ({r['daily']['runs_answering_then']} runs answering then)" if "daily" in r else "")
            for r in rows),
        intro=INTRO)
    return rows


if __name__ == "__main__":
    unknown = [c for c in sys.argv[1:] if c not in CONFIGS]
    if unknown:
        sys.exit(f"unknown configuration(s) {unknown}; choose from {sorted(CONFIGS)}")
    chosen = sys.argv[1:] or ["before", "defaults"]
    main(chosen)
    sys.exit(0)
