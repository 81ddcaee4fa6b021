"""The quality gate over the lineage database: judge every sample in scope, record a qc_run, decide.

Per-sample verdicts come from `tuwen.quality.checks` (plus cross-sample near-duplicate answers);
the batch decision is a Great Expectations suite (`tuwen.quality.gate`). Verdicts are written back
to `sample` in bulk (COPY into a temp table, one UPDATE), so re-running the gate with other
thresholds re-labels samples without regenerating anything. Every run also renders the QC report
(`tuwen.quality.report`) to qc/<qc_run>/report/ in the bucket, pass or fail: a failed gate is exactly
when people need to look.

Sized for a seed-sized release (641,868 samples, see docs/BENCHMARKS.md): the scope is read in id
ranges with only the columns the checks read, judged by worker processes while this one computes
MinHash signatures; per sample only its id, task code, rounds and a bitmask of failed checks stay in
memory (numpy arrays), the verdict rows go to a temporary file for COPY, and answers are dropped as
soon as their signature is taken.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import mimetypes
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Engine

from tuwen.db.session import get_engine
from tuwen.domain import TASK_TYPES
from tuwen.quality import queries
from tuwen.quality.checks import (
    CHECKS,
    QC_CHECKS_VERSION,
    QCConfig,
    SampleForQC,
    describe_checks,
    run_checks,
)
from tuwen.quality.gate import SUITE_NAME
from tuwen.quality.near_duplicates import NEAR_DUPLICATE_REASON, find_near_duplicate_answers
from tuwen.quality.scope import ReleaseScope
from tuwen.resources import Resources
from tuwen.storage import ObjectStore

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# Bit i of a sample's failure mask is REASONS[i]: the per-sample checks in registry order, then the
# cross-sample near-duplicate rule. A mask of 0 is a pass.
REASONS: tuple[str, ...] = (*CHECKS, NEAR_DUPLICATE_REASON)
_BIT = {name: 1 << i for i, name in enumerate(REASONS)}
# Samples per unit of work: ~25 MB of rows, a few seconds of checks; 40 units at seed size.
_CHUNK_ROWS = 16_384
_MAX_WORKERS = 4


class QualityGateFailed(RuntimeError):
    """The batch is below the quality bar; the export must not happen. The message says why."""


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
    report_key: str | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Verdicts:
    """The gate's per-sample memory: parallel arrays, ~20 bytes a sample plus the id string."""

    ids: list[str]
    task_codes: np.ndarray  # int8, index into TASK_TYPES
    rounds: np.ndarray  # int16
    masks: np.ndarray  # int64, bit i = REASONS[i] failed

    @property
    def passed(self) -> np.ndarray:
        return self.masks == 0

    def reason_counts(self) -> dict[str, int]:
        counts = {name: int(np.count_nonzero(self.masks & bit)) for name, bit in _BIT.items()}
        return {name: n for name, n in counts.items() if n}


def _chunk_bounds(engine: Engine, scope: ReleaseScope, chunk_rows: int) -> list[tuple[str, str]]:
    """(first id, last id) of consecutive id ranges of about chunk_rows samples of the scope. Only the
    ids are read here; each chunk's rows are then read by whoever judges it."""
    ids = queries.scope_ids(engine, scope)
    return [(ids[i], ids[min(i + chunk_rows, len(ids)) - 1]) for i in range(0, len(ids), chunk_rows)]


@dataclass
class _ChunkVerdicts:
    """One chunk's verdicts, compact enough to pickle between processes."""

    ids: list[str]
    task_codes: bytes  # int8
    rounds: bytes  # int16
    masks: bytes  # int64
    copy_text: str  # COPY lines: id, reasons, metrics
    answers: list[tuple[str, str]]  # (id, answer text) of the samples that passed their checks


