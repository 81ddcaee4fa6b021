"""The judge stage's SQL, in one place, over the engine its entry point hands in.

As in `tuwen.synthesis.lineage`: planning and batch set-up are a few set-wise statements in
SQLAlchemy Core; verdicts are stored one transaction each, in plain SQL on one borrowed DBAPI
connection, on the batch's writer thread. A `judgement` row is created `pending` (ON CONFLICT on
the request key: a rerun finds the row it made before) and ends `succeeded`, `unparseable` (both
paid for: never asked again under the same key) or `failed` (asked again by the next run).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg2
from sqlalchemy import Engine, Row, select, update

from tuwen.db.models import Image, Judgement, Sample
from tuwen.domain import Partition
from tuwen.synthesis.lineage import OneConnectionWriter, storable_json, storable_text, store_failure_sql

DONE_STATUSES = ("succeeded", "unparseable")  # paid for: never requested again under the same key

# Samples worth judging: of accepted images (not taken down), not taken down themselves.
_JUDGEABLE = (Image.status == "accepted", Sample.qc_status != "taken_down")


def partition_samples(engine: Engine, partition: Partition) -> list[Row]:
    """(id, language) of the judgeable samples of the partition's crawl dates, in id order."""
    with engine.connect() as conn:
        return list(conn.execute(
            select(Sample.id, Sample.language)
            .join(Image, Image.id == Sample.image_id)
            .where(Image.crawl_date >= partition.start, Image.crawl_date < partition.end, *_JUDGEABLE)
            .order_by(Sample.id)
        ))


def judged_keys(engine: Engine, keys: Iterable[str]) -> set[str]:
    """The keys among these whose verdict is paid for and stored."""
    keys = list(keys)
    if not keys:
        return set()
    with engine.connect() as conn:
        return set(conn.scalars(
            select(Judgement.request_key).where(Judgement.request_key.in_(keys),
                                                Judgement.status.in_(DONE_STATUSES))
        ))


def batch_samples(engine: Engine, sample_ids: Sequence[str]) -> list[Row]:
    """The batch's judgeable samples with what a judge request needs (conversations, the image), by id."""
    with engine.connect() as conn:
        return list(conn.execute(
            select(Sample.id, Sample.language, Sample.conversations, Image.sha256, Image.model_key,
                   Image.model_mime)
            .join(Image, Image.id == Sample.image_id)
            .where(Sample.id.in_(list(sample_ids)), *_JUDGEABLE)
            .order_by(Sample.id)
        ))


def fail_unfinished(engine: Engine, judgement_ids: Sequence[int], error_type: str, error: str) -> int:
    """Record why these judgements got no answer (the endpoint went down); a stored verdict is kept."""
    if not judgement_ids:
        return 0
    with engine.begin() as conn:
        return conn.execute(
            update(Judgement)
            .where(Judgement.id.in_(list(judgement_ids)), Judgement.status.not_in(DONE_STATUSES))
            .values(status="failed", error_type=error_type, error=storable_text(error))
        ).rowcount


_STORE_VERDICT = """
UPDATE judgement SET attempts = attempts + %(attempts)s, latency_ms = %(latency_ms)s, dag_id = %(dag_id)s,
  run_id = %(run_id)s, task_id = %(task_id)s, map_index = %(map_index)s, completed_at = now(),
  raw_text = %(raw_text)s, finish_reason = %(finish_reason)s, prompt_tokens = %(prompt_tokens)s,
  completion_tokens = %(completion_tokens)s, status = %(status)s, n_supported = %(n_supported)s,
  n_contradicted = %(n_contradicted)s, n_unverifiable = %(n_unverifiable)s, statements = %(statements)s,
  error_type = %(error_type)s, error = %(error)s
WHERE id = %(id)s"""
_STORE_FAILURE = store_failure_sql("judgement")
# An answer whose row could not be written even escaped: paid for, so done, with the reason.
_STORE_UNSTORABLE = """
UPDATE judgement SET attempts = attempts + %(attempts)s, completed_at = now(), status = 'unparseable',
  error_type = 'unstorable', error = %(error)s, statements = NULL, raw_text = NULL
WHERE id = %(id)s"""

_TEXT = ("raw_text", "finish_reason", "error_type", "error", "dag_id", "run_id", "task_id")


class JudgementStore(OneConnectionWriter):
    """Writes one verdict or failure per transaction (a verdict in one round trip); used from the batch's writer
    thread only."""

    def store_verdict(self, values: dict[str, Any]) -> bool:
        """A judge answer (status and counts set by the caller); False when it was stored as unstorable."""
        params = {k: storable_text(v) if k in _TEXT else v for k, v in values.items()}
        params["statements"] = storable_json(values.get("statements"))
        try:
            self._atomic(_STORE_VERDICT, params)
            return True
        except (psycopg2.DataError, psycopg2.IntegrityError, ValueError) as exc:
            reason = storable_text(f"{type(exc).__name__}: {str(exc)[:500]}")
            self._transaction(lambda cur: cur.execute(_STORE_UNSTORABLE, {**params, "error": reason}))
            return False

    def store_failure(self, values: dict[str, Any]) -> None:
        """A request that failed for good (or never went out); a stored verdict is left as it is."""
        params = {k: storable_text(v) if k in _TEXT else v for k, v in values.items()}
        self._transaction(lambda cur: cur.execute(_STORE_FAILURE, params))
