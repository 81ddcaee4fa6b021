"""The quality stage's SQL, in one place, over the engine its entry point hands in.

Two ways in, one per purpose: the qc_run row and the report's few queries are SQLAlchemy Core on the
engine; the bulk paths (reading the scope in id ranges, writing every verdict back, the report's
metric columns) are plain SQL on one DBAPI connection borrowed from the same engine's pool, since at
seed size a Python object per row or a statement per sample is what those paths cannot afford.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import Engine, Row, insert, text, update

from tuwen.db.models import QCRun
from tuwen.quality.near_duplicates import NEAR_DUPLICATE_REASON
from tuwen.quality.scope import ReleaseScope

# --- the gate's run --------------------------------------------------------------------------------


def scope_sql(scope: ReleaseScope) -> tuple[str, dict[str, Any]]:
    """Only the columns the checks read; no ORDER BY (the near-duplicate pass orders by id itself)."""
    sql = ("SELECT s.id, s.task_type, s.language, s.conversations, g.finish_reason, i.ocr_text "
           "FROM sample s JOIN image i ON i.id = s.image_id JOIN generation g ON g.id = s.generation_id "
           "WHERE i.status = 'accepted' AND s.qc_status <> 'taken_down' "
           "AND s.task_type = ANY(%(task_types)s) AND s.language = ANY(%(languages)s)")
    params: dict[str, Any] = {"task_types": list(scope.task_types), "languages": list(scope.languages)}
    if scope.date_from:
        sql += " AND i.crawl_date >= %(date_from)s"
        params["date_from"] = scope.date_from
    if scope.date_to:
        sql += " AND i.crawl_date <= %(date_to)s"
        params["date_to"] = scope.date_to
    return sql, params


def scope_ids(engine: Engine, scope: ReleaseScope) -> list[str]:
    """The ids of the samples in scope, in id order."""
    sql, params = scope_sql(scope)
    raw = engine.raw_connection()
    try:
        with closing(raw.cursor()) as cur:
            cur.execute("SELECT s.id " + sql[sql.index("FROM "):] + " ORDER BY s.id", params)
            ids = [row[0] for row in cur.fetchall()]
        raw.commit()
    finally:
        raw.close()
    return ids


# The latest succeeded judgement of each sample in one id range (the faithfulness judge, check
# faithfulness.judge). DISTINCT ON over the range alone — the planner does not carry s.id's range into
# a subquery, so it is written there — reads judgement.sample_id's index once per chunk: no cost without
# judgements, one range scan with them, instead of a probe per sample.
LATEST_JUDGEMENT_SQL = (
    "SELECT DISTINCT ON (sample_id) sample_id, n_contradicted FROM judgement "
    "WHERE status = 'succeeded' AND sample_id BETWEEN %(lo)s AND %(hi)s "
    "ORDER BY sample_id, completed_at DESC NULLS LAST, id DESC"
)


def scope_rows(engine: Engine, scope: ReleaseScope, lo: str, hi: str) -> Sequence[tuple[Any, ...]]:
    """The check inputs of the samples in scope with lo <= id <= hi: (id, task_type, language,
    conversations, finish_reason, ocr_text, judge_contradicted) tuples, unordered; judge_contradicted
    is the latest succeeded judgement's n_contradicted, None when the sample has none."""
    sql, params = scope_sql(scope)
    select, _, rest = sql.partition(" FROM ")
    joins, _, where = rest.partition(" WHERE ")
    sql = (f"{select}, j.n_contradicted FROM {joins} LEFT JOIN ({LATEST_JUDGEMENT_SQL}) j ON j.sample_id = s.id "
           f"WHERE {where}")
    raw = engine.raw_connection()
    try:
        with closing(raw.cursor()) as cur:
            cur.execute(sql + " AND s.id BETWEEN %(lo)s AND %(hi)s", {**params, "lo": lo, "hi": hi})
            rows = cur.fetchall()
        raw.commit()
    finally:
        raw.close()
    return rows


def insert_qc_run(engine: Engine, *, suite: str, suite_version: str, scope: dict[str, Any],
                  config: dict[str, Any], dag_id: str | None, run_id: str | None) -> int:
    """Open a qc_run row; returns its id."""
    with engine.begin() as conn:
        return int(conn.execute(
            insert(QCRun).values(suite=suite, suite_version=suite_version, scope=scope, config=config,
                                 dag_id=dag_id, run_id=run_id).returning(QCRun.id)
        ).scalar_one())


