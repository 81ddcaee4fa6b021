"""The crawl stage's SQL (outside the crawler process): finding a crawl's run row, closing it, OCR claims.

The crawler process's own writes (crawl_run, image, image_source) are in
crawler/tuwen_crawler/lineage.py; the statements here are what `tuwen.crawl.run` and
`tuwen.crawl.ocr` need around it. Each takes the Engine or Connection its entry point handed in.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, Engine, Row, text

FIND_RUN = text("""SELECT id, status, counts, stats, error FROM crawl_run
                   WHERE settings->>'crawl_key' = :key ORDER BY id DESC LIMIT 1""")

MARK_RUN_FAILED = text("""UPDATE crawl_run SET status = 'failed', error = :error, finished_at = now()
                          WHERE id = :id AND status = 'running'""")

# Row locks keep concurrent OCR workers off the claimed images until their transaction ends.
CLAIM_FOR_OCR = """
SELECT id, model_key FROM image
WHERE status = 'accepted' AND ocr_text IS NULL AND model_key IS NOT NULL
  {partition}
ORDER BY id
LIMIT :batch
FOR UPDATE SKIP LOCKED
"""

STORE_OCR = text("UPDATE image SET ocr_text = :text, ocr_char_count = :n, has_zh_text = :zh WHERE id = :id")


def find_run(engine: Engine, crawl_key: str) -> Row[Any] | None:
    """The crawl_run row the spider wrote for this crawl_key (None if it never got that far)."""
    with engine.connect() as conn:
        return conn.execute(FIND_RUN, {"key": crawl_key}).first()


def mark_run_failed(engine: Engine, crawl_run_id: int, error: str) -> None:
    """Close a run the crawler left 'running' (killed, timed out) as failed, with why."""
    with engine.begin() as conn:
        conn.execute(MARK_RUN_FAILED, {"id": crawl_run_id, "error": error})


def claim_for_ocr(conn: Connection, batch: int, partition_date: dt.date | None) -> list[Row[Any]]:
    """Lock and return up to `batch` accepted images without OCR text (optionally of one crawl date)."""
    params: dict[str, Any] = {"batch": batch}
    if partition_date:
        params["partition"] = partition_date
    claim = text(CLAIM_FOR_OCR.format(partition="AND crawl_date = :partition" if partition_date else ""))
    return list(conn.execute(claim, params).all())


def store_ocr(conn: Connection, updates: list[dict[str, Any]]) -> None:
    """Write OCR results: dicts with id, text, n (CJK characters), zh (has Chinese text)."""
    conn.execute(STORE_OCR, updates)
