"""Backfills through Airflow's REST API against a running Airflow (see tests/live_airflow.py).

What a user does from the UI's Backfill dialog is a `POST /api/v2/backfills`; this test does exactly
that and then checks the promises: every partition's images get exactly one paid completion and one
sample, batch tasks run in the pool `vlm`, the backfill's max_active_runs holds, a manual run is not
queued behind the backfill, and a second backfill with reprocess_behavior "completed" pays nothing.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.ops.live_airflow import LiveAirflow

pytest_plugins = ["tests.ops.live_airflow"]

DAYS = [dt.date(2026, 11, 2), dt.date(2026, 11, 3), dt.date(2026, 11, 4)]
MANUAL_DAY = dt.date(2026, 11, 6)
PER_DAY = 8  # two batches of four per partition
SYNTH = "tuwen_synthesize"


def _ts(value: str | None) -> dt.datetime:
    assert value, "timestamp missing"
    return dt.datetime.fromisoformat(value)


def max_overlap(intervals: list[tuple[dt.datetime, dt.datetime]]) -> int:
    """The most intervals open at one instant (an end and a start at the same instant do not overlap)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


def _wait_backfill(live: LiveAirflow, backfill_id: int, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        backfill = live.api.get(f"/backfills/{backfill_id}")
        if backfill["completed_at"]:
            return backfill
        time.sleep(2)
    raise AssertionError(f"backfill {backfill_id} not completed after {timeout_s:.0f}s")


def _backfill_body(reprocess: str, max_active_runs: int) -> dict[str, Any]:
    return {"dag_id": SYNTH, "from_date": f"{DAYS[0]}T00:00:00Z", "to_date": f"{DAYS[-1]}T23:59:59Z",
            "run_backwards": False, "dag_run_conf": {}, "reprocess_behavior": reprocess,
            "max_active_runs": max_active_runs}


def _partition_counts(live: LiveAirflow, day: dt.date) -> tuple[int, int, int, int]:
    """(accepted images, generations, images with a done generation, samples) for one crawl date."""
    row = live.rows("""
        SELECT count(DISTINCT i.id),
               count(g.id),
               count(DISTINCT g.image_id) FILTER (WHERE g.status IN ('succeeded', 'unparseable')),
               count(s.id)
        FROM image i LEFT JOIN generation g ON g.image_id = i.id LEFT JOIN sample s ON s.generation_id = g.id
        WHERE i.crawl_date = :day AND i.status = 'accepted'""", day=day)[0]
    return tuple(row)  # type: ignore[return-value]


def test_backfill_over_three_days_through_the_rest_api(live_airflow: LiveAirflow) -> None:
    live = live_airflow
    started = time.monotonic()
    for day in DAYS:
        live.seed(day, PER_DAY)
    live.seed(MANUAL_DAY, 4)
    live.set_standin_faults(latency="fixed:0.3")
    requests_before = live.standin_requests()

    # The dialog's preview: exactly one run per crawl date.
    dry = live.api.post("/backfills/dry_run", _backfill_body("none", 1))
    assert sorted(_ts(b["logical_date"]).date() for b in dry["backfills"]) == DAYS

    backfill = live.api.post("/backfills", _backfill_body("none", 1))
    # While the backfill exists, a manual run (what the daily run is to the scheduler) is triggered.
    manual_id = live.trigger(SYNTH, {"date_from": MANUAL_DAY.isoformat()})
    manual = live.wait_run(SYNTH, manual_id)
    assert manual["state"] == "success"
    done = _wait_backfill(live, backfill["id"])

    runs = [r for r in live.api.get(f"/dags/{SYNTH}/dagRuns", run_type="backfill", limit=100)["dag_runs"]
            if _ts(r["logical_date"]).date() in DAYS]
    assert sorted(_ts(r["logical_date"]).date() for r in runs) == DAYS
    assert {r["state"] for r in runs} == {"success"}
    # max_active_runs=1: the backfill's runs never overlapped ...
    assert max_overlap([(_ts(r["start_date"]), _ts(r["end_date"])) for r in runs]) == 1
    # ... and the manual run did not wait for the backfill to finish.
    assert _ts(manual["end_date"]) < max(_ts(r["end_date"]) for r in runs) <= _ts(done["completed_at"])

    # Every partition: each image exactly one generation, each done generation exactly one sample.
    for day in DAYS:
        images, generations, done_images, samples = _partition_counts(live, day)
        assert (images, generations, done_images) == (PER_DAY, PER_DAY, PER_DAY), day
        assert samples == live.scalar("""SELECT count(*) FROM generation g JOIN image i ON i.id = g.image_id
                                         WHERE i.crawl_date = :day AND g.status = 'succeeded'""", day=day)
        # Lineage: the generations were made by that date's backfill run.
        run_ids = {r["dag_run_id"] for r in runs if _ts(r["logical_date"]).date() == day}
        assert {r[0] for r in live.rows("""SELECT DISTINCT g.run_id FROM generation g JOIN image i
                                           ON i.id = g.image_id WHERE i.crawl_date = :day""", day=day)} == run_ids
    assert _partition_counts(live, MANUAL_DAY)[:3] == (4, 4, 4)
    paid = live.standin_requests() - requests_before
    assert paid == len(DAYS) * PER_DAY + 4  # one request per image, nothing paid twice

    # Batch tasks ran in the pool `vlm` and never more at once than its slots.
    batch_tis = [ti for r in [*runs, manual] for ti in live.task_instances(SYNTH, r["dag_run_id"], task_id="synthesize")]
    assert len(batch_tis) == len(DAYS) * 2 + 1
    assert {ti["pool"] for ti in batch_tis} == {"vlm"}
    assert max_overlap([(_ts(ti["start_date"]), _ts(ti["end_date"])) for ti in batch_tis]) <= 4

    # A second backfill over the same dates, reprocessing completed runs: it runs, and pays nothing.
    generations = live.scalar("SELECT count(*) FROM generation")
    requests_mid = live.standin_requests()
    again = live.api.post("/backfills", _backfill_body("completed", 2))
    _wait_backfill(live, again["id"])
    reruns = [r for r in live.api.get(f"/dags/{SYNTH}/dagRuns", run_type="backfill", limit=100)["dag_runs"]
              if _ts(r["logical_date"]).date() in DAYS]
    assert {r["state"] for r in reruns} == {"success"}
    assert max(_ts(r["end_date"]) for r in reruns) > _ts(done["completed_at"])  # they really ran again
    assert live.standin_requests() == requests_mid
    assert live.scalar("SELECT count(*) FROM generation") == generations
    print(f"backfill test: {time.monotonic() - started:.0f}s")


def test_no_secret_in_any_log_of_the_live_stack(live_airflow: LiveAirflow) -> None:
    """Component logs, task logs and migration logs never contain a secret value."""
    logs = live_airflow.logs_text()
    assert len(logs) > 10_000  # the logs are really there
    leaked = [name for name, value in live_airflow.secrets.items() if value in logs]
    assert not leaked, f"secrets written to logs: {leaked}"
