"""The curation filters: pure functions of a model-ready image's pixels and its OCR text.

Each filter has a `FilterSpec` (stable name, version, what it decides, the `CurationConfig` fields that are
its thresholds) like the QC checks (`tuwen.quality.checks`), and can be switched off by name
(TUWEN_CURATE_FILTERS_OFF). `evaluate` runs the enabled ones and returns one `Verdict`: the status
(`curated`, `held` or `rejected`), the stable reasons and the scores measured — recorded for every image,
so a threshold change is a re-labelling of stored scores' kind, not a new crawl.

What each filter looks at (the pixels are the model-ready copy, the pixels the VLM would see):
  - qr_code: OpenCV's QR detector; the detected codes' share of the image area. A WeChat footer code on a
    poster is a few percent; a "scan to follow" poster is mostly code.
  - low_information: luminance spread, edge density and the share of the canvas that differs from its
    border colour (solid colours, gradients, a tiny logo on a big white canvas).
  - simple_graphic: few distinct colours (a logo, a flat banner). A score always; a verdict only with OCR
    text to show the image says little (text-rich flat images — notices, slides — are what the dataset
    wants, and without OCR a flat notice cannot be told from a logo).
  - personal_data: the OCR text matched against Chinese mobile numbers, 18-digit ID numbers (checksum),
    e-mail addresses and licence plates. Only the kinds found leave this module, never the text.
  - unsafe: a nudity detector (NudeNet's ONNX model, inside its wheel, offline) injected by the caller;
    the highest score among exposed-body classes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

import cv2
import numpy as np

from tuwen.curate.personal_data import personal_data_kinds

# Bump when a filter's logic or a default threshold changes; part of every verdict's config version.
CURATION_VERSION = 1

CURATED: Final = "curated"
HELD: Final = "held"
REJECTED: Final = "rejected"
# Reasons recorded on an image the filters could not look at (the batch goes on without it).
MISSING_OBJECT = "missing_object"
UNDECODABLE = "undecodable"
FILTER_ERROR = "filter_error"

# The longest side the pixel filters look at: enough for edges and QR finder patterns, cheap at any size.
ANALYSIS_SIDE = 512


@dataclass(frozen=True)
class CurationConfig:
    """Thresholds of the filters, which are on, and what personal data gets (held or rejected)."""

    disabled: frozenset[str] = frozenset()
    # qr_code: rejected when codes cover at least this share of the image, or at least qr_min_area_share
    # and this share of the box the image's detail spans (a code alone on a blank canvas).
    qr_max_area_share: float = 0.12
    qr_min_area_share: float = 0.03
    qr_max_content_share: float = 0.5
    # low_information: rejected below any of these.
    min_luminance_std: float = 8.0
    min_edge_density: float = 0.0005  # share of Canny edge pixels at ANALYSIS_SIDE
    min_content_share: float = 0.04  # bounding box of the detail / image area
    content_tolerance: int = 24  # levels from a smoothed copy (any channel) that count as detail
    # simple_graphic: few colours (4 bits per channel) cover `simple_coverage` of the pixels ...
    simple_max_colours: int = 8
    simple_coverage: float = 0.95
    # ... and OCR found fewer Chinese characters than this: too little to talk about.
    simple_max_cjk_chars: int = 8
    simple_verdict: bool = True
    # personal_data: the verdict on a match.
    personal_data_action: Literal["held", "rejected"] = HELD
    # unsafe: rejected at or above this detector score (NudeNet's class confidence, 0..1).
    unsafe_min_score: float = 0.5


@dataclass(frozen=True)
class FilterSpec:
    """One filter as lineage, the QC report and the card describe it; `thresholds` name CurationConfig fields."""

    name: str
    version: int
    description: str
    thresholds: tuple[str, ...] = ()


_SPECS = (
    FilterSpec("qr_code", 1, "QR codes (OpenCV's detector; decoded, or undecodable but code-like) cover a large "
               "share of the image, or most of its content", ("qr_max_area_share", "qr_min_area_share",
                                                              "qr_max_content_share")),
    FilterSpec("low_information", 1,
               "near-blank: flat luminance, almost no edges (gradients), or tiny content on a big canvas",
               ("min_luminance_std", "min_edge_density", "min_content_share", "content_tolerance")),
    FilterSpec("simple_graphic", 1,
               "logo or flat banner: a few colours cover the image and OCR found little Chinese text "
               "(a score only where OCR did not run)",
               ("simple_max_colours", "simple_coverage", "simple_max_cjk_chars", "simple_verdict")),
    FilterSpec("personal_data", 1,
               "OCR text shows a Chinese mobile or ID-card number, an e-mail address or a licence plate "
               "(the kind is recorded, never the value)", ("personal_data_action",)),
    FilterSpec("unsafe", 1, "nudity detector (NudeNet 320n, offline) scores an exposed body part",
               ("unsafe_min_score",)),
)
FILTERS: dict[str, FilterSpec] = {spec.name: spec for spec in _SPECS}


def config_from_settings(filters_off: str, personal_data: str) -> CurationConfig:
    """The config the settings ask for; an unknown filter name is an error naming the known ones."""
    names = frozenset(n.strip() for n in filters_off.split(",") if n.strip())
    unknown = sorted(names - set(FILTERS))
    if unknown:
        raise ValueError(f"TUWEN_CURATE_FILTERS_OFF: unknown filters {unknown}; known: {', '.join(FILTERS)}")
    action: Literal["held", "rejected"] = REJECTED if personal_data == REJECTED else HELD
    return CurationConfig(disabled=names, personal_data_action=action)


def describe_filters(config: CurationConfig | None = None) -> list[dict[str, Any]]:
    """The registry with threshold values and switches filled in, for lineage, the report and the card."""
    config = config or CurationConfig()
    return [{"name": spec.name, "version": spec.version, "description": spec.description,
             "enabled": spec.name not in config.disabled,
             "thresholds": {name: getattr(config, name) for name in spec.thresholds}} for spec in _SPECS]


def config_version(config: CurationConfig | None = None) -> str:
    """A short id of what decides a verdict (filter versions, thresholds, switches): a verdict recorded
    under another id is re-curated, so a changed threshold re-labels every image on the next run."""
    described = json.dumps({"version": CURATION_VERSION, "filters": describe_filters(config)}, sort_keys=True)
    return f"c{CURATION_VERSION}-{hashlib.sha256(described.encode()).hexdigest()[:10]}"


# --------------------------------------------------------------------------------------------------
# Inputs and the verdict


@dataclass(frozen=True)
class OcrInfo:
    """What the filters need from OCR: None for an image OCR did not run on."""

    text: str
    cjk_chars: int


@dataclass
class Verdict:
    status: str
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, Any] = field(default_factory=dict)


def decode(data: bytes) -> np.ndarray | None:
    """The image as BGR pixels (OpenCV's order), or None when it does not decode."""
    if not data:
        return None
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return pixels if pixels is not None and pixels.size else None


def analysis_copy(bgr: np.ndarray) -> np.ndarray:
    """The image scaled so its longer side is at most ANALYSIS_SIDE (area averaging, never upscaled)."""
    height, width = bgr.shape[:2]
    scale = ANALYSIS_SIDE / max(height, width)
    if scale >= 1:
        return bgr
    return cv2.resize(bgr, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------------------------------
# The filters' measurements (pure)


_QR = cv2.QRCodeDetector()


def _qr_like(gray: np.ndarray, quad: np.ndarray) -> bool:
    """A detected quadrilateral that looks like a code: square, half dark modules, high contrast, dense edges
    (a blurred or low-resolution code OpenCV finds but cannot decode)."""
    x, y, w, h = cv2.boundingRect(quad)
    region = gray[max(0, y):y + h, max(0, x):x + w]
    if region.size < 400:
        return False
    (_, _), (rw, rh), _ = cv2.minAreaRect(quad)
    if max(rw, rh) > 1.3 * max(1.0, min(rw, rh)):
        return False
    threshold, _ = cv2.threshold(region, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = region <= threshold
    if not 0.3 <= dark.mean() <= 0.7:
        return False
    contrast = float(region[~dark].mean()) - float(region[dark].mean())
    edges = np.count_nonzero(cv2.Canny(region, 50, 150)) / region.size
    return bool(contrast >= 60 and edges >= 0.1)


def _code_area(gray: np.ndarray) -> float:
    """Area (pixels) of the QR codes in `gray`: those OpenCV decodes, and those it detects but cannot decode
    that still look like a code (`_qr_like`)."""
    found, points = _QR.detectMulti(gray)
    if not found or points is None:
        # The single-code decoder finds some codes the multi-code detector misses; decoded ones only.
        payload, quad, _ = _QR.detectAndDecode(gray)
        if payload and quad is not None:
            return abs(float(cv2.contourArea(np.asarray(quad, dtype=np.float32).reshape(-1, 2))))
        return 0.0
    ok, payloads, decoded_quads, _ = _QR.detectAndDecodeMulti(gray)
    quads = [np.asarray(q, dtype=np.float32).reshape(-1, 2) for q in points]
    decoded = [np.asarray(q, dtype=np.float32).reshape(-1, 2)
               for q, payload in zip(decoded_quads if ok and decoded_quads is not None else [], payloads or [],
                                     strict=False) if payload]
    kept = decoded or [q for q in quads if _qr_like(gray, q)]
    return sum(abs(float(cv2.contourArea(q))) for q in kept)


def qr_area_share(gray: np.ndarray) -> float:
    """Share of the image covered by QR codes (0 when none).

    OpenCV's multi-code detector finds the codes; a code counts when it decodes or, undecodable (blurred,
    low resolution), when its region looks like one (`_qr_like`); where it finds none, the single-code
    decoder's decoded code counts. An undecoded single-code `detect` does not: on the fixture's drawn
    photos it finds "codes" covering up to 40 % of the image in shapes with three corners. Decoded payloads are dropped here (one may be a personal link). The detector misses codes
    whose modules are large (12+ px), which a QR poster's are at ANALYSIS_SIDE, so a half-size copy is
    tried first: codes big enough to matter still have modules of 2+ px there."""
    height, width = gray.shape
    half = cv2.resize(gray, (max(1, width // 2), max(1, height // 2)), interpolation=cv2.INTER_AREA)
    area = _code_area(half) * 4 or _code_area(gray)
    return min(1.0, area / float(height * width))


def information(bgr: np.ndarray, gray: np.ndarray, tolerance: int) -> dict[str, float]:
    """Luminance spread, edge density and the share of the canvas its detail spans.

    Detail is where a colour channel differs from a heavily smoothed copy (a high-pass): a gradient or a
    flat background has none, so a small label on a gradient placeholder spans a small box, as a tiny logo
    on a white canvas does, while a photo's edges and textures span the frame. Colour channels, not grey:
    a shape can differ from its background in hue alone."""
    std = float(gray.std())
    edges = cv2.Canny(gray, 50, 150)
    edge_density = float(np.count_nonzero(edges)) / edges.size
    height, width = gray.shape
    # Smoothing by a 1/16 copy scaled back: the blur of a ~30 px kernel at a fraction of its cost.
    coarse = cv2.resize(bgr, (max(1, width // 16), max(1, height // 16)), interpolation=cv2.INTER_AREA)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    detail = (cv2.absdiff(bgr, smooth).max(axis=2) > tolerance)
    # A row or column holds detail when a few of its pixels do: JPEG specks alone do not widen the box.
    rows = np.flatnonzero(detail.sum(axis=1) >= max(2, width // 200))
    cols = np.flatnonzero(detail.sum(axis=0) >= max(2, height // 200))
    if rows.size and cols.size:
        content_share = float((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)) / gray.size
    else:
        content_share = 0.0
    return {"luminance_std": std, "edge_density": edge_density, "content_share": content_share}


def dominant_colours(bgr: np.ndarray, coverage: float) -> int:
    """How many colours (4 bits per channel) it takes to cover `coverage` of the pixels."""
    quantized = (bgr >> 4).astype(np.int32)
    codes = (quantized[..., 0] << 8) | (quantized[..., 1] << 4) | quantized[..., 2]
    counts = np.sort(np.bincount(codes.ravel(), minlength=4096))[::-1]
    needed = coverage * codes.size
    return int(np.searchsorted(np.cumsum(counts), needed) + 1)


# --------------------------------------------------------------------------------------------------
# Running them


UnsafeScorer = Callable[[np.ndarray], float]  # BGR pixels -> highest exposed-body score, 0..1


def _round(value: float) -> float:
    return round(float(value), 4)


def evaluate(bgr: np.ndarray, ocr: OcrInfo | None, config: CurationConfig | None = None,
             unsafe_scorer: UnsafeScorer | None = None) -> Verdict:
    """Run the enabled filters over one image; rejecting reasons win over holding ones."""
    config = config or CurationConfig()
    on = {name for name in FILTERS if name not in config.disabled}
    small = analysis_copy(bgr)
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    scores: dict[str, Any] = {}
    rejected: list[str] = []
    held: list[str] = []

    info = information(small, gray, config.content_tolerance) if on & {"qr_code", "low_information"} else {}
    if "qr_code" in on:
        share = qr_area_share(gray)
        scores["qr_area_share"] = _round(share)
        # Dominated: a big code, or a code that is most of what the image shows (a code alone on a canvas).
        if share >= config.qr_max_area_share or (
                share >= config.qr_min_area_share
                and share >= config.qr_max_content_share * max(info["content_share"], 1e-6)):
            rejected.append("qr_code")
    if "low_information" in on:
        scores.update({k: _round(v) for k, v in info.items()})
        if (info["luminance_std"] < config.min_luminance_std or info["edge_density"] < config.min_edge_density
                or info["content_share"] < config.min_content_share):
            rejected.append("low_information")
    if "simple_graphic" in on:
        colours = dominant_colours(small, config.simple_coverage)
        scores["dominant_colours"] = colours
        if (config.simple_verdict and ocr is not None and colours <= config.simple_max_colours
                and ocr.cjk_chars < config.simple_max_cjk_chars):
            rejected.append("simple_graphic")
    if "personal_data" in on and ocr is not None:
        kinds = personal_data_kinds(ocr.text)
        if kinds:
            scores["personal_data"] = kinds  # the kinds only: the matched text stays in image.ocr_text
            (rejected if config.personal_data_action == REJECTED else held).extend(
                f"personal_data.{kind}" for kind in kinds)
    if "unsafe" in on and unsafe_scorer is not None:
        score = unsafe_scorer(bgr)
        scores["unsafe_score"] = _round(score)
        if score >= config.unsafe_min_score:
            rejected.append("unsafe")
    if ocr is None:
        scores["ocr"] = "not_run"
    status = REJECTED if rejected else HELD if held else CURATED
    return Verdict(status, rejected + held, scores)


def failed(reason: str) -> Verdict:
    """The verdict on an image the filters could not look at."""
    return Verdict(REJECTED, [reason], {})


def summarise(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """Counts per status and per reason (for task logs and summaries)."""
    by_status: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    for verdict in verdicts:
        by_status[verdict.status] = by_status.get(verdict.status, 0) + 1
        for reason in verdict.reasons:
            by_reason[reason] = by_reason.get(reason, 0) + 1
    return {"by_status": by_status, "by_reason": dict(sorted(by_reason.items()))}


def config_as_dict(config: CurationConfig) -> Mapping[str, Any]:
    data = asdict(config)
    data["disabled"] = sorted(config.disabled)
    return data
