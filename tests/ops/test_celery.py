"""Scale-out: CeleryExecutor with a Redis broker and two `airflow celery worker` processes.

Curation: one crawl partition's mapped `curate` tasks share it on both workers, each image judged once.

One partition of 32 images in batches of 4 maps into 8 `synthesize` tasks; with the pool's 4 slots
and 2 task slots per worker, the batches must spread over both workers (the task instance's
`hostname`, via REST, names the worker), and still each image gets exactly one paid completion.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import TYPE_CHECKING

import httpx

from bench.common import seed_images
from tests.ops.live_airflow import CRAWL

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


CURATE_DAY = dt.date(2026, 11, 14)


def _xcom(live: LiveAirflow, dag_id: str, run_id: str, task_id: str, map_index: int) -> dict:
    entry = live.api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
                         map_index=map_index)
    value = entry["value"]
    return json.loads(value) if isinstance(value, str) else value


def test_one_partitions_curation_spreads_over_two_celery_workers(live_airflow: LiveAirflow) -> None:
    """tuwen_crawl labelled with one day: its mapped `curate` tasks (pool curate) share the day's images
    through SKIP LOCKED claims on both workers, and no image is curated twice."""
    live = live_airflow
    started = time.monotonic()
    # Work enough for every task whichever run crawls the fixture first (unpausing the DAG also starts its
    # scheduled run, which may store the site's images under its own date): uncurated images of the day.
    seed_images(live.settings, 96, CURATE_DAY, width=336, height=252, rng_seed=CURATE_DAY.toordinal(),
                spider="ops-curate", curated=False)
    live.api.patch(f"/dags/{CRAWL}", {"is_paused": False})
    try:
        run_id = live.trigger(CRAWL, {"date_from": CURATE_DAY.isoformat(), "date_to": CURATE_DAY.isoformat()})
        run = live.wait_run(CRAWL, run_id, timeout_s=600)
    finally:
        live.api.patch(f"/dags/{CRAWL}", {"is_paused": True})
    assert run["state"] == "success"

    tasks = live.task_instances(CRAWL, run_id, task_id="curate")
    assert len(tasks) == live.settings.curate_tasks and {ti["state"] for ti in tasks} == {"success"}
    workers = {ti["hostname"].split("@", 1)[0] for ti in tasks}
    assert workers == {"w1", "w2"}, [ti["hostname"] for ti in tasks]
    accepted = live.scalar("SELECT count(*) FROM image WHERE crawl_date = :day AND status = 'accepted'",
                           day=CURATE_DAY)
    done = [_xcom(live, CRAWL, run_id, "curate", ti["map_index"])["images"] for ti in tasks]
    assert sum(done) == accepted > 0, done  # every image once: a second verdict would count twice
    writers = live.rows("""SELECT c.map_index, count(*) FROM curation c JOIN image i ON i.id = c.image_id
                           WHERE i.crawl_date = :day AND c.dag_id = :dag GROUP BY 1""", day=CURATE_DAY, dag=CRAWL)
    assert sum(n for _, n in writers) == accepted and len(writers) >= 2
    assert sorted(n for _, n in writers) == sorted(n for n in done if n)
    print(f"curation celery test: {time.monotonic() - started:.0f}s, images per curate task {done}, "
          f"tasks per worker { {w: sum(ti['hostname'].startswith(w + '@') for ti in tasks) for w in sorted(workers)} }")
