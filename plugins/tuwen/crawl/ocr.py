"""OCR of accepted images (RapidOCR: PP-OCRv4 det/rec ONNX models shipped inside the wheel, CPU, offline).

The text grounds the quality checks (a description of a sign should quote the sign) and lets analysts
find images with Chinese text. It runs on the model-ready copy, the pixels the VLM sees.

    tuwen ocr [--partition-date 2024-05-01] [--limit 500] [--threads 1]

`ocr_pending` claims images with `FOR UPDATE SKIP LOCKED`, so several workers (or Airflow mapped
tasks) can run at once without doing an image twice. An image without text gets ocr_text = '' so it
is not tried again. has_zh_text needs at least MIN_ZH_CHARS CJK characters: a single stray glyph is
usually a misread texture, not text. OCR_PARAMS say how the models run (each value with its reason);
`python -m bench ocr` measures them against RapidOCR's defaults, side by side.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections import Counter
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


def char_recall(expected: str, found: str) -> float:
    """Share of the expected characters (spaces aside, as a multiset) that OCR found: the measure the
    OCR parameters are held to on strings drawn on images (tests and `python -m bench ocr`)."""
    want = Counter(expected.replace(" ", ""))
    got = Counter(found.replace(" ", ""))
    return sum(min(n, got[c]) for c, n in want.items()) / sum(want.values())


@dataclass(frozen=True)
class OcrParams:
    """How RapidOCR runs its three PP-OCR models (detector, angle classifier, recogniser) on CPU."""

    use_cls: bool  # the angle classifier: turns lines it finds upside down before recognition
    det_limit_type: str  # "min": the shorter side raised to det_limit_side_len; "max": the longer side capped
    det_limit_side_len: int
    own_det_preprocess: bool  # ours (below) instead of RapidOCR's resize and normalisation
    rec_batch_num: int  # text lines per recogniser run; a batch is padded to its widest line
    rec_img_shape: tuple[int, int, int]  # (channels, height, least width a text line is padded to)
    cpu_mem_arena: bool  # ONNX Runtime's memory arena (RapidOCR builds its sessions without it)

    def rapidocr_kwargs(self) -> dict[str, Any]:
        return {"use_cls": self.use_cls, "det_limit_type": self.det_limit_type,
                "det_limit_side_len": self.det_limit_side_len, "rec_batch_num": self.rec_batch_num,
                "rec_img_shape": list(self.rec_img_shape)}


# Measured side by side against the parameters used before (RapidOCR's defaults, kept as BASELINE in
# bench/bench_ocr.py) by `python -m bench ocr`; results and the variants not kept in BENCHMARKS.md.
OCR_PARAMS = OcrParams(
    # Web images are upright; the classifier's only effect is turning upside-down lines, and it cost
    # a classifier run per line.
    use_cls=False,
    # The detector sees the model-ready copy (at most the VLM's pixel budget, ~1 MP) at its own size,
    # never enlarged, the longer side capped at 960 px (PaddleOCR's own default). The old rule raised
    # every shorter side to 736 px: a 448x364 sign was detected at 4x its pixels. The cap shrinks a
    # 16:9 copy at the full budget by 0.72: a 1920x1080 screenshot's 16 px labels (11 px in the copy,
    # 8 px for the detector) are still read (tests/unit/test_ocr_params.py); no smaller cap was tried.
    det_limit_type="max",
    det_limit_side_len=960,
    # Float32 normalisation in one OpenCV call; RapidOCR's numpy code works in float64 (~10 ms a MP).
    own_det_preprocess=True,
    # One line per run at its own width: padding every line to 320 px (and a batch to its widest
    # line) made a 2-character label cost as much as a 13-character one.
    rec_batch_num=1,
    rec_img_shape=(3, 48, 48),
    # Buffers reused across runs instead of allocated per tensor: about a fifth of the detector's CPU.
    cpu_mem_arena=True,
)


class _DetPreprocess:
    """RapidOCR's detector input (resized to multiples of 32, scaled to [-1, 1], NCHW float32) in two
    OpenCV calls; limit_type "max" honours the side given (RapidOCR's picks 960, 1500 or 2000 px)."""

    def __init__(self, limit_type: str, limit_side_len: int) -> None:
        self.limit_type = limit_type
        self.limit_side_len = limit_side_len

    def __call__(self, img: Any) -> Any:
        import cv2

        h, w = img.shape[:2]
        if self.limit_type == "max":
            ratio = min(1.0, self.limit_side_len / max(h, w))
        else:
            ratio = max(1.0, self.limit_side_len / min(h, w))
        size = (max(32, round(int(w * ratio) / 32) * 32), max(32, round(int(h * ratio) / 32) * 32))
        return cv2.dnn.blobFromImage(cv2.resize(img, size), scalefactor=2 / 255, mean=(127.5, 127.5, 127.5))


@lru_cache(maxsize=4)
def ocr_engine(threads: int = 1, params: OcrParams = OCR_PARAMS) -> Any:
    """A RapidOCR engine; ONNX Runtime threads pinned so N workers use N cores, not N x all cores."""
    from rapidocr_onnxruntime import RapidOCR  # heavy import (onnxruntime, opencv): only when OCR runs

    engine = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1, **params.rapidocr_kwargs())
    if params.own_det_preprocess:
        preprocess = _DetPreprocess(params.det_limit_type, params.det_limit_side_len)
        engine.text_det.get_preprocess = lambda _longer_side: preprocess
    if params.cpu_mem_arena:
        _rebuild_sessions_with_arena(engine, threads)
    return engine


def _rebuild_sessions_with_arena(engine: Any, threads: int) -> None:
    """Replace RapidOCR's three ONNX Runtime sessions by ones with the CPU memory arena on.

    RapidOCR (pinned in requirements.txt) hard-codes the arena off and keeps each session as `.session`
    of its OrtInferSession wrappers; the models, providers and threads stay the same.
    """
    import onnxruntime as ort

    for wrapper in (engine.text_det.infer, engine.text_cls.infer, engine.text_rec.session):
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.enable_cpu_mem_arena = True
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        wrapper.session = ort.InferenceSession(wrapper.session._model_path, sess_options=options,
                                               providers=["CPUExecutionProvider"])


def extract_text(image: bytes, threads: int = 1, params: OcrParams = OCR_PARAMS) -> OcrResult:
    # RapidOCR detects first and returns before the recogniser when no box was found (photos).
    result, _ = ocr_engine(threads, params)(image)
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
