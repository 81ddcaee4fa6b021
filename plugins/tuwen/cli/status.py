"""`tuwen status`: what the pipeline did lately, read from the lineage DB, as rich tables.

Per-run metrics need no table of their own: every `generation` row carries its Airflow dag/run/task
ids, status, error type, tokens and latency, and `crawl_run` keeps each crawl's stats, so a run's
numbers are an aggregate over rows that exist anyway (and cannot disagree with them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from tuwen.config import Settings
from tuwen.db.session import get_engine

DONE = ("succeeded", "unparseable")


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

    @property
    def error_rate(self) -> float | None:
        finished = sum(v for k, v in self.generations_by_status.items() if k != "pending")
        return self.generations_by_status.get("failed", 0) / finished if finished else None


def collect_status(settings: Settings, hours: int = 24) -> StatusReport:
    report = StatusReport(hours=hours)
    window = {"hours": hours}
    with get_engine(settings.database_url).connect() as conn:
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
        report.unassigned = int(conn.execute(text(
            "SELECT count(*) FROM image WHERE status = 'accepted' AND task_type IS NULL")).scalar_one())
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
    return report


def print_status(settings: Settings, hours: int = 24) -> StatusReport:
    from rich.console import Console
    from rich.table import Table

    report = collect_status(settings, hours)
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
    return report