def write_verdicts(engine: Engine, qc_run_id: int, copy_file: IO[str], near_dups: dict[str, str]) -> None:
    """COPY the verdicts (tab-separated id, reasons, metrics lines) into a temp table, mark
    near-duplicates (id -> kept id) there, apply everything with one UPDATE. Taken-down samples keep
    their status even if a takedown landed while the gate ran."""
    copy_file.seek(0)
    raw = engine.raw_connection()
    try:
        with closing(raw.cursor()) as cur:
            cur.execute("CREATE TEMP TABLE qc_verdict (id text, reasons jsonb, metrics jsonb) "
                        "ON COMMIT DROP")
            cur.copy_expert("COPY qc_verdict (id, reasons, metrics) FROM STDIN", copy_file, size=1 << 20)
            if near_dups:
                cur.execute(
                    "UPDATE qc_verdict v SET reasons = v.reasons || %(reason)s::jsonb, "
                    "metrics = v.metrics || jsonb_build_object('near_duplicate_of', d.kept) "
                    "FROM unnest(%(ids)s::text[], %(kept)s::text[]) AS d(id, kept) WHERE v.id = d.id",
                    {"reason": json.dumps([NEAR_DUPLICATE_REASON]), "ids": list(near_dups),
                     "kept": list(near_dups.values())})
            cur.execute("ANALYZE qc_verdict")
            cur.execute(
                "UPDATE sample s SET qc_status = CASE WHEN v.reasons = '[]'::jsonb THEN 'passed' ELSE 'failed' END, "
                "qc_reasons = v.reasons, qc_metrics = v.metrics, qc_run_id = %s "
                "FROM qc_verdict v WHERE s.id = v.id AND s.qc_status <> 'taken_down'",
                (qc_run_id,),
            )
        raw.commit()
    finally:
        raw.close()


def finish_qc_run(engine: Engine, qc_run_id: int, *, n_samples: int, n_passed: int, pass_rate: float,
                  success: bool, data_docs_key: str | None, results: dict[str, Any]) -> None:
    """Record the gate's numbers and decision on its qc_run row."""
    with engine.begin() as conn:
        conn.execute(update(QCRun).where(QCRun.id == qc_run_id).values(
            n_samples=n_samples, n_passed=n_passed, n_failed=n_samples - n_passed, pass_rate=pass_rate,
            success=success, data_docs_key=data_docs_key, results=results,
        ))


# --- the report ----------------------------------------------------------------------------------


@dataclass
class ReportRows:
    """What the QC report of one qc_run reads, as rows with named columns."""

    run: Row[Any]  # the qc_run row
    history: Sequence[Row[Any]]  # id, created_at, pass_rate, results: earlier runs of the suite, by id
    by_date: Sequence[Row[Any]]  # crawl_date, task_type, n, passed
    examples: Sequence[Row[Any]]  # one failed sample per reason: reason, then the sample columns
    passed: Sequence[Row[Any]]  # a deterministic random page of passed samples
    by_task_reason: Sequence[Row[Any]] = ()  # task_type, reason, n: failed samples per task and check


def report_rows(engine: Engine, qc_run_id: int, *, n_history: int, seed: int, n_passed: int) -> ReportRows:
    """The rows the report of qc_run `qc_run_id` renders, read in one transaction. Sample rows carry
    id, task_type, conversations, qc_reasons, qc_metrics and their image's sha256, model_key, model_mime."""
    with engine.connect() as conn:
        run = conn.execute(text("SELECT * FROM qc_run WHERE id = :id"), {"id": qc_run_id}).one()
        history = conn.execute(text(
            "SELECT id, created_at, pass_rate, results FROM (SELECT id, created_at, pass_rate, results FROM qc_run "
            "WHERE suite = :suite AND id <= :id AND n_samples > 0 ORDER BY id DESC LIMIT :n) h ORDER BY id"),
            {"suite": run.suite, "id": qc_run_id, "n": n_history}).all()
        by_date = conn.execute(text(
            "SELECT i.crawl_date, s.task_type, count(*) AS n, count(*) FILTER (WHERE s.qc_status = 'passed') AS passed "
            "FROM sample s JOIN image i ON i.id = s.image_id WHERE s.qc_run_id = :id GROUP BY 1, 2"),
            {"id": qc_run_id}).all()
        # One example per reason: a deterministic pick (md5 of the id), never "the first row on disk".
        examples = conn.execute(text(
            "SELECT DISTINCT ON (r.reason) r.reason, s.id, s.task_type, s.conversations, s.qc_reasons, s.qc_metrics, "
            "i.sha256, i.model_key, i.model_mime FROM sample s JOIN image i ON i.id = s.image_id, "
            "jsonb_array_elements_text(s.qc_reasons) AS r(reason) "
            "WHERE s.qc_run_id = :id AND s.qc_status = 'failed' ORDER BY r.reason, md5(s.id)"),
            {"id": qc_run_id}).all()
        passed = conn.execute(text(
            "SELECT s.id, s.task_type, s.conversations, s.qc_reasons, s.qc_metrics, i.sha256, i.model_key, "
            "i.model_mime FROM sample s JOIN image i ON i.id = s.image_id "
            "WHERE s.qc_run_id = :id AND s.qc_status = 'passed' ORDER BY md5(s.id || :seed) LIMIT :n"),
            {"id": qc_run_id, "seed": str(seed), "n": n_passed}).all()
        # Per task and check: a rule that fires on one task only (a floor, a truncation marker) shows
        # here, not in the overall counts. Failed samples only, a few percent of the run.
        by_task_reason = conn.execute(text(
            "SELECT s.task_type, r.reason, count(*) AS n FROM sample s, jsonb_array_elements_text(s.qc_reasons) "
            "AS r(reason) WHERE s.qc_run_id = :id AND s.qc_status = 'failed' GROUP BY 1, 2"),
            {"id": qc_run_id}).all()
    return ReportRows(run, history, by_date, examples, passed, by_task_reason)


