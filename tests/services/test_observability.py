"""Progress lines at a steady cadence, and `tuwen status` over a lineage DB with known rows and a bucket
that lost objects."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

import pytest
from sqlalchemy import text

from bench.common import seed_images
from tuwen.cli.main import main
from tuwen.cli.status import collect_status, print_status
from tuwen.config import Settings
from tuwen.db.session import get_engine
from tuwen.local.services import free_port
from tuwen.progress import Progress, format_duration, progress_iter
from tuwen.resources import Resources


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_logs_on_a_time_cadence_with_rate_eta_and_counters(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    log = logging.getLogger("test.progress")
    caplog.set_level(logging.INFO, logger="test.progress")
    progress = Progress("synthesis map 3", total=100, log=log, every_s=10, unit="completions", clock=clock)
    for _ in range(20):  # 20 items in 5 s: no line yet
        clock.now += 0.25
        progress.advance(completion_tokens=50)
    assert caplog.records == []
    clock.now += 5
    progress.advance(error_timeout=1)
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("synthesis map 3: 21/100 completions (21.0%), 2.10/s, ETA 38s")
    assert "completion_tokens=1000 (100/s)" in line and "error_timeout=1" in line
    assert progress.finish().startswith("synthesis map 3: 21/100")
    assert format_duration(3725) == "1h02m" and format_duration(65) == "1m05s"


def test_progress_iter_passes_items_through_and_ends_with_a_final_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.iter")
    assert list(progress_iter(range(5), "export r1", logging.getLogger("test.iter"), unit="samples")) == list(range(5))
    assert caplog.records[-1].getMessage().startswith("export r1: 5 samples")


def test_status_reports_counts_queue_depth_errors_and_last_release(lineage_db: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    resources = Resources.from_settings(dataclasses.replace(Settings(), database_url=lineage_db))
    today = dt.date.today()
    with get_engine(lineage_db).begin() as conn:
        run = conn.execute(text("INSERT INTO crawl_run (spider, partition_date, status) "
                                "VALUES ('t', :d, 'succeeded') RETURNING id"), {"d": today}).scalar()
        for i, (status, task) in enumerate([("accepted", "detail")] * 4 + [("rejected", None), ("accepted", None)]):
            conn.execute(text("""INSERT INTO image (sha256, status, reason, crawl_date, first_crawl_run_id, task_type)
                                 VALUES (:s, :st, :why, :d, :r, :t)"""),
                         {"s": f"{i:064x}", "st": status, "why": "too_small" if status == "rejected" else None,
                          "d": today, "r": run, "t": task})
        ids = list(conn.execute(text("SELECT id FROM image WHERE task_type IS NOT NULL ORDER BY id")).scalars())
        for n, (image_id, status, error) in enumerate(zip(ids, ["succeeded", "succeeded", "failed"],
                                                          [None, None, "timeout"], strict=False)):
            conn.execute(text("""INSERT INTO generation (request_key, image_id, task_type, language, prompt_id,
                                 prompt_version, prompt_sha256, model, sampling, status, error_type, completion_tokens,
                                 latency_ms, dag_id, run_id, completed_at)
                                 VALUES (:k, :i, 'detail', 'zh', 'p', 1, 'x', 'm', '{}', :st, :e, 100, 50,
                                         'tuwen_synthesize', 'manual__1', now())"""),
                         {"k": f"k{n}", "i": image_id, "st": status, "e": error})
        conn.execute(text("INSERT INTO export (name, params, status, n_samples, s3_prefix, published_at) "
                          "VALUES ('r1', '{}', 'published', 2, 'exports/r1/', now())"))
    report = collect_status(resources)
    assert report.images_by_status == {"accepted": 5, "rejected": 1}
    assert report.generations_by_status == {"succeeded": 2, "failed": 1}
    assert report.errors_by_type == {"timeout": 1}
    assert report.queue_depth == 2  # two typed images: one failed, one never requested
    assert report.unassigned == 1
    assert report.error_rate == pytest.approx(1 / 3)
    assert report.runs[0]["run_id"] == "manual__1" and report.runs[0]["generations"] == 3
    assert report.last_release is not None and report.last_release["name"] == "r1"
    print_status(resources)
    out = capsys.readouterr().out
    assert "object store: no accepted image to check" in out  # these rows name no objects
    assert "queue depth" in out and "r1 (published" in out and "33.33%" in out


LOST_DAY = dt.date(2026, 11, 3)


def test_status_reports_accepted_images_whose_objects_are_gone_with_the_repair(
        resources: Resources, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    resources.store.ensure_bucket()
    ids = seed_images(resources.settings, 6, LOST_DAY, width=64, height=48)
    assert collect_status(resources).store.summary().startswith("object store: ok, all 6 accepted images")
    with resources.engine.connect() as conn:
        lost = list(conn.execute(text("SELECT model_key FROM image WHERE id = ANY(:ids) ORDER BY id LIMIT 2"),
                                 {"ids": ids}).scalars())
    for key in lost:
        resources.store.remove(key)

    check = collect_status(resources).store
    assert (check.accepted, check.checked, check.missing_images) == (6, 6, 2)
    assert check.missing_keys == sorted(lost) and check.missing_crawl_dates == [str(LOST_DAY)]
    bounded = collect_status(resources, store_sample=3).store  # a sample, whatever the store's size
    assert bounded.checked == 3 and bounded.accepted == 6 and bounded.missing_images <= 2

    print_status(resources)
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "LOST OBJECTS: 2 of all 6 accepted images checked have objects missing" in out
    assert str(LOST_DAY) in out and lost[0] in out and "trigger `tuwen_crawl`" in out

    # The command says it too, and exits 1 so that a scheduled check is noticed.
    for name, value in resources.settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert main(["status"]) == 1
    assert "LOST OBJECTS" in capsys.readouterr().out
    for key in lost:  # what a recrawl does: the same bytes put back under the same keys
        resources.store.put_bytes(key, b"restored", "image/jpeg")
    assert main(["status"]) == 0


def test_status_says_when_the_store_cannot_be_asked(resources: Resources) -> None:
    resources.store.ensure_bucket()
    seed_images(resources.settings, 1, LOST_DAY, width=64, height=48)
    unreachable = Resources.from_settings(dataclasses.replace(resources.settings, s3_endpoint=f"127.0.0.1:{free_port()}"))
    check = collect_status(unreachable).store
    assert check.error is not None and check.missing_images == 0
    assert check.summary().startswith("object store: could not be checked: 127.0.0.1:")
