"""Scale-out: CeleryExecutor with a Redis broker and two `airflow celery worker` processes.

One partition of 32 images in batches of 4 maps into 8 `synthesize` tasks; with the pool's 4 slots
and 2 task slots per worker, the batches must spread over both workers (the task instance's
`hostname`, via REST, names the worker), and still each image gets exactly one paid completion.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from tests.ops.live_airflow import LiveAirflow

pytest_plugins = ["tests.ops.live_airflow"]

DAY = dt.date(2026, 11, 10)
N_IMAGES = 32


def test_mapped_batches_spread_over_two_celery_workers(live_airflow: LiveAirflow) -> None:
    live = live_airflow
    started = time.monotonic()
    live.seed(DAY, N_IMAGES)
    live.set_standin_faults(latency="fixed:0.3")
    run_id = live.trigger(live.synth, {"date_from": DAY.isoformat()})
    run = live.wait_run(live.synth, run_id, timeout_s=300)
    assert run["state"] == "success"

    batches = live.task_instances(live.synth, run_id, task_id="synthesize")
    assert len(batches) >= 8
    assert {ti["state"] for ti in batches} == {"success"}
    workers = {ti["hostname"].split("@", 1)[0] for ti in batches}
    assert workers == {"w1", "w2"}, [ti["hostname"] for ti in batches]
    # Both worker logs show tasks received: the broker really handed work to each.
    for node in ("w1", "w2"):
        log = (live.run_dir / f"airflow-celery-worker-{node}.log").read_text(errors="replace")
        assert "execute_workload" in log and "received" in log, node

    generations = live.rows("""SELECT g.image_id, count(*) FROM generation g JOIN image i ON i.id = g.image_id
                               WHERE i.crawl_date = :day GROUP BY 1""", day=DAY)
    assert len(generations) == N_IMAGES and all(n == 1 for _, n in generations)
    shas = [r[0] for r in live.rows("SELECT sha256 FROM image WHERE crawl_date = :day", day=DAY)]
    by_image = httpx.get(f"{live.standin}/stand-in/stats", timeout=5).json()["by_image"]
    assert [by_image.get(sha, 0) for sha in shas] == [1] * N_IMAGES  # each image requested exactly once
    print(f"celery test: {time.monotonic() - started:.0f}s, tasks per worker: "
          f"{ {w: sum(ti['hostname'].startswith(w + '@') for ti in batches) for w in sorted(workers)} }")
