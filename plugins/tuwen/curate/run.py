"""Curating a partition: claim batches, OCR where missing, run the filters, record each verdict; then the
Chinese-text policy over the partition.

    tuwen curate [--partition-date 2024-05-01] [--limit 500]

`curate_pending` claims accepted images without a verdict under the current config version with
`FOR UPDATE SKIP LOCKED` (like OCR), so N Airflow mapped tasks or Celery workers share a partition and no
image is done twice. An image that cannot be looked at (its object is missing, its bytes do not decode) is
recorded `rejected` with the reason, and the batch goes on. `apply_zh_policy` then re-labels the
partition's filter-passed images between `curated` and `held` (tuwen.curate.policy); it reads stored
verdicts only, so changing the share and running it again is cheap.

With TUWEN_CURATE_ENABLED=false the stage only runs OCR (shared the same way) and synthesis counts every
accepted image as curated.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuwen.crawl import ocr
from tuwen.crawl.queries import store_ocr
from tuwen.curate import filters, policy, queries, unsafe
from tuwen.resources import Resources

logger = logging.getLogger(__name__)

BATCH_SIZE = 16


@dataclass
class CurateSummary:
    images: int = 0
    ocr_images: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.images, "ocr_images": self.ocr_images, "by_status": dict(self.by_status),
                "by_reason": dict(self.by_reason), "seconds": round(self.seconds, 2)}


def config_for(resources: Resources) -> filters.CurationConfig:
    settings = resources.settings
    return filters.config_from_settings(settings.curate_filters_off, settings.curate_personal_data)


def default_scorer(config: filters.CurationConfig) -> filters.UnsafeScorer | None:
    """NudeNet when the unsafe filter is on; a missing package is an error, never a silent pass."""
    if "unsafe" in config.disabled:
        return None
    if not unsafe.available():
        raise RuntimeError("the unsafe-content filter needs the nudenet package (requirements.txt); "
                           "install it, or switch the filter off with TUWEN_CURATE_FILTERS_OFF=unsafe")
    return unsafe.nudenet_score


def _judge(data: bytes | None, row: Any, ocr_on: bool, config: filters.CurationConfig,
           scorer: filters.UnsafeScorer | None) -> tuple[filters.Verdict, dict[str, Any] | None]:
    """One image's verdict, and its OCR result when OCR ran here."""
    if data is None:
        return filters.failed(filters.MISSING_OBJECT), None
    pixels = filters.decode(data)
    if pixels is None:
        return filters.failed(filters.UNDECODABLE), None
    ocr_update = None
    info = None
    if row.ocr_text is not None:
        info = filters.OcrInfo(row.ocr_text, row.ocr_char_count or 0)
    elif ocr_on:
        result = ocr.extract_text(data)
        ocr_update = {"id": row.id, "text": result.text, "n": result.cjk_chars, "zh": result.has_zh_text}
        info = filters.OcrInfo(result.text, result.cjk_chars)
    return filters.evaluate(pixels, info, config, scorer), ocr_update


