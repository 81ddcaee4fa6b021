"""Run one site's crawl as a `scrapy crawl` subprocess and report what it recorded.

Twisted's reactor cannot be restarted inside a process, so Airflow tasks, the CLI and the tests all
run the spider as a child process (cwd crawler/, settings from TUWEN_* variables) and read the
outcome back from the crawl_run row the spider wrote.

    tuwen crawl --site fixture --partition-date 2024-05-01 [--jobdir .run/jobs/fixture]

A JOBDIR makes a crawl resumable: a graceful stop (SIGTERM/SIGINT) keeps Scrapy's queue and
dupefilter; after a hard kill (SIGKILL, OOM) Scrapy's on-disk state is unreliable (its queue index is
written only at close), so the spider discards it and the resumed run re-reads pages while skipping
every image URL an earlier run of the same job already judged (those verdicts are in image_source).
See tuwen_crawler.spiders.site_spider.prepare_jobdir.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuwen.config import REPO_ROOT, Settings
from tuwen.crawl.queries import find_run, mark_run_failed
from tuwen.crawl.sites import get_site
from tuwen.resources import Resources

logger = logging.getLogger(__name__)

CRAWLER_DIR = REPO_ROOT / "crawler"
LOG_DIR = REPO_ROOT / ".run" / "crawl-logs"
LOG_TAIL_CHARS = 4000


class CrawlError(RuntimeError):
    """The crawl subprocess failed or its run ended failed; the message carries the log's tail."""


@dataclass
class CrawlSummary:
    crawl_run_id: int
    site: str
    partition_date: dt.date
    status: str
    counts: dict[str, Any]
    duration_s: float
    log_path: str
    stats: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["partition_date"] = self.partition_date.isoformat()
        return data


def _tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - chars))
            return log.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"


def crawl_command(site_name: str, partition_date: dt.date, *, crawl_key: str, dag_id: str | None = None,
                  run_id: str | None = None, jobdir: Path | None = None, log_path: Path | None = None,
                  sites_file: Path | None = None, extra_settings: dict[str, str] | None = None) -> list[str]:
    argv = [sys.executable, "-m", "scrapy", "crawl", "site", "-a", f"site={site_name}",
            "-a", f"partition_date={partition_date.isoformat()}", "-a", f"crawl_key={crawl_key}"]
    if sites_file:
        argv += ["-a", f"sites_file={sites_file}"]
    if dag_id:
        argv += ["-a", f"dag_id={dag_id}"]
    if run_id:
        argv += ["-a", f"run_id={run_id}"]
    if jobdir:
        argv += ["-a", f"job_key={site_name}:{jobdir.resolve()}", "-s", f"JOBDIR={jobdir.resolve()}"]
    if log_path:
        argv += ["-s", f"LOG_FILE={log_path}"]
    for name, value in (extra_settings or {}).items():
        argv += ["-s", f"{name}={value}"]
    return argv


def start_crawl(settings: Settings, site_name: str, partition_date: dt.date, *, crawl_key: str,
                dag_id: str | None = None, run_id: str | None = None, jobdir: Path | None = None,
                log_path: Path, extra_env: dict[str, str] | None = None,
                extra_settings: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start the spider process (own session, so it can be stopped as a group) and return it."""
    get_site(settings.sites_file, site_name)  # a bad sites file fails here, with its own message
    if jobdir is not None:
        jobdir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = crawl_command(site_name, partition_date, crawl_key=crawl_key, dag_id=dag_id, run_id=run_id,
                         jobdir=jobdir, sites_file=settings.sites_file, extra_settings=extra_settings)
    env = {**os.environ, **settings.to_env(), **(extra_env or {})}
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, cwd=CRAWLER_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _stop(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM first: Scrapy then closes gracefully (JOBDIR state saved, crawl_run closed)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def run_crawl(resources: Resources, site_name: str, partition_date: dt.date | str, dag_id: str | None = None,
              run_id: str | None = None, timeout_s: float = 3 * 3600, *, jobdir: Path | None = None,
              extra_env: dict[str, str] | None = None, extra_settings: dict[str, str] | None = None,
              ) -> CrawlSummary:
    """Crawl `site_name` into the lineage DB and object store; raise CrawlError when it fails.

    The crawler process builds its own connections from `resources.settings` (it is another process);
    this side reads its crawl_run row back through `resources.engine`.
    """
    settings, engine = resources.settings, resources.engine
    if isinstance(partition_date, str):
        partition_date = dt.date.fromisoformat(partition_date)
    crawl_key = uuid.uuid4().hex
    log_path = LOG_DIR / f"{site_name}-{partition_date.isoformat()}-{crawl_key[:8]}.log"
    started = time.monotonic()
    process = start_crawl(settings, site_name, partition_date, crawl_key=crawl_key, dag_id=dag_id, run_id=run_id,
                          jobdir=jobdir, log_path=log_path, extra_env=extra_env, extra_settings=extra_settings)
    try:
        returncode = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop(process)
        row = find_run(engine, crawl_key)
        if row is not None:
            mark_run_failed(engine, row.id, f"timed out after {timeout_s:.0f}s")
        raise CrawlError(f"crawl of {site_name} timed out after {timeout_s:.0f}s; log {log_path}:\n"
                         f"{_tail(log_path)}") from None
    except BaseException:
        _stop(process)
        raise
    duration = time.monotonic() - started
    row = find_run(engine, crawl_key)
    if row is None:
        raise CrawlError(f"crawl of {site_name} exited with code {returncode} before recording a crawl_run; "
                         f"log {log_path}:\n{_tail(log_path)}")
    if row.status == "running":
        mark_run_failed(engine, row.id, f"crawl process exited with code {returncode} without closing its run")
    if returncode != 0 or row.status != "succeeded":
        raise CrawlError(f"crawl of {site_name} failed (exit code {returncode}, crawl_run {row.id} "
                         f"status {row.status}: {row.error}); log {log_path}:\n{_tail(log_path)}")
    keep = ("item_scraped_count", "downloader/request_count", "downloader/response_bytes", "elapsed_time_seconds",
            "finish_reason", "log_count/ERROR", "tuwen/s3/uploaded")
    return CrawlSummary(crawl_run_id=row.id, site=site_name, partition_date=partition_date, status=row.status,
                        counts=row.counts, duration_s=round(duration, 2), log_path=str(log_path),
                        stats={k: row.stats[k] for k in keep if k in row.stats})