def _judge_chunk(database: Engine | str, scope: ReleaseScope, config: QCConfig,
                 bounds: tuple[str, str]) -> _ChunkVerdicts:
    """Read one id range of the scope and run the checks on it. In-process `database` is the handed-in
    engine; a spawned worker gets its URL instead, since an engine's connections cannot cross processes."""
    engine = get_engine(database) if isinstance(database, str) else database
    rows = queries.scope_rows(engine, scope, *bounds)
    ids: list[str] = []
    task_codes: list[int] = []
    rounds: list[int] = []
    masks: list[int] = []
    lines: list[str] = []
    answers: list[tuple[str, str]] = []
    task_index = {task: i for i, task in enumerate(TASK_TYPES)}
    bits = _BIT
    dumps = json.dumps
    for sample_id, task_type, language, conversations, finish_reason, ocr_text, judge_contradicted in rows:
        verdict = run_checks(
            SampleForQC(task_type, language, conversations, finish_reason, ocr_text, judge_contradicted), config)
        mask = 0
        for reason in verdict.reasons:
            mask |= bits[reason]
        ids.append(sample_id)
        task_codes.append(task_index[task_type])
        rounds.append(int(verdict.metrics.get("rounds", 0)))
        masks.append(mask)
        lines.append(f"{sample_id}\t{_copy_escape(dumps(verdict.reasons, ensure_ascii=False))}\t"
                     f"{_copy_escape(dumps(verdict.metrics))}\n")
        # Only samples that passed their own checks compete for an answer: were a refusal with the
        # smaller id the kept one of a pair, its good near-copy would be dropped along with it.
        if not mask:
            answers.append((sample_id, "\n".join(t["value"] for t in conversations if t["from"] == "gpt")))
    return _ChunkVerdicts(ids, np.array(task_codes, dtype=np.int8).tobytes(),
                          np.array(rounds, dtype=np.int16).tobytes(), np.array(masks, dtype=np.int64).tobytes(),
                          "".join(lines), answers)


def _judge_scope(engine: Engine, scope: ReleaseScope, config: QCConfig, out: IO[str],
                 workers: int | None = None) -> tuple[_Verdicts, dict[str, str]]:
    """Run the checks over the scope, writing the COPY lines to `out`, and find near-duplicate
    answers among the samples that passed them.

    The scope is cut into id ranges; worker processes (spawned: no inherited connections or threads)
    read and judge ranges while this process feeds each finished range's answers to the MinHash pass
    and drops them, so checks and MinHash run on different cores and no answer outlives its signature.
    Small scopes are judged in-process: starting workers costs more than it saves."""
    bounds = _chunk_bounds(engine, scope, _CHUNK_ROWS)
    if workers is None:
        workers = min(os.cpu_count() or 1, _MAX_WORKERS) if len(bounds) > 2 else 0
    ids: list[str] = []
    parts: dict[str, list[bytes]] = {"task_codes": [], "rounds": [], "masks": []}

    def chunks() -> Iterator[_ChunkVerdicts]:
        if not workers:
            yield from (_judge_chunk(engine, scope, config, b) for b in bounds)
            return
        url = engine.url.render_as_string(hide_password=False)
        jobs = ((url, scope, config, b) for b in bounds)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            # map() submits every range up front; results come back in order, one range at a time.
            yield from pool.map(_judge_chunk, *zip(*jobs, strict=True))

    def answers() -> Iterator[tuple[str, str]]:
        for chunk in chunks():
            ids.extend(chunk.ids)
            for name in parts:
                parts[name].append(getattr(chunk, name))
            out.write(chunk.copy_text)
            yield from chunk.answers

    near_dups = find_near_duplicate_answers(answers())
    verdicts = _Verdicts(ids, np.frombuffer(b"".join(parts["task_codes"]), dtype=np.int8),
                         np.frombuffer(b"".join(parts["rounds"]), dtype=np.int16),
                         np.frombuffer(b"".join(parts["masks"]), dtype=np.int64).copy())
    if near_dups:
        dup_rows = [row for row, sample_id in enumerate(ids) if sample_id in near_dups]
        verdicts.masks[dup_rows] |= _BIT[NEAR_DUPLICATE_REASON]
    return verdicts, near_dups


def gate_frame(verdicts: _Verdicts) -> pd.DataFrame:
    """The gate frame `tuwen.quality.gate.build_gate_frame` would build, from the arrays directly
    (building it from 641,868 SampleVerdict objects is what the arrays avoid)."""
    import pandas as pd

    from tuwen.quality.gate import check_column

    def ok(name: str) -> np.ndarray:
        return (verdicts.masks & _BIT[name]) == 0

    columns: dict[str, Any] = {
        "sample_id": verdicts.ids,
        "task_type": np.array(TASK_TYPES, dtype=object)[verdicts.task_codes],
        "rounds": verdicts.rounds.astype(np.int64),
        "roles_ok": ok("structure.roles"),
        "has_single_image_in_first_turn": ok("structure.image_placeholder"),
        "passed": verdicts.passed,
    }
    columns.update({check_column(name): ok(name) for name in CHECKS})
    return pd.DataFrame(columns)


def _publish_data_docs(store: ObjectStore, qc_run_id: int, docs_dir: Path) -> str | None:
    """Upload the Data Docs site to qc/<qc_run>/data-docs/ in the bucket; the key of its index page."""
    files = [p for p in docs_dir.rglob("*") if p.is_file()]
    if not files:
        return None
    prefix = f"qc/{qc_run_id}/data-docs/"
    for path in files:
        rel = path.relative_to(docs_dir).as_posix()
        store.put_file(prefix + rel, path, mimetypes.guess_type(rel)[0] or "application/octet-stream")
    return prefix + "index.html"


