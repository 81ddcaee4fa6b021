"""OCR of accepted images (RapidOCR: PP-OCRv4 det/rec ONNX models shipped inside the wheel, CPU, offline).

The text grounds the quality checks (a description of a sign should quote the sign) and lets analysts
find images with Chinese text. It runs on the model-ready copy, the pixels the VLM sees.

    tuwen ocr [--partition-date 2024-05-01] [--limit 500] [--threads 1]

`ocr_pending` claims images with `FOR UPDATE SKIP LOCKED`, so several workers (or Airflow mapped
tasks) can run at once without doing an image twice. An image without text gets ocr_text = '' so it
is not tried again. has_zh_text needs at least MIN_ZH_CHARS CJK characters: a single stray glyph is
usually a misread texture, not text.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tuwen.crawl.queries import claim_for_ocr, store_ocr
from tuwen.resources import Resources

logger = logging.getLogger(__name__)

MIN_ZH_CHARS = 2
BATCH_SIZE = 16
# CJK Unified Ideographs, Extension A, Compatibility Ideographs, Extensions B-F.
CJK_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")


@dataclass(frozen=True)
class OcrResult:
    text: str  # one line per detected text box, top to bottom
    cjk_chars: int
    lines: int

    @property
    def has_zh_text(self) -> bool:
        return self.cjk_chars >= MIN_ZH_CHARS


def count_cjk(value: str) -> int:
    return len(CJK_RE.findall(value))


@lru_cache(maxsize=4)
def ocr_engine(threads: int = 1) -> Any:
    """A RapidOCR engine; ONNX Runtime threads pinned so N workers use N cores, not N x all cores."""
    from rapidocr_onnxruntime import RapidOCR  # heavy import (onnxruntime, opencv): only when OCR runs

    return RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)


def extract_text(image: bytes, threads: int = 1) -> OcrResult:
    result, _ = ocr_engine(threads)(image)
    lines = [str(item[1]).strip() for item in (result or []) if str(item[1]).strip()]
    joined = "\n".join(lines)
    return OcrResult(text=joined, cjk_chars=count_cjk(joined), lines=len(lines))


def ocr_pending(resources: Resources, partition_date: dt.date | None = None, limit: int | None = None, *,
                threads: int = 1) -> int:
    """OCR accepted images that have none yet (optionally one partition, at most `limit`); returns how many."""
    if not resources.settings.ocr_enabled:
        logger.info("OCR disabled (TUWEN_OCR_ENABLED=false); nothing done")
        return 0
    engine, store = resources.engine, resources.store
    done = 0
    started = time.monotonic()
    while limit is None or done < limit:
        batch = BATCH_SIZE if limit is None else min(BATCH_SIZE, limit - done)
        # One transaction per batch: the row locks keep concurrent workers off these images while OCR runs.
        with engine.begin() as conn:
            claimed = claim_for_ocr(conn, batch, partition_date)
            if not claimed:
                break
            updates = []
            for row in claimed:
                result = extract_text(store.get_bytes(row.model_key), threads)
                updates.append({"id": row.id, "text": result.text, "n": result.cjk_chars, "zh": result.has_zh_text})
            store_ocr(conn, updates)
        done += len(claimed)
    elapsed = time.monotonic() - started
    logger.info("OCR: %d images in %.1fs (%.2f images/s)", done, elapsed, done / elapsed if elapsed else 0.0)
    return done
