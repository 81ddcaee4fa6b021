"""The curation stage's SQL: claiming images, recording verdicts, the Chinese-text policy's reads and
writes, and the counts the DAG, the demo, the QC report and the card show. Each statement takes the
Engine or Connection its entry point handed in."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Row, text

# Row locks keep concurrent curation workers (Airflow mapped tasks, Celery workers) off the claimed
# images until their transaction ends; a verdict under the current config version is never redone.
CLAIM = """
SELECT i.id, i.sha256, i.model_key, i.ocr_text, i.ocr_char_count, i.has_zh_text FROM image i
WHERE i.status = 'accepted' AND i.model_key IS NOT NULL {partition}
  AND NOT EXISTS (SELECT 1 FROM curation c WHERE c.image_id = i.id AND c.config_version = :version)
ORDER BY i.id
LIMIT :batch
FOR UPDATE SKIP LOCKED
"""

PENDING = """
SELECT count(*) FROM image i
WHERE i.status = 'accepted' AND i.model_key IS NOT NULL {partition}
  AND NOT EXISTS (SELECT 1 FROM curation c WHERE c.image_id = i.id AND c.config_version = :version)
"""

RECORD = text("""
INSERT INTO curation (image_id, status, reasons, scores, config_version, curated_at, dag_id, run_id, task_id,
                      map_index)
VALUES (:image_id, :status, CAST(:reasons AS jsonb), CAST(:scores AS jsonb), :version, now(), :dag_id, :run_id,
        :task_id, :map_index)
ON CONFLICT (image_id) DO UPDATE SET
  status = excluded.status, reasons = excluded.reasons, scores = excluded.scores,
  config_version = excluded.config_version, curated_at = excluded.curated_at, dag_id = excluded.dag_id,
  run_id = excluded.run_id, task_id = excluded.task_id, map_index = excluded.map_index
""")

# The policy's candidates: images the filters passed, whether the policy keeps or holds them now.
POLICY_LOCK = text("SELECT pg_advisory_xact_lock(hashtext('tuwen.curate.policy'), :day)")
POLICY_CANDIDATES = text("""
SELECT c.image_id, i.sha256, i.has_zh_text, c.status FROM curation c JOIN image i ON i.id = c.image_id
WHERE i.crawl_date = :day AND i.status = 'accepted'
  AND (c.status = 'curated' OR (c.status = 'held' AND c.reasons = '["zh_share"]'::jsonb))
""")
RELEASE = text("""UPDATE curation SET status = 'curated', reasons = '[]'::jsonb, curated_at = now()
                  WHERE image_id = ANY(:ids)""")
HOLD = text("""UPDATE curation SET status = 'held', reasons = '["zh_share"]'::jsonb, curated_at = now()
               WHERE image_id = ANY(:ids)""")

COUNTS = """
SELECT c.status, count(*) AS images, count(*) FILTER (WHERE i.has_zh_text) AS with_zh_text
FROM curation c JOIN image i ON i.id = c.image_id
WHERE i.status = 'accepted' {partition}
GROUP BY c.status
"""
REASON_COUNTS = """
SELECT r.reason, count(*) AS images
FROM curation c JOIN image i ON i.id = c.image_id, jsonb_array_elements_text(c.reasons) AS r(reason)
WHERE i.status = 'accepted' {partition}
GROUP BY r.reason ORDER BY r.reason
"""


def _partition(params: dict[str, Any], partition_date: dt.date | None, column: str = "i.crawl_date") -> str:
    if partition_date is None:
        return ""
    params["day"] = partition_date
    return f"AND {column} = :day"


def claim(conn: Connection, batch: int, version: str, partition_date: dt.date | None) -> list[Row[Any]]:
    """Lock and return up to `batch` accepted images without a verdict under `version`."""
    params: dict[str, Any] = {"batch": batch, "version": version}
    statement = text(CLAIM.format(partition=_partition(params, partition_date)))
    return list(conn.execute(statement, params).all())


def pending(engine: Engine, version: str, partition_date: dt.date | None) -> int:
    """Accepted images without a verdict under `version`."""
    params: dict[str, Any] = {"version": version}
    with engine.connect() as conn:
        return int(conn.execute(text(PENDING.format(partition=_partition(params, partition_date))), params)
                   .scalar_one())


def record(conn: Connection, verdicts: Sequence[dict[str, Any]], version: str, ids: dict[str, Any]) -> None:
    """Write verdicts (dicts with image_id, status, reasons, scores) under `version`, with the task's ids."""
    if not verdicts:
        return
    conn.execute(RECORD, [{"image_id": v["image_id"], "status": v["status"], "reasons": json.dumps(v["reasons"]),
                           "scores": json.dumps(v["scores"], ensure_ascii=False), "version": version,
                           "dag_id": ids.get("dag_id"), "run_id": ids.get("run_id"),
                           "task_id": ids.get("task_id"), "map_index": ids.get("map_index")}
                          for v in verdicts])


def policy_candidates(conn: Connection, day: dt.date) -> list[Row[Any]]:
    """Lock the day's policy (one writer at a time) and return its candidates."""
    conn.execute(POLICY_LOCK, {"day": day.toordinal()})
    return list(conn.execute(POLICY_CANDIDATES, {"day": day}).all())


def set_policy(conn: Connection, release: Sequence[int], hold: Sequence[int]) -> None:
    if release:
        conn.execute(RELEASE, {"ids": list(release)})
    if hold:
        conn.execute(HOLD, {"ids": list(hold)})


def counts(engine: Engine, partition_date: dt.date | None = None) -> dict[str, Any]:
    """{"by_status": {status: images}, "with_zh_text": {status: images}, "by_reason": {reason: images}}."""
    params: dict[str, Any] = {}
    where = _partition(params, partition_date)
    with engine.connect() as conn:
        rows = conn.execute(text(COUNTS.format(partition=where)), params).all()
        reasons = conn.execute(text(REASON_COUNTS.format(partition=where)), params).all()
    return {"by_status": {r.status: int(r.images) for r in rows},
            "with_zh_text": {r.status: int(r.with_zh_text) for r in rows},
            "by_reason": {r.reason: int(r.images) for r in reasons}}


def counts_between(engine: Engine, date_from: dt.date | str | None, date_to: dt.date | str | None) -> dict[str, int]:
    """Verdicts per status over crawl dates [date_from, date_to] (open ends: all), for the QC report."""
    where, params = [], {}
    if date_from:
        where.append("i.crawl_date >= :lo")
        params["lo"] = dt.date.fromisoformat(str(date_from)[:10])
    if date_to:
        where.append("i.crawl_date <= :hi")
        params["hi"] = dt.date.fromisoformat(str(date_to)[:10])
    sql = ("SELECT c.status, count(*) AS n FROM curation c JOIN image i ON i.id = c.image_id "
           + ("WHERE " + " AND ".join(where) if where else "") + " GROUP BY c.status ORDER BY c.status")
    with engine.connect() as conn:
        return {r.status: int(r.n) for r in conn.execute(text(sql), params)}
