"""`tuwen status`: what the pipeline did lately, read from the lineage DB, as rich tables.

Per-run metrics need no table of their own: every `generation` row carries its Airflow dag/run/task
ids, status, error type, tokens and latency, and `crawl_run` keeps each crawl's stats, so a run's
numbers are an aggregate over rows that exist anyway (and cannot disagree with them).

It also checks that the object store still holds what the rows point at: a store can lose objects
while PostgreSQL keeps the rows (a wiped MinIO volume, a restored database, a bucket emptied by
hand), and then every synthesis of those images fails with `image_missing`. A bounded random sample
of accepted images is asked for with one HEAD per object, so the check costs the same on any size of
store.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import urllib3
from minio.error import S3Error
from sqlalchemy import Engine, text

from tuwen.resources import Resources
from tuwen.storage import ObjectStore, StorageError

DONE = ("succeeded", "unparseable")
STORE_SAMPLE = 200  # accepted images whose objects `tuwen status` asks the store for
REPAIR = ("recrawl: trigger `tuwen_crawl` (Airflow UI -> Trigger, or `airflow dags trigger tuwen_crawl`; "
          "locally `make up` then the same, or `make demo`); for each accepted image it fetches again whose "
          "model copy is missing the crawler puts both objects back, changing no row. Then re-run "
          "`tuwen_synthesize` for those crawl dates.")


@dataclass
class StoreCheck:
    """Whether sampled accepted images still have their objects in the bucket."""

    accepted: int = 0  # accepted images whose rows name objects
    checked: int = 0  # of those, how many were sampled
    missing_images: int = 0  # sampled images with at least one object missing
    missing_keys: list[str] = field(default_factory=list)  # the first few missing keys, as examples
    missing_crawl_dates: list[str] = field(default_factory=list)  # crawl dates of the sampled losses
    error: str | None = None  # the store could not be asked

    @property
    def estimated_missing(self) -> int:
        """Accepted images without their objects, scaled up from the sample."""
        return round(self.accepted * self.missing_images / self.checked) if self.checked else 0

    def summary(self) -> str:
        if self.error is not None:
            return f"object store: could not be checked: {self.error}"
        if not self.checked:
            return "object store: no accepted image to check"
        scope = f"all {self.checked:,}" if self.checked == self.accepted else f"a random {self.checked:,} of {self.accepted:,}"
        if not self.missing_images:
            return f"object store: ok, {scope} accepted images checked have their objects"
        estimate = ("" if self.checked == self.accepted
                    else f" (about {self.estimated_missing:,} of all {self.accepted:,})")
        return (f"object store: LOST OBJECTS: {self.missing_images:,} of {scope} accepted images checked have "
                f"objects missing{estimate}, crawl dates {', '.join(self.missing_crawl_dates)}; e.g. "
                f"{', '.join(self.missing_keys)}. Their synthesis fails with image_missing until they are "
                f"restored. Repair: {REPAIR}")


def check_store(engine: Engine, store: ObjectStore, sample: int = STORE_SAMPLE, workers: int = 8) -> StoreCheck:
    """Ask the store for the objects of up to `sample` random accepted images (one HEAD per object)."""
    check = StoreCheck()
    with engine.connect() as conn:
        check.accepted = int(conn.execute(text(
            "SELECT count(*) FROM image WHERE status = 'accepted' AND num_nonnulls(original_key, model_key) > 0"
        )).scalar_one())
        rows = conn.execute(text(
            """SELECT id, crawl_date, original_key, model_key FROM image
               WHERE status = 'accepted' AND num_nonnulls(original_key, model_key) > 0
               ORDER BY random() LIMIT :n"""), {"n": max(sample, 0)}).all()
    check.checked = len(rows)
    keys = sorted({key for row in rows for key in (row.original_key, row.model_key) if key})
    if not keys:
        return check
    try:
        # One request first, so an unreachable store fails once, not once per key; a bucket that is gone
        # lost every object.
        bucket_there = store.client.bucket_exists(store.bucket)
        with ThreadPoolExecutor(workers) as pool:
            present = dict(zip(keys, pool.map(store.exists, keys), strict=True)) if bucket_there else {}
    except (StorageError, S3Error, urllib3.exceptions.HTTPError) as exc:
        return StoreCheck(accepted=check.accepted, error=f"{store.endpoint} bucket {store.bucket!r}: {exc}")
    if not bucket_there:
        present = dict.fromkeys(keys, False)
    lost = [row for row in rows if any(key and not present[key] for key in (row.original_key, row.model_key))]
    check.missing_images = len(lost)
    check.missing_keys = sorted(key for key in keys if not present[key])[:3]
    check.missing_crawl_dates = sorted({str(row.crawl_date) for row in lost})
    return check


@dataclass
class StatusReport:
    hours: int
    images_by_status: dict[str, int] = field(default_factory=dict)
    crawl_runs_by_status: dict[str, int] = field(default_factory=dict)
    generations_by_status: dict[str, int] = field(default_factory=dict)
    errors_by_type: dict[str, int] = field(default_factory=dict)
    samples_by_qc: dict[str, int] = field(default_factory=dict)
    queue_depth: int = 0  # accepted images with a task type and no done generation
    unassigned: int = 0  # accepted images still waiting for a task type
    completion_tokens: int = 0
    mean_latency_ms: float | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    last_release: dict[str, Any] | None = None
    store: StoreCheck = field(default_factory=StoreCheck)

    @property
    def error_rate(self) -> float | None:
        finished = sum(v for k, v in self.generations_by_status.items() if k != "pending")
        return self.generations_by_status.get("failed", 0) / finished if finished else None


def collect_status(resources: Resources, hours: int = 24, store_sample: int = STORE_SAMPLE) -> StatusReport:
    report = StatusReport(hours=hours)
    window = {"hours": hours}
    with resources.engine.connect() as conn:
        def counts(sql: str) -> dict[str, int]:
            return {str(k): int(v) for k, v in conn.execute(text(sql), window).all()}

        since = "now() - make_interval(hours => :hours)"
        report.images_by_status = counts(f"SELECT status, count(*) FROM image WHERE created_at >= {since} GROUP BY 1")
        report.crawl_runs_by_status = counts(
            f"SELECT status, count(*) FROM crawl_run WHERE started_at >= {since} GROUP BY 1")
        report.generations_by_status = counts(
            f"SELECT status, count(*) FROM generation WHERE coalesce(completed_at, created_at) >= {since} GROUP BY 1")
        report.errors_by_type = counts(
            f"""SELECT coalesce(error_type, 'unknown'), count(*) FROM generation
                WHERE status IN ('failed', 'unparseable') AND coalesce(completed_at, created_at) >= {since}
                GROUP BY 1 ORDER BY 2 DESC""")
        report.samples_by_qc = counts(f"SELECT qc_status, count(*) FROM sample WHERE created_at >= {since} GROUP BY 1")
        tokens, latency = conn.execute(text(
            f"""SELECT coalesce(sum(completion_tokens), 0), avg(latency_ms) FROM generation
                WHERE status = 'succeeded' AND completed_at >= {since}"""), window).one()
        report.completion_tokens, report.mean_latency_ms = int(tokens), latency
        report.queue_depth = int(conn.execute(text(
            """SELECT count(*) FROM image i WHERE i.status = 'accepted' AND i.task_type IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM generation g WHERE g.image_id = i.id
                               AND g.status IN ('succeeded', 'unparseable'))""")).scalar_one())
        # Held and rejected images (tuwen.curate) never get a task: they are not waiting.
        report.unassigned = int(conn.execute(text(
            """SELECT count(*) FROM image i WHERE i.status = 'accepted' AND i.task_type IS NULL
               AND NOT EXISTS (SELECT 1 FROM curation c WHERE c.image_id = i.id AND c.status <> 'curated')"""
        )).scalar_one())
        report.runs = [dict(r._mapping) for r in conn.execute(text(
            f"""SELECT dag_id, run_id, count(*) AS generations,
                       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
                       count(*) FILTER (WHERE status = 'failed') AS failed,
                       coalesce(sum(completion_tokens), 0) AS completion_tokens,
                       extract(epoch FROM max(completed_at) - min(created_at)) AS seconds
                FROM generation WHERE coalesce(completed_at, created_at) >= {since} AND run_id IS NOT NULL
                GROUP BY 1, 2 ORDER BY max(completed_at) DESC NULLS LAST LIMIT 10"""), window)]
        last = conn.execute(text(
            """SELECT name, status, n_samples, s3_prefix, published_at FROM export
               ORDER BY coalesce(published_at, created_at) DESC LIMIT 1""")).first()
        report.last_release = dict(last._mapping) if last is not None else None
    if store_sample > 0:
        report.store = check_store(resources.engine, resources.store, store_sample)
    return report


def print_status(resources: Resources, hours: int = 24, store_sample: int = STORE_SAMPLE) -> StatusReport:
    from rich.console import Console
    from rich.table import Table

    settings = resources.settings
    report = collect_status(resources, hours, store_sample)
    console = Console()

    def table(title: str, data: dict[str, int]) -> Table:
        t = Table(title=title, title_justify="left")
        t.add_column("status")
        t.add_column("count", justify="right")
        for key, value in sorted(data.items()):
            t.add_row(key, f"{value:,}")
        if not data:
            t.add_row("(none)", "0")
        return t

    console.print(f"[bold]tuwen status[/bold] — last {hours} h, lineage DB "
                  f"{settings.database_url.rsplit('@', 1)[-1]}")
    console.print(table("images crawled", report.images_by_status))
    console.print(table("crawl runs", report.crawl_runs_by_status))
    console.print(table("generations (paid completions)", report.generations_by_status))
    console.print(table("samples by QC status", report.samples_by_qc))
    queue = Table(title="queue and rates", title_justify="left")
    queue.add_column("metric")
    queue.add_column("value", justify="right")
    queue.add_row("queue depth (accepted, typed, no done generation)", f"{report.queue_depth:,}")
    queue.add_row("waiting for a task type", f"{report.unassigned:,}")
    queue.add_row("error rate", "-" if report.error_rate is None else f"{100 * report.error_rate:.2f}%")
    for kind, n in report.errors_by_type.items():
        queue.add_row(f"  errors: {kind}", f"{n:,}")
    queue.add_row("completion tokens", f"{report.completion_tokens:,}")
    queue.add_row("mean latency", "-" if report.mean_latency_ms is None else f"{report.mean_latency_ms:.0f} ms")
    console.print(queue)
    runs = Table(title="recent synthesis runs", title_justify="left")
    for column in ("dag", "run", "generations", "ok", "failed", "tokens", "tokens/s"):
        runs.add_column(column, justify="right" if column not in ("dag", "run") else "left")
    for run in report.runs:
        seconds = float(run["seconds"] or 0)
        runs.add_row(str(run["dag_id"]), str(run["run_id"]), str(run["generations"]), str(run["succeeded"]),
                     str(run["failed"]), f"{run['completion_tokens']:,}",
                     f"{run['completion_tokens'] / seconds:.0f}" if seconds > 0 else "-")
    console.print(runs)
    release = report.last_release
    console.print("last release: " + ("none" if release is None else
                  f"{release['name']} ({release['status']}, {release['n_samples'] or 0:,} samples, "
                  f"s3://{settings.s3_bucket}/{release['s3_prefix'] or ''}, published {release['published_at']})"))
    if store_sample > 0:
        lost = report.store.missing_images or report.store.error
        console.print(report.store.summary(), style="bold red" if lost else None, markup=False)
    return report
