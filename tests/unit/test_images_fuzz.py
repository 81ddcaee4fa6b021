"""Property test of inspect_and_normalize over mutated valid images of every web format: it never
raises, always returns a decision with a known reason, and each call stays within a time bound."""

from __future__ import annotations

import functools
import hashlib
import io
import re
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tuwen.crawl.images import REJECT_REASONS, ImageLimits, inspect_and_normalize

SECONDS_PER_CALL = 2.0  # a generous bound: honest seeds take ~20 ms, refused mutants less
LIMITS = ImageLimits()


@functools.cache
def seeds() -> tuple[bytes, ...]:
    grid = np.random.default_rng(5).integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    picture = Image.fromarray(grid, "RGB").resize((300, 240), Image.Resampling.BICUBIC)

    def save(image: Image.Image, fmt: str, **options: object) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        return buffer.getvalue()

    frames = [picture.quantize(16), picture.rotate(90).quantize(16)]
    return (
        save(picture, "JPEG", quality=80),
        save(picture, "JPEG", quality=80, progressive=True),
        save(picture.convert("L"), "JPEG"),
        save(picture, "PNG"),
        save(picture.convert("RGBA"), "PNG"),
        save(picture.quantize(64), "GIF"),
        save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        save(picture, "WEBP", quality=70),
        save(picture, "WEBP", lossless=True),
        save(picture, "BMP"),
    )


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds())))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "cut_near_marker", "insert", "delete", "header"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "cut_near_marker":
            # Files cut just after a structure's first bytes (a GIF frame's descriptor, a JPEG marker,
            # a PNG chunk header) reach the parsers' rarer paths; random cuts seldom land there.
            marker = draw(st.sampled_from([b"\x2c", b"\x21\xf9", b"\xff", b"IDAT", b"VP8", b"ANMF"]))
            found = [m.start() for m in re.finditer(re.escape(marker), data)][:64]
            if found:
                del data[draw(st.sampled_from(found)) + draw(st.integers(0, 12)):]
        elif kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0xD9, 0xDA, 0x7F, 0x80]))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 256))]
        else:  # a number in the first 64 bytes, where every format keeps its sizes and counts
            spot = draw(st.integers(0, max(0, min(60, len(data) - 2))))
            data[spot:spot + 2] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
        if not data:
            break
    return bytes(data)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_images())
def test_mutated_images_always_get_a_decision_quickly(data: bytes) -> None:
    started = time.perf_counter()
    decision = inspect_and_normalize(data, "image/jpeg", LIMITS)
    elapsed = time.perf_counter() - started
    assert decision.sha256 == hashlib.sha256(data).hexdigest() and decision.n_bytes == len(data)
    if decision.accepted:
        assert decision.reason is None and decision.model is not None and decision.phash is not None
    else:
        assert decision.reason in REJECT_REASONS and decision.model is None
    assert elapsed < SECONDS_PER_CALL, f"{elapsed:.2f} s"