def curate_pending(resources: Resources, partition_date: dt.date | None = None, limit: int | None = None, *,
                   config: filters.CurationConfig | None = None, scorer: filters.UnsafeScorer | None = None,
                   lineage_ids: dict[str, Any] | None = None,
                   on_batch: Callable[[int], None] | None = None) -> CurateSummary:
    """Curate accepted images without a current verdict (optionally one partition, at most `limit`)."""
    settings = resources.settings
    summary = CurateSummary()
    started = time.monotonic()
    if not settings.curate_enabled:
        summary.ocr_images = ocr.ocr_pending(resources, partition_date=partition_date, limit=limit)
        summary.seconds = time.monotonic() - started
        logger.info("curation disabled (TUWEN_CURATE_ENABLED=false): OCR only, %d images", summary.ocr_images)
        return summary
    config = config or config_for(resources)
    if scorer is None:
        scorer = default_scorer(config)
    version = filters.config_version(config)
    ids = lineage_ids or {}
    engine, store = resources.engine, resources.store
    verdicts: list[filters.Verdict] = []
    while limit is None or summary.images < limit:
        batch = BATCH_SIZE if limit is None else min(BATCH_SIZE, limit - summary.images)
        # One transaction per batch: the row locks keep other workers off these images until the verdicts
        # (and any OCR text found here) are written.
        with engine.begin() as conn:
            claimed = queries.claim(conn, batch, version, partition_date)
            if not claimed:
                break
            records, ocr_updates = [], []
            for row in claimed:
                try:
                    data: bytes | None = store.get_bytes(row.model_key)
                except Exception as exc:  # a missing object or a refused read: recorded, the batch goes on
                    logger.warning("curation: image %d: model copy unreadable (%s)", row.id, type(exc).__name__)
                    data = None
                try:
                    verdict, ocr_update = _judge(data, row, settings.ocr_enabled, config, scorer)
                except Exception as exc:  # a filter's failure on one image must not stop the partition
                    logger.exception("curation: image %d: %s", row.id, type(exc).__name__)
                    verdict, ocr_update = filters.Verdict(filters.HELD, [filters.FILTER_ERROR], {}), None
                if ocr_update:
                    ocr_updates.append(ocr_update)
                verdicts.append(verdict)
                records.append({"image_id": row.id, "status": verdict.status, "reasons": verdict.reasons,
                                "scores": verdict.scores})
            if ocr_updates:
                store_ocr(conn, ocr_updates)
            queries.record(conn, records, version, ids)
        summary.images += len(claimed)
        summary.ocr_images += len(ocr_updates)
        if on_batch:
            on_batch(len(claimed))
    counted = filters.summarise(verdicts)
    summary.by_status, summary.by_reason = counted["by_status"], counted["by_reason"]
    summary.seconds = time.monotonic() - started
    rate = summary.images / summary.seconds if summary.seconds else 0.0
    # Reasons and counts only: personal data is named by kind, its text never reaches a log.
    logger.info("curation: %d images in %.1fs (%.2f/s), %s, reasons %s", summary.images, summary.seconds, rate,
                summary.by_status, summary.by_reason)
    return summary


def apply_zh_policy(resources: Resources, partition_date: dt.date, share: float | None = None) -> dict[str, int]:
    """Re-label the day's filter-passed images between curated and held for the Chinese-text share."""
    if not resources.settings.curate_enabled:
        return {"curated": 0, "held": 0}
    share = resources.settings.curate_zh_share if share is None else share
    with resources.engine.begin() as conn:
        rows = queries.policy_candidates(conn, partition_date)
        keep = policy.select_for_zh_share(
            (policy.Candidate(r.image_id, r.sha256, r.has_zh_text) for r in rows), share)
        release = [r.image_id for r in rows if r.image_id in keep and r.status != filters.CURATED]
        hold = [r.image_id for r in rows if r.image_id not in keep and r.status != filters.HELD]
        queries.set_policy(conn, release, hold)
    result = {"curated": len(keep), "held": len(rows) - len(keep), "released": len(release), "newly_held": len(hold)}
    logger.info("Chinese-text policy (share >= %.2f) on %s: %s", share, partition_date, result)
    return result


def curate_partition(resources: Resources, partition_date: dt.date, **kwargs: Any) -> dict[str, Any]:
    """Filters then policy for one day, in this process (the CLI, tests, the demo)."""
    summary = curate_pending(resources, partition_date, **kwargs)
    return {"filters": summary.as_dict(), "policy": apply_zh_policy(resources, partition_date),
            "counts": queries.counts(resources.engine, partition_date)}


def plan_curation(resources: Resources, partition_date: dt.date) -> list[dict[str, Any]]:
    """The mapped tasks for a day: as many as TUWEN_CURATE_TASKS, fewer when there is less work; each
    claims batches until none is left, so their number only bounds the parallelism."""
    settings = resources.settings
    if settings.curate_enabled:
        todo = queries.pending(resources.engine, filters.config_version(config_for(resources)), partition_date)
    else:
        todo = 1  # OCR only: the tasks share the OCR claims
    tasks = max(1, min(settings.curate_tasks, -(-todo // BATCH_SIZE)))
    return [{"partition": partition_date.isoformat(), "slot": slot} for slot in range(tasks)]