def _copy_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def run_quality_gate(resources: Resources, scope: ReleaseScope, *, config: QCConfig | None = None,
                     dag_id: str | None = None, run_id: str | None = None,
                     report_dir: Path | None = None, report: bool = True,
                     workers: int | None = None) -> GateOutcome:
    """Judge every sample in scope, record the qc_run, render the QC report, and raise
    QualityGateFailed below the bar.

    The report goes to qc/<qc_run_id>/report/ in the bucket and, with `report_dir`, stays there on
    disk too; its index key is GateOutcome.report_key and qc_run.results["report_key"]. `workers`:
    processes running the checks (None: one per core, up to 4, when the scope is large; 0: in-process)."""
    from tuwen.quality.gate import GateConfig, run_gate  # GX is slow to import

    started = time.perf_counter()
    timings: dict[str, float] = {}
    config = config or QCConfig()
    settings, engine = resources.settings, resources.engine
    min_pass_rate = scope.min_pass_rate if scope.min_pass_rate is not None else settings.qc_min_pass_rate
    qc_run_id = queries.insert_qc_run(
        engine, suite=SUITE_NAME, suite_version=f"checks-v{QC_CHECKS_VERSION}", scope=scope.as_json(),
        config={"min_pass_rate": min_pass_rate, "checks": describe_checks(config)}, dag_id=dag_id, run_id=run_id)

    # The COPY lines (~250 bytes a sample) go to disk, not memory: 160 MB at seed size.
    with tempfile.TemporaryFile("w+", encoding="utf-8") as copy_file:
        verdicts, near_dups = _judge_scope(engine, scope, config, copy_file, workers)
        timings["read_check_minhash_s"] = time.perf_counter() - started
        mark = time.perf_counter()
        queries.write_verdicts(engine, qc_run_id, copy_file, near_dups)
        timings["write_verdicts_s"] = time.perf_counter() - mark

    n = len(verdicts.ids)
    n_passed = int(np.count_nonzero(verdicts.passed))
    failed_reasons = verdicts.reason_counts()
    mark = time.perf_counter()
    frame = gate_frame(verdicts)
    del verdicts
    with tempfile.TemporaryDirectory() as docs_dir:
        gate = run_gate(frame, GateConfig(min_pass_rate=min_pass_rate, task_mix=settings.task_mix),
                        partition=scope.label, data_docs_dir=docs_dir)
        del frame
        data_docs_key = _publish_data_docs(resources.store, qc_run_id, Path(docs_dir))
    timings["gx_s"] = time.perf_counter() - mark
    pass_rate = n_passed / n if n else 0.0
    success = bool(gate.success) and n > 0
    results = {"failed_reasons": failed_reasons, "check_pass_rates": gate.check_pass_rates,
               "task_mix": gate.task_mix, "failed_expectations": gate.failed_expectations,
               "skipped": gate.skipped, "gx": gate.validation_result}
    queries.finish_qc_run(engine, qc_run_id, n_samples=n, n_passed=n_passed, pass_rate=pass_rate,
                          success=success, data_docs_key=data_docs_key, results=results)
    report_key = None
    if report:
        from tuwen.quality.report import write_qc_report

        mark = time.perf_counter()
        report_key = write_qc_report(engine, resources.store, qc_run_id, report_dir)
        timings["report_s"] = time.perf_counter() - mark
    outcome = GateOutcome(qc_run_id, n, n_passed, pass_rate, success, failed_reasons, data_docs_key,
                          time.perf_counter() - started, report_key, timings)
    log.info("quality gate qc_run %d: %d/%d passed (%.1f%%), minimum %.1f%%: %s; report %s; %s", qc_run_id,
             n_passed, n, 100 * pass_rate, 100 * min_pass_rate, "PASS" if success else "FAIL", report_key,
             {k: round(v, 1) for k, v in timings.items()})
    if not success:
        why = ("no samples in scope" if n == 0 else
               f"pass rate {pass_rate:.1%} (minimum {min_pass_rate:.0%}); failed expectations: "
               f"{', '.join(gate.failed_expectations) or 'none'}")
        raise QualityGateFailed(f"quality gate failed for qc_run {qc_run_id}: {why}; top reasons: "
                                f"{sorted(failed_reasons.items(), key=lambda kv: -kv[1])[:5]}; "
                                f"report: s3 {report_key}")
    return outcome
