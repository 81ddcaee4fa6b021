"""The quality gate over the lineage database: judge every sample in scope, record a qc_run, decide.

Per-sample verdicts come from `tuwen.quality.checks` (plus cross-sample near-duplicate answers);
the batch decision is a Great Expectations suite (`tuwen.quality.gate`). Verdicts are written back
to `sample` in bulk (COPY into a temp table, one UPDATE), so re-running the gate with other
thresholds re-labels samples without regenerating anything.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import mimetypes
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from tuwen.config import TASK_TYPES, Settings
from tuwen.db.models import Generation, Image, QCRun, Sample
from tuwen.db.session import get_engine, session_scope
from tuwen.export import ReleaseParams
from tuwen.quality.checks import (
    QC_CHECKS_VERSION,
    QCConfig,
    SampleForQC,
    SampleVerdict,
    describe_checks,
    run_checks,
)
from tuwen.quality.near_duplicates import find_near_duplicate_answers
from tuwen.storage import ObjectStore

log = logging.getLogger(__name__)

SUITE_NAME = "tuwen_samples"
NEAR_DUPLICATE_REASON = "near_duplicate_answer"


class QualityGateFailed(RuntimeError):
    """The batch is below the quality bar; the export must not happen. The message says why."""


def _date(value: Any, name: str) -> dt.date | None:
    if value in (None, ""):
        return None
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ValueError(f"param {name} must be a date like 2026-11-20, got {value!r}") from None


@dataclass(frozen=True)
class ReleaseScope:
    """Which samples a gate (and the release after it) looks at."""

    date_from: dt.date | None = None
    date_to: dt.date | None = None
    languages: tuple[str, ...] = ("zh",)
    task_types: tuple[str, ...] = TASK_TYPES
    min_pass_rate: float | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ReleaseScope:
        task_types = tuple(params.get("task_types") or TASK_TYPES)
        unknown = set(task_types) - set(TASK_TYPES)
        if unknown:
            raise ValueError(f"unknown task types {sorted(unknown)}; known: {', '.join(TASK_TYPES)}")
        rate = params.get("min_pass_rate")
        return cls(
            date_from=_date(params.get("date_from"), "date_from"),
            date_to=_date(params.get("date_to"), "date_to"),
            languages=tuple(params.get("languages") or ("zh",)),
            task_types=task_types,
            min_pass_rate=float(rate) if rate is not None else None,
        )

    def release_params(self, name: str, params: dict[str, Any]) -> ReleaseParams:
        cap = params.get("max_samples")
        return ReleaseParams(
            name=name, date_from=self.date_from, date_to=self.date_to, languages=self.languages,
            task_types=self.task_types, max_samples=int(cap) if cap else None,
            include_images=bool(params.get("include_images", True)),
        )

    @property
    def label(self) -> str:
        return f"{self.date_from or 'start'}..{self.date_to or 'end'}"

    def as_json(self) -> dict[str, Any]:
        return {
            "date_from": self.date_from.isoformat() if self.date_from else None,
            "date_to": self.date_to.isoformat() if self.date_to else None,
            "languages": list(self.languages), "task_types": list(self.task_types),
        }


@dataclass
class GateOutcome:
    qc_run_id: int
    n_samples: int
    n_passed: int
    pass_rate: float
    success: bool
    failed_reasons: dict[str, int]
    data_docs_key: str | None
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _scope_query(scope: ReleaseScope) -> Any:
    query = (
        select(Sample.id, Sample.task_type, Sample.language, Sample.conversations, Sample.rounds,
               Generation.finish_reason, Image.ocr_text)
        .join(Image, Image.id == Sample.image_id)
        .join(Generation, Generation.id == Sample.generation_id)
        .where(Image.status == "accepted", Sample.task_type.in_(scope.task_types),
               Sample.language.in_(scope.languages), Sample.qc_status != "taken_down")
        .order_by(Sample.id)
    )
    if scope.date_from:
        query = query.where(Image.crawl_date >= scope.date_from)
    if scope.date_to:
        query = query.where(Image.crawl_date <= scope.date_to)
    return query


def _iter_scope(settings: Settings, scope: ReleaseScope) -> Iterator[Any]:
    with get_engine(settings.database_url).connect() as conn:
        yield from conn.execution_options(stream_results=True, yield_per=5000).execute(_scope_query(scope))


def _write_verdicts(settings: Settings, qc_run_id: int, rows: list[tuple[str, str, list[str], dict]]) -> None:
    """COPY verdicts into a temp table and apply them with one UPDATE (fast at 600k samples)."""
    if not rows:
        return
    buffer = io.StringIO()
    for sample_id, status, reasons, metrics in rows:
        buffer.write("\t".join((sample_id, status, _copy_escape(json.dumps(reasons, ensure_ascii=False)),
                                _copy_escape(json.dumps(metrics)))) + "\n")
    buffer.seek(0)
    raw = get_engine(settings.database_url).raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute("CREATE TEMP TABLE qc_verdict (id text, status text, reasons jsonb, metrics jsonb) "
                        "ON COMMIT DROP")
            cur.copy_expert("COPY qc_verdict FROM STDIN", buffer)
            cur.execute(
                "UPDATE sample s SET qc_status = v.status, qc_reasons = v.reasons, qc_metrics = v.metrics, "
                "qc_run_id = %s FROM qc_verdict v WHERE s.id = v.id AND s.qc_status <> 'taken_down'",
                (qc_run_id,),
            )
        raw.commit()
    finally:
        raw.close()


def _publish_data_docs(settings: Settings, qc_run_id: int, docs_dir: Path) -> str | None:
    """Upload the Data Docs site to qc/<qc_run>/data-docs/ in the bucket; the key of its index page."""
    files = [p for p in docs_dir.rglob("*") if p.is_file()]
    if not files:
        return None
    store = ObjectStore(settings)
    prefix = f"qc/{qc_run_id}/data-docs/"
    for path in files:
        rel = path.relative_to(docs_dir).as_posix()
        store.put_file(prefix + rel, path, mimetypes.guess_type(rel)[0] or "application/octet-stream")
    return prefix + "index.html"


def _copy_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def run_quality_gate(settings: Settings, scope: ReleaseScope, *, config: QCConfig | None = None,
                     dag_id: str | None = None, run_id: str | None = None) -> GateOutcome:
    """Judge every sample in scope, record the qc_run, and raise QualityGateFailed below the bar."""
    from tuwen.quality.gate import GateConfig, build_gate_frame, run_gate  # GX is slow to import

    started = time.perf_counter()
    config = config or QCConfig()
    min_pass_rate = scope.min_pass_rate if scope.min_pass_rate is not None else settings.qc_min_pass_rate
    with session_scope(settings.database_url) as session:
        qc_run_id = session.execute(
            insert(QCRun).values(suite=SUITE_NAME, suite_version=f"checks-v{QC_CHECKS_VERSION}",
                                 scope=scope.as_json(), config={"min_pass_rate": min_pass_rate,
                                                                "checks": describe_checks(config)},
                                 dag_id=dag_id, run_id=run_id).returning(QCRun.id)
        ).scalar_one()

    records: list[tuple[str, str, SampleVerdict]] = []
    answers: list[tuple[str, str]] = []
    for row in _iter_scope(settings, scope):
        verdict = run_checks(SampleForQC(row.task_type, row.language, row.conversations, row.finish_reason,
                                         row.ocr_text), config)
        records.append((row.id, row.task_type, verdict))
        answers.append((row.id, "\n".join(t["value"] for t in row.conversations if t.get("from") == "gpt")))
    near_dups = find_near_duplicate_answers(answers) if answers else {}
    del answers
    for sample_id, _, verdict in records:
        if sample_id in near_dups:
            verdict.passed = False
            verdict.reasons.append(NEAR_DUPLICATE_REASON)
            verdict.metrics["near_duplicate_of"] = near_dups[sample_id]
    _write_verdicts(settings, qc_run_id, [
        (sample_id, "passed" if v.passed else "failed", v.reasons, v.metrics) for sample_id, _, v in records])

    n = len(records)
    n_passed = sum(1 for _, _, v in records if v.passed)
    failed_reasons: dict[str, int] = {}
    for _, _, verdict in records:
        for reason in verdict.reasons:
            failed_reasons[reason] = failed_reasons.get(reason, 0) + 1
    frame = build_gate_frame(records)
    del records
    with tempfile.TemporaryDirectory() as docs_dir:
        gate = run_gate(frame, GateConfig(min_pass_rate=min_pass_rate, task_mix=settings.task_mix),
                        partition=scope.label, data_docs_dir=docs_dir)
        data_docs_key = _publish_data_docs(settings, qc_run_id, Path(docs_dir))
    pass_rate = n_passed / n if n else 0.0
    success = bool(gate.success) and n > 0
    with session_scope(settings.database_url) as session:
        session.execute(update(QCRun).where(QCRun.id == qc_run_id).values(
            n_samples=n, n_passed=n_passed, n_failed=n - n_passed, pass_rate=pass_rate, success=success,
            data_docs_key=data_docs_key,
            results={"failed_reasons": failed_reasons, "check_pass_rates": gate.check_pass_rates,
                     "task_mix": gate.task_mix, "failed_expectations": gate.failed_expectations,
                     "skipped": gate.skipped, "gx": gate.validation_result},
        ))
    outcome = GateOutcome(qc_run_id, n, n_passed, pass_rate, success, failed_reasons, data_docs_key,
                          time.perf_counter() - started)
    log.info("quality gate qc_run %d: %d/%d passed (%.1f%%), minimum %.1f%%: %s", qc_run_id, n_passed, n,
             100 * pass_rate, 100 * min_pass_rate, "PASS" if success else "FAIL")
    if not success:
        why = ("no samples in scope" if n == 0 else
               f"pass rate {pass_rate:.1%} (minimum {min_pass_rate:.0%}); failed expectations: "
               f"{', '.join(gate.failed_expectations) or 'none'}")
        raise QualityGateFailed(f"quality gate failed for qc_run {qc_run_id}: {why}; top reasons: "
                                f"{sorted(failed_reasons.items(), key=lambda kv: -kv[1])[:5]}")
    return outcome
