"""The OCR parameters (issue 18: faster per core) still read small text, and the detector's input is
what RapidOCR would have built, at the size the parameters say."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tuwen.crawl.images import inspect_and_normalize
from tuwen.crawl.ocr import OCR_PARAMS, _DetPreprocess, char_recall, extract_text
from tuwen.local.fixture_site import load_cjk_font

LABELS = ["老王面馆", "人民路357号", "春季音乐节", "科技馆二楼", "停水通知", "营业时间 09:00-21:30",
          "图书馆报告厅", "第二件半价"]


def model_copy(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    decision = inspect_and_normalize(buf.getvalue(), "image/png")
    assert decision.model is not None
    return decision.model.data


def test_char_recall_counts_characters_as_a_multiset() -> None:
    assert char_recall("老王 面馆", "老王面馆") == 1.0
    assert char_recall("面面馆", "面馆") == pytest.approx(2 / 3)
    assert char_recall("停水", "") == 0.0


def test_the_labels_of_a_screenshot_shrunk_to_the_pixel_budget_are_read() -> None:
    """A 1920x1080 page with 16 px labels: the model-ready copy (~1 MP) shrinks them to ~11 px, the
    smallest text the VLM is given; a detector input cut below the copy's size loses such lines."""
    img = Image.new("RGB", (1920, 1080), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = load_cjk_font(16)
    for k, label in enumerate(LABELS):
        draw.text((60 + (k % 2) * 900, 80 + (k // 2) * 230), label, font=font, fill=(25, 25, 30))
    data = model_copy(img)
    assert Image.open(io.BytesIO(data)).width < 1400  # the copy really is smaller than the page
    found = extract_text(data).text
    assert char_recall("".join(LABELS), found) >= 0.8, found


def test_the_detector_input_is_rapidocrs_at_the_capped_size() -> None:
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(750, 1334, 3), dtype=np.uint8)
    ours = _DetPreprocess("min", 736)(img)
    theirs = DetPreProcess(736, "min", [0.5] * 3, [0.5] * 3)(img)
    assert ours.shape == theirs.shape == (1, 3, 736, 1344)
    assert ours.dtype == np.float32 and np.abs(ours - theirs).max() < 1e-5

    capped = _DetPreprocess("max", OCR_PARAMS.det_limit_side_len)
    small = capped(img[:364, :448])
    assert small.shape == (1, 3, 352, 448)  # never enlarged (the old "min" rule made it 736x896)
    wide = capped(rng.integers(0, 256, size=(560, 1792, 3), dtype=np.uint8))
    assert wide.shape[3] <= OCR_PARAMS.det_limit_side_len and wide.shape[2] % 32 == 0
