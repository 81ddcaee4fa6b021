"""OCR finds the Chinese strings the fixture site drew on its images, and fills the image rows once."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import text

from tests.services.test_crawl_services import fresh_database
from tuwen.config import Settings
from tuwen.crawl.images import inspect_and_normalize
from tuwen.crawl.ocr import char_recall, count_cjk, extract_text, ocr_pending
from tuwen.db.session import get_engine
from tuwen.local.fixture_site import ExpectedImage, SiteManifest, generate_site
from tuwen.resources import Resources
from tuwen.storage import ObjectStore, model_key

PARTITION = dt.date(2024, 5, 2)
OTHER_PARTITION = dt.date(2024, 5, 3)


def test_count_cjk() -> None:
    assert count_cjk("营业时间 09:00-21:30") == 4
    assert count_cjk("ABC 123") == 0
    assert count_cjk("\u3400\U00020000") == 2


@pytest.fixture(scope="module")
def fixture_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ExpectedImage]]:
    site = tmp_path_factory.mktemp("ocr-site")
    generate_site(site, seed=11, profile="standard")
    manifest = SiteManifest.load(site)
    accepted = [img for img in manifest.images.values() if img.outcome == "accepted" and img.file]
    texts = [img for img in accepted if img.text][:12]
    photos = [img for img in accepted if img.kind == "photo"][:3]
    return site, texts + photos


@pytest.fixture(scope="module")
def settings(postgres: str, s3_endpoint: str) -> Iterator[Settings]:
    with fresh_database() as url:
        yield Settings(database_url=url, s3_endpoint=s3_endpoint, s3_bucket="tuwen-test-ocr", ocr_enabled=True)


@pytest.fixture(scope="module")
def stored(fixture_images: tuple[Path, list[ExpectedImage]], settings: Settings) -> dict[int, ExpectedImage]:
    """Accepted image rows with model copies in S3, as the crawler leaves them (OCR columns empty)."""
    site, images = fixture_images
    store = ObjectStore(settings)
    store.ensure_bucket()
    by_id = {}
    with get_engine(settings.database_url).begin() as conn:
        for n, image in enumerate(images):
            decision = inspect_and_normalize((site / "www" / (image.file or "")).read_bytes(), image.content_type)
            assert decision.accepted and decision.model is not None
            key = model_key(decision.sha256, decision.model.ext)
            store.put_bytes(key, decision.model.data, decision.model.mime)
            partition = OTHER_PARTITION if n == 0 else PARTITION
            image_id = conn.execute(
                text("""INSERT INTO image (sha256, phash, width, height, format, n_bytes, model_key, model_width,
                                           model_height, model_mime, status, crawl_date)
                        VALUES (:sha, :phash, :w, :h, :fmt, :n, :key, :mw, :mh, :mime, 'accepted', :d) RETURNING id"""),
                {"sha": decision.sha256, "phash": decision.phash, "w": decision.width, "h": decision.height,
                 "fmt": decision.format, "n": decision.n_bytes, "key": key, "mw": decision.model.width,
                 "mh": decision.model.height, "mime": decision.model.mime, "d": partition},
            ).scalar_one()
            by_id[image_id] = image
    return by_id


def ocr_rows(settings: Settings) -> dict[int, tuple[str | None, int | None, bool | None]]:
    with get_engine(settings.database_url).connect() as conn:
        rows = conn.execute(text("SELECT id, ocr_text, ocr_char_count, has_zh_text FROM image")).all()
    return {r.id: (r.ocr_text, r.ocr_char_count, r.has_zh_text) for r in rows}


def test_disabled_ocr_does_nothing(stored: dict[int, ExpectedImage], settings: Settings) -> None:
    assert ocr_pending(Resources.from_settings(replace(settings, ocr_enabled=False))) == 0
    assert all(text_ is None for text_, _, _ in ocr_rows(settings).values())


def test_ocr_fills_one_partition_and_finds_the_drawn_text(stored: dict[int, ExpectedImage],
                                                          settings: Settings) -> None:
    assert ocr_pending(Resources.from_settings(settings), partition_date=PARTITION) == len(stored) - 1
    rows = ocr_rows(settings)
    for image_id, image in stored.items():
        ocr_text, n_cjk, has_zh = rows[image_id]
        if ocr_text is None:  # the one image in the other partition
            continue
        if image.text:
            recall = char_recall("".join(image.text), ocr_text)
            assert recall >= 0.8, (image.url, image.text, ocr_text)
            assert has_zh and n_cjk == count_cjk(ocr_text) and n_cjk >= 2
        else:
            assert not has_zh, (image.url, ocr_text)
    assert sum(1 for text_, _, _ in rows.values() if text_ is None) == 1


def test_ocr_is_done_once_and_limits_are_respected(stored: dict[int, ExpectedImage], settings: Settings) -> None:
    assert ocr_pending(Resources.from_settings(settings), limit=0) == 0
    assert ocr_pending(Resources.from_settings(settings)) == 1  # only the other partition's image was left
    assert ocr_pending(Resources.from_settings(settings)) == 0
    assert all(text_ is not None for text_, _, _ in ocr_rows(settings).values())


def test_extract_text_on_a_blank_image_is_empty() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (448, 448), (240, 240, 240)).save(buf, "PNG")
    result = extract_text(buf.getvalue())
    assert (result.text, result.cjk_chars, result.has_zh_text) == ("", 0, False)
