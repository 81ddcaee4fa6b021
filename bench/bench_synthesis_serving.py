"""Synthesis against the stand-in's serving model: does the client keep an emulated vLLM server's batch full?

The stand-in runs with `--serving h100-32b` (an EMULATION of vLLM's continuous batching scaled to a
32B VLM on one H100: max_num_seqs 64, ~650 output tokens/s at a full batch; see
tuwen.local.standin_vlm.serving), its durations divided by TIME_SCALE so a run takes minutes, not
hours. A three-day backfill as Airflow runs it: each day planned into mapped batches of
`batch_size` images, every batch of every day queued for the pool `vlm`, the pool's slots' worth of
batch tasks at a time, each in a process of its own (bench.common.run_mapped_tasks: the task code the
DAG calls, in a process pool standing in for Airflow's pool and Celery workers), with
`TUWEN_VLM_MAX_IN_FLIGHT` requests in flight (fixed limits) or as its ceiling (aimd), batch by batch
(before issue 19) or with continuous flow (each day's run queued by its plan, tasks taking over its
queued batches' work). The per-request timeout is 600 s, scaled like everything else: tuwen's default 120 s
is too short for this preset (a 1,900-token conversation takes 190 s at a full batch of 64, and about
8 % of conversations draw more than the 1,218 tokens that fit in 120 s), and its timeouts open the
client's breaker, which fails the batch task; Airflow's retries (TASK_RETRIES here) then rerun it.

Reported per configuration, from the server's own step log (`GET /stand-in/serving`): the mean
running sequences / max_num_seqs from the first step the batch is full until the last sequence
finishes ("occupancy") and until the last request arrived (the drain after it has nothing left
to admit, whatever the client does), the waiting queue's time-weighted mean and max over that window, the mean
queue time (vllm:request_queue_time_seconds), and the client's timeouts (requests the server saw
hang up, with the final failures by type). The machine is shared and the runs are side by side in
one process tree, so compare the configurations with each other rather than with other days.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.common import bench_settings, machine, run_mapped_tasks, seed_images, server_metrics
from tuwen.config import Settings
from tuwen.domain import Partition
from tuwen.resources import Resources
from tuwen.synthesis.keys import RunParams
from tuwen.synthesis.planning import plan_partition
from tuwen.synthesis.runner import AirflowIds

PRESET = "h100-32b"
TIME_SCALE = 20.0  # 20x faster than the preset: a 620-token answer at a full batch takes ~3 s, not ~60 s
IMAGES_PER_DAY = 600
DAYS = [dt.date(2026, 11, 17) + dt.timedelta(days=i) for i in range(3)]
TIMEOUT_S = 600.0  # per request, scaled below like the server's durations (see the module doc)
TASK_RETRIES = 2  # the synthesize task's Airflow retries
DAG = "tuwen_synthesize"


@dataclasses.dataclass(frozen=True)
class Config:
    label: str
    pool_slots: int
    max_in_flight: int  # per batch task (TUWEN_VLM_MAX_IN_FLIGHT): the limit, or aimd's ceiling
    adaptive: bool = False  # in-flight control from the server's state (tuwen.synthesis.inflight)
    flow: bool = False  # continuous flow: tasks take over their run's queued work (tuwen.synthesis.runner)
    tasks_per_run: int = 0  # TUWEN_SYNTHESIS_TASKS with flow; 0: the pool's slots


# The code before issue 19 (VLM_POOL_SLOTS 4 x TUWEN_VLM_MAX_IN_FLIGHT 32 = 128 in flight for a
# 64-sequence server, each task ending with its slowest request), the same limits hand-tuned to the
# server (2 x 32 = 64 = max_num_seqs), and today's defaults: continuous flow with one AIMD controller
# shared by every task through PostgreSQL, the hand-set limit a ceiling, /metrics read every second of
# the preset's time.
CONFIGS = [
    Config("before: fixed 4 pool slots x 32 in flight, batch by batch", 4, 32),
    Config("before: fixed 2 pool slots x 32 in flight (= max_num_seqs), batch by batch", 2, 32),
    Config("fixed 4 pool slots x 32 in flight, continuous flow", 4, 32, flow=True),
    Config("shared aimd, 4 pool slots x ceiling 32, continuous flow", 4, 32, adaptive=True, flow=True),
    Config("defaults: shared aimd, 4 pool slots, 2 tasks per run x ceiling 64, continuous flow", 4, 64, adaptive=True,
           flow=True, tasks_per_run=2),
]


def run_config(settings: Settings, vlm: Any, config: Config) -> dict[str, Any]:

    root = vlm.root_url
    resources = Resources.from_settings(settings)
    with resources.engine.begin() as conn:
        conn.execute(text("TRUNCATE sample, generation RESTART IDENTITY CASCADE"))
    task_settings = dataclasses.replace(
        settings, vlm_max_in_flight=config.max_in_flight,
        vlm_inflight_control="aimd" if config.adaptive else "fixed", vlm_metrics_poll_s=1.0 / TIME_SCALE)
    resources = Resources.from_settings(dataclasses.replace(
        settings, synthesis_tasks=config.tasks_per_run or config.pool_slots))
    queue = []  # every mapped batch of every day, in the order the backfill's runs map them
    for day in DAYS:
        run_id = f"backfill__{day.isoformat()}"
        owner = (DAG, run_id) if config.flow else (None, None)
        plan = plan_partition(resources, Partition(day, day + dt.timedelta(days=1)), RunParams(), *owner)
        queue += [(AirflowIds(DAG, owner[1], "synthesize", i), batch["image_ids"])
                  for i, batch in enumerate(plan.batches)]
    vlm.reset_stats()
    vlm.reset_serving()
    before = server_metrics(root)
    results, wall = run_mapped_tasks(task_settings, queue, config.pool_slots, retries=TASK_RETRIES)
    totals: dict[str, Any] = {"succeeded": 0, "unparseable": 0, "failed": 0, "failed_by_type": {}, "task_retries": 0,
                              "taken_over": 0}
    for result in results:
        for key in ("succeeded", "unparseable", "failed", "taken_over"):
            totals[key] += result[key]
        totals["task_retries"] += result["task_attempts"] - 1
        for kind, n in result["failed_by_type"].items():
            totals["failed_by_type"][kind] = totals["failed_by_type"].get(kind, 0) + n
    after = server_metrics(root)
    serving = vlm.serving()
    if serving.get("occupancy") is None:
        print(f"no occupancy window: {serving}", flush=True)
    stats = vlm.stats()
    queued = after["vllm:request_queue_time_seconds_count"] - before["vllm:request_queue_time_seconds_count"]
    queue_s = after["vllm:request_queue_time_seconds_sum"] - before["vllm:request_queue_time_seconds_sum"]
    generated = after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    row = {
        "label": config.label, "batches": len(queue), "wall_s": wall, **totals,
        "occupancy": serving["occupancy"], "mean_running": serving["mean_running"],
        "occupancy_until_last_arrival": serving.get("occupancy_until_last_arrival"),
        "window_s": serving["window_s"], "first_full_s": serving["first_full_s"],
        "mean_waiting": serving["mean_waiting"], "max_waiting": serving["max_waiting"],
        "mean_queue_s": queue_s / queued if queued else 0.0,
        "client_hangups": stats["errors"].get("cancelled", 0),  # the client's timeouts, seen by the server
        # from the first request to the last finish
        "tokens_per_s": generated / serving["span_s"] if serving.get("span_s") else float("nan"),
        # In the preset's own time (x TIME_SCALE back to an H100's seconds):
        "full_batch_tokens_per_s": serving["preset"]["full_batch_tokens_per_s"],
    }
    print(f"{config.label}: {row['succeeded'] + row['unparseable']} samples, {row['failed']} failed "
          f"{row['failed_by_type'] or ''}, {row['task_retries']} task retries, in {wall:.1f}s (server busy {serving.get('span_s') or 0:.1f}s); occupancy {row['occupancy']:.3f} "
          f"(mean running {row['mean_running']:.1f} of {serving['preset']['max_num_seqs']} over "
          f"{row['window_s']:.1f}s from {row['first_full_s']:.1f}s; {row['occupancy_until_last_arrival'] or 0:.3f} until the "
          f"last request arrived, {serving.get('last_arrival_s') or 0:.1f}s); {row['taken_over']} requests taken over; "
          f"waiting mean {row['mean_waiting']:.1f} "
          f"max {row['max_waiting']}; mean queue time {row['mean_queue_s']:.2f}s; client timeouts "
          f"{row['client_hangups']}; {row['tokens_per_s']:.0f} of {row['full_batch_tokens_per_s']:.0f} tokens/s "
          f"at a full batch (emulated, {TIME_SCALE:g}x time)", flush=True)
    return row


def main(configs: Sequence[Config] = CONFIGS) -> list[dict[str, Any]]:
    from tuwen.local.standin_vlm import StandinProcess

    print(f"== synthesis against the serving model ({machine()}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC): "
          f"preset {PRESET} at {TIME_SCALE:g}x, {len(DAYS)} days x {IMAGES_PER_DAY} images ==", flush=True)
    with tempfile.TemporaryDirectory() as tmp, bench_settings(Path(tmp)) as settings, \
            StandinProcess(serving=PRESET, serving_time_scale=TIME_SCALE) as vlm:
        settings = dataclasses.replace(settings, vlm_base_url=vlm.base_url, vlm_model=vlm.model,
                                       vlm_timeout_s=TIMEOUT_S / TIME_SCALE)
        t0 = time.perf_counter()
        for i, day in enumerate(DAYS):
            seed_images(settings, IMAGES_PER_DAY, day, rng_seed=100 + i)
        print(f"seeded {len(DAYS) * IMAGES_PER_DAY} images in {time.perf_counter() - t0:.1f}s; batch size "
              f"{settings.batch_size}, timeout {settings.vlm_timeout_s:g}s (= {TIMEOUT_S:g}s / {TIME_SCALE:g})",
              flush=True)
        return [run_config(settings, vlm, config) for config in configs]


if __name__ == "__main__":
    chosen = [c for c in CONFIGS if not sys.argv[1:] or any(a in c.label for a in sys.argv[1:])]
    main(chosen)
    sys.exit(0)
