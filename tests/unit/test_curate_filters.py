"""The curation filters and the Chinese-text policy as pure functions: drawn images, no services.

The unsafe filter is exercised with clean images and an injected scorer: the repository never holds an
unsafe image, and its plumbing (threshold, reason, scores) is what these tests pin."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tuwen.curate import filters, policy
from tuwen.curate.filters import CurationConfig, OcrInfo, evaluate


def photo(seed: int = 1, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """A photo-like BGR image: shapes over a colour field, with grain."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8), size[::-1], interpolation=cv2.INTER_CUBIC)
    for _ in range(6):
        centre = (int(rng.integers(0, size[1])), int(rng.integers(0, size[0])))
        cv2.circle(img, centre, int(rng.integers(20, 120)), tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
    noise = rng.integers(-12, 13, img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def qr_poster(share: float, size: int = 600) -> np.ndarray:
    """A white poster with a QR code covering about `share` of it."""
    code = cv2.QRCodeEncoder.create().encode("https://example.invalid/follow-us")
    side = int(size * share ** 0.5)
    code = cv2.resize(code, (side, side), interpolation=cv2.INTER_NEAREST)
    img = np.full((size, size, 3), 255, np.uint8)
    y = x = (size - side) // 2
    img[y:y + side, x:x + side] = cv2.cvtColor(code, cv2.COLOR_GRAY2BGR)
    return img


def test_a_photo_is_curated_with_its_scores() -> None:
    verdict = evaluate(photo(), OcrInfo("", 0))
    assert verdict.status == "curated" and verdict.reasons == []
    assert {"qr_area_share", "luminance_std", "edge_density", "content_share", "dominant_colours"} <= set(verdict.scores)


def test_a_qr_poster_is_rejected_and_a_small_code_is_not() -> None:
    big = evaluate(qr_poster(0.5), None)
    assert big.status == "rejected" and "qr_code" in big.reasons and big.scores["qr_area_share"] > 0.3
    corner = photo(3, (600, 800))
    corner[20:100, 20:100] = cv2.cvtColor(cv2.resize(cv2.QRCodeEncoder.create().encode("x"), (80, 80),
                                                     interpolation=cv2.INTER_NEAREST), cv2.COLOR_GRAY2BGR)
    small = evaluate(corner, None)
    assert "qr_code" not in small.reasons


@pytest.mark.parametrize("name,image", [
    ("solid", np.full((400, 600, 3), (40, 120, 200), np.uint8)),
    ("gradient", np.repeat(np.linspace(0, 255, 600, dtype=np.uint8)[None, :, None], 400, axis=0).repeat(3, axis=2)),
])
def test_blank_and_gradient_are_low_information(name: str, image: np.ndarray) -> None:
    verdict = evaluate(image, None)
    assert verdict.status == "rejected" and "low_information" in verdict.reasons, (name, verdict.scores)


def test_tiny_content_on_a_big_canvas_is_low_information() -> None:
    canvas = np.full((900, 1200, 3), 255, np.uint8)
    canvas[430:470, 580:620] = photo(5, (40, 40))
    verdict = evaluate(canvas, None)
    assert "low_information" in verdict.reasons and verdict.scores["content_share"] < 0.04


def logo(text_chars: int) -> tuple[np.ndarray, OcrInfo]:
    img = np.full((400, 400, 3), (255, 255, 255), np.uint8)
    cv2.circle(img, (200, 200), 120, (30, 30, 200), -1)
    cv2.rectangle(img, (150, 150), (250, 250), (255, 255, 255), 12)
    return img, OcrInfo("福满楼"[:text_chars], text_chars)


def test_a_logo_is_a_simple_graphic_only_with_ocr_showing_little_text() -> None:
    img, ocr = logo(3)
    assert evaluate(img, ocr).reasons == ["simple_graphic"]
    unread = evaluate(img, None)  # no OCR: a score only, never a verdict
    assert unread.status == "curated" and unread.scores["dominant_colours"] <= 3 and unread.scores["ocr"] == "not_run"
    wordy = evaluate(img, OcrInfo("本店春节期间正常营业欢迎光临", 14))
    assert wordy.status == "curated"


def test_personal_data_is_held_by_kind_and_its_value_never_recorded() -> None:
    text = "联系电话 138 1234 5678\n邮箱 wang.li@example.com\n车牌 京A·12345\n身份证 11010519491231002X"
    verdict = evaluate(photo(), OcrInfo(text, 12))
    assert verdict.status == "held"
    assert verdict.reasons == ["personal_data.email", "personal_data.id_card", "personal_data.mobile",
                               "personal_data.plate"]
    recorded = repr(verdict)
    for value in ("1381234", "5678", "wang.li", "12345", "11010519491231002X"):
        assert value not in recorded
    rejecting = evaluate(photo(), OcrInfo(text, 12), CurationConfig(personal_data_action="rejected"))
    assert rejecting.status == "rejected"


@pytest.mark.parametrize("text,kinds", [
    ("订餐热线13912345678", ["mobile"]),
    ("+86 139-1234-5678", ["mobile"]),
    ("订单号 2024051312345678901", []),  # a longer digit run is not a phone number
    ("110105194912310021", []),  # 18 digits, wrong check digit: not an ID number
    ("11010519491231002X", ["id_card"]),
    ("客服 service@shop.example.cn", ["email"]),
    ("粤B D12345", ["plate"]),
    ("营业时间 09:00-21:30 人民路123号", []),
])
def test_personal_data_kinds(text: str, kinds: list[str]) -> None:
    assert filters.personal_data_kinds(text) == kinds


def test_unsafe_filter_plumbing_with_an_injected_scorer() -> None:
    clean = photo(7)
    scores = iter([0.2, 0.93])
    passed = evaluate(clean, None, unsafe_scorer=lambda _: next(scores))
    assert passed.status == "curated" and passed.scores["unsafe_score"] == 0.2
    flagged = evaluate(clean, None, unsafe_scorer=lambda _: next(scores))
    assert flagged.status == "rejected" and flagged.reasons == ["unsafe"] and flagged.scores["unsafe_score"] == 0.93
    strict = CurationConfig(unsafe_min_score=0.1)
    assert evaluate(clean, None, strict, unsafe_scorer=lambda _: 0.2).reasons == ["unsafe"]
    off = CurationConfig(disabled=frozenset({"unsafe"}))
    assert evaluate(clean, None, off, unsafe_scorer=lambda _: 0.99).status == "curated"


def test_nudenet_passes_clean_images() -> None:
    pytest.importorskip("nudenet")
    from tuwen.curate.unsafe import nudenet_score

    for seed in range(3):
        assert nudenet_score(photo(seed)) < CurationConfig().unsafe_min_score
    assert nudenet_score(qr_poster(0.3)) < CurationConfig().unsafe_min_score


def test_each_filter_switches_off_and_the_version_follows_the_config() -> None:
    img = qr_poster(0.5)
    assert evaluate(img, None, CurationConfig(disabled=frozenset({"qr_code", "low_information"}))).status == "curated"
    versions = {filters.config_version(c) for c in (CurationConfig(), CurationConfig(qr_max_area_share=0.2),
                                                    CurationConfig(disabled=frozenset({"unsafe"})))}
    assert len(versions) == 3 and filters.config_version() == filters.config_version(CurationConfig())
    with pytest.raises(ValueError, match="unknown filters"):
        filters.config_from_settings("qr, unsafe", "held")
    assert filters.config_from_settings(" unsafe ,qr_code", "rejected") == CurationConfig(
        disabled=frozenset({"unsafe", "qr_code"}), personal_data_action="rejected")


def test_undecodable_bytes() -> None:
    assert filters.decode(b"") is None and filters.decode(b"not an image") is None


def candidates(with_text: int, without: int, unknown: int = 0) -> list[policy.Candidate]:
    made = [policy.Candidate(i, f"{i * 7919 % 1000:04d}{i}", True) for i in range(with_text)]
    made += [policy.Candidate(100 + i, f"{(100 + i) * 7919 % 1000:04d}x", False) for i in range(without)]
    made += [policy.Candidate(500 + i, f"u{i}", None) for i in range(unknown)]
    return made


@pytest.mark.parametrize("with_text,without,share,kept_without", [
    (70, 30, 0.7, 30), (70, 100, 0.7, 30), (3, 1, 0.75, 1), (10, 10, 0.0, 10), (10, 10, 1.0, 0), (0, 10, 0.7, 0),
])
def test_zh_share_keeps_all_text_images_and_enough_others(with_text: int, without: int, share: float,
                                                          kept_without: int) -> None:
    pool = candidates(with_text, without, unknown=2)
    keep = policy.select_for_zh_share(pool, share)
    assert {c.image_id for c in pool if c.has_zh_text is not False} <= keep  # text and unknown always kept
    assert len([c for c in pool if c.has_zh_text is False and c.image_id in keep]) == kept_without
    shuffled = list(reversed(pool))
    assert policy.select_for_zh_share(shuffled, share) == keep  # hash order, not query order


def test_a_code_alone_on_a_canvas_is_qr_dominated_and_a_page_with_a_code_is_not() -> None:
    alone = qr_poster(0.07, size=800)  # a code on an empty canvas: 7 % of the area, most of the content
    verdict = evaluate(alone, None)
    assert "qr_code" in verdict.reasons and verdict.scores["qr_area_share"] < CurationConfig().qr_max_area_share
    page = photo(11, (800, 800))
    page[280:520, 280:520] = alone[280:520, 280:520]  # the same code on a busy picture
    assert "qr_code" not in evaluate(page, None).reasons
