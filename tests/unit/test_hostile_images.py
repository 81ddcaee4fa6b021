"""The hostile corpus (tuwen.local.hostile_images): every file refused with its reason, quickly, and
the honest files built the same ways still accepted."""

from __future__ import annotations

import hashlib
import time

import pytest

from tuwen.crawl.images import REJECT_REASONS, ImageLimits, inspect_and_normalize
from tuwen.local.hostile_images import HostileImage, accepted_controls, hostile_images

# Without the structural checks the scan bomb took 3.6 s and each memory bomb 3-5 s and ~0.5 GB here;
# refused by their headers they take milliseconds. The bound leaves room for a crowded CI machine.
SECONDS_PER_IMAGE = 1.5
FORMATS = {"JPEG", "PNG", "GIF", "WEBP", "BMP"}


def test_the_corpus_covers_every_web_format_and_attack() -> None:
    corpus = hostile_images()
    assert {image.format for image in corpus} == FORMATS
    for fmt in FORMATS:
        names = {image.name for image in corpus if image.format == fmt}
        assert any("truncated" in name for name in names), fmt
        assert any("memory-bomb" in name for name in names), fmt
    assert {"scan_bomb", "decode_memory", "corrupt"} <= {image.reason for image in corpus}
    assert all(image.reason in REJECT_REASONS for image in corpus)
    assert len({image.name for image in corpus}) == len(corpus)


def test_the_corpus_is_the_same_bytes_on_every_run() -> None:
    # Deterministic generators: the fixture site's manifest records their SHA-256.
    first = [hashlib.sha256(image.data).hexdigest() for image in hostile_images()]
    hostile_images.cache_clear()
    try:
        assert [hashlib.sha256(image.data).hexdigest() for image in hostile_images()] == first
    finally:
        hostile_images.cache_clear()


@pytest.mark.parametrize("image", hostile_images(), ids=lambda image: image.name)
def test_each_hostile_image_is_refused_with_its_reason_in_bounded_time(image: HostileImage) -> None:
    started = time.perf_counter()
    decision = inspect_and_normalize(image.data, image.content_type, ImageLimits())
    elapsed = time.perf_counter() - started
    assert (decision.accepted, decision.reason) == (False, image.reason), image.what
    assert decision.sha256 == hashlib.sha256(image.data).hexdigest()
    assert elapsed < SECONDS_PER_IMAGE, f"{image.name} took {elapsed:.2f} s"


@pytest.mark.parametrize("image", accepted_controls(), ids=lambda image: image.name)
def test_honest_images_built_the_same_ways_are_accepted(image: HostileImage) -> None:
    decision = inspect_and_normalize(image.data, image.content_type, ImageLimits())
    assert decision.accepted, (image.name, decision.reason)
    assert decision.format == image.format and decision.model is not None