def metrics_csv(engine: Engine, qc_run_id: int) -> str:
    """task_type, qc_status, answer_chars, rounds, cjk_ratio, ocr_coverage of every sample the run
    labelled, as CSV text (empty fields for missing metrics). COPY out: a few MB at seed size, instead
    of a Python tuple per row."""
    sql = (f"COPY (SELECT task_type, qc_status, (qc_metrics->>'answer_chars')::real, "
           f"(qc_metrics->>'rounds')::real, (qc_metrics->>'cjk_ratio')::real, "
           f"(qc_metrics->>'ocr_coverage')::real FROM sample WHERE qc_run_id = {int(qc_run_id)}) "
           "TO STDOUT WITH (FORMAT csv)")
    buffer = io.BytesIO()
    raw = engine.raw_connection()
    try:
        with closing(raw.cursor()) as cur:
            cur.copy_expert(sql, buffer)
        raw.commit()
    finally:
        raw.close()
    return buffer.getvalue().decode("utf-8")


def record_report_key(engine: Engine, qc_run_id: int, key: str) -> None:
    """qc_run.results["report_key"] = key."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE qc_run SET results = results || jsonb_build_object('report_key', CAST(:key AS text)) "
                          "WHERE id = :id"), {"key": key, "id": qc_run_id})


# --- the report's faithfulness section ---------------------------------------------------------------


@dataclass
class FaithfulnessRows:
    """What the faithfulness judge said about the samples one qc_run labelled (check faithfulness.judge)."""

    n_samples: int
    n_judged: int  # samples the gate found a succeeded judgement for
    n_contradicted: int  # judged samples that failed faithfulness.judge
    unjudged: Sequence[Row[Any]]  # reason, n: why the others had no verdict (their latest judgement's
    # error_type or status; "never asked" without any; "judged after this run" for a late verdict)
    examples: Sequence[Row[Any]]  # id, task_type, model, statements: samples that failed it, md5 order


def faithfulness_rows(engine: Engine, qc_run_id: int, *, n_examples: int) -> FaithfulnessRows | None:
    """The faithfulness section's rows, or None when the judgement table is empty (the judge never ran:
    one index probe, so a gate without the judge pays nothing for the section)."""
    with engine.connect() as conn:
        if not conn.execute(text("SELECT EXISTS (SELECT 1 FROM judgement)")).scalar_one():
            return None
        counts = conn.execute(text(
            "SELECT count(*) AS n, count(*) FILTER (WHERE (s.qc_metrics->>'judged')::real = 1) AS judged, "
            "count(*) FILTER (WHERE s.qc_reasons ? 'faithfulness.judge') AS contradicted "
            "FROM sample s WHERE s.qc_run_id = :id"), {"id": qc_run_id}).one()
        unjudged = conn.execute(text(
            "SELECT CASE WHEN l.status IS NULL THEN 'never asked' WHEN l.status = 'succeeded' "
            "THEN 'judged after this run' ELSE coalesce(l.error_type, l.status) END AS reason, count(*) AS n "
            "FROM sample s LEFT JOIN LATERAL (SELECT j.status, j.error_type FROM judgement j WHERE j.sample_id = s.id "
            "ORDER BY j.completed_at DESC NULLS LAST, j.id DESC LIMIT 1) l ON true "
            "WHERE s.qc_run_id = :id AND coalesce((s.qc_metrics->>'judged')::real, 0) <> 1 GROUP BY 1 ORDER BY 2 DESC, 1"),
            {"id": qc_run_id}).all()
        examples = conn.execute(text(
            "SELECT s.id, s.task_type, l.model, l.statements FROM sample s JOIN LATERAL (SELECT j.model, j.statements "
            "FROM judgement j WHERE j.sample_id = s.id AND j.status = 'succeeded' "
            "ORDER BY j.completed_at DESC NULLS LAST, j.id DESC LIMIT 1) l ON true "
            "WHERE s.qc_run_id = :id AND s.qc_reasons ? 'faithfulness.judge' ORDER BY md5(s.id) LIMIT :n"),
            {"id": qc_run_id, "n": n_examples}).all()
    return FaithfulnessRows(counts.n, counts.judged, counts.contradicted, unjudged, examples)
