"""The crawler's image worker processes: results equal in-thread work, and a dying worker loses nothing."""

from __future__ import annotations

import hashlib
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from PIL import Image

from tuwen.crawl.images import ImageDecision, ImageLimits, inspect_and_normalize
from tuwen_crawler.image_pool import ImageProcessPool

CRASH = b"bytes that kill the decoder"


def die_on_crash_bytes(data: bytes, content_type: str | None, limits: ImageLimits) -> ImageDecision:
    """Stands in for a decoder that crashes the process (a segfault in a codec, an OOM kill)."""
    if data == CRASH:
        os._exit(3)
    return inspect_and_normalize(data, content_type, limits)


def raise_on_crash_bytes(data: bytes, content_type: str | None, limits: ImageLimits) -> ImageDecision:
    """Stands in for a bug in the image code: an exception, not a dead process."""
    if data == CRASH:
        raise ValueError("the image code has a bug")
    return inspect_and_normalize(data, content_type, limits)


def photo_bytes(seed: int) -> bytes:
    image = Image.effect_noise((640, 480), 40 + seed).convert("RGB")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def test_worker_processes_decide_exactly_what_the_thread_would() -> None:
    pool = ImageProcessPool(2)
    try:
        for seed in range(3):
            data = photo_bytes(seed)
            assert pool.inspect(data, "image/jpeg", ImageLimits()) == inspect_and_normalize(data, "image/jpeg")
    finally:
        pool.shutdown()


def test_threads_sharing_the_workers_each_get_their_own_image_back() -> None:
    pool = ImageProcessPool(2)
    photos = [photo_bytes(seed) for seed in range(12)]
    try:
        with ThreadPoolExecutor(6) as threads:
            decisions = list(threads.map(lambda data: pool.inspect(data, "image/jpeg", ImageLimits()), photos))
        assert [d.sha256 for d in decisions] == [hashlib.sha256(p).hexdigest() for p in photos]
        assert all(d.accepted and d.model is not None for d in decisions)
    finally:
        pool.shutdown()


def test_an_exception_in_the_image_code_reaches_the_caller_and_the_worker_lives_on() -> None:
    pool = ImageProcessPool(1, work=raise_on_crash_bytes)
    try:
        pool.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _spawned_workers():
            time.sleep(0.1)
        (worker,) = _spawned_workers()
        with pytest.raises(ValueError, match="has a bug"):
            pool.inspect(CRASH, "image/jpeg", ImageLimits())
        assert pool.inspect(photo_bytes(3), "image/jpeg", ImageLimits()).accepted
        assert _spawned_workers() == {worker}
    finally:
        pool.shutdown()


def test_a_worker_that_dies_rejects_only_its_image_and_the_pool_recovers() -> None:
    pool = ImageProcessPool(1, work=die_on_crash_bytes)
    try:
        crashed = pool.inspect(CRASH, "image/jpeg", ImageLimits())
        assert (crashed.accepted, crashed.reason) == (False, "corrupt")
        assert crashed.sha256 == hashlib.sha256(CRASH).hexdigest()
        assert crashed.n_bytes == len(CRASH)
        # The next image gets a fresh worker and a normal verdict.
        after = pool.inspect(photo_bytes(7), "image/jpeg", ImageLimits())
        assert after.accepted and after.model is not None
    finally:
        pool.shutdown()



def _spawned_workers() -> set[int]:
    """Pids of this process's spawned pool workers (multiprocessing's resource tracker is not one)."""
    return {p.pid for p in psutil.Process().children()
            if "spawn_main" in " ".join(p.cmdline()) and "resource_tracker" not in " ".join(p.cmdline())}


def test_start_spawns_every_worker_before_the_first_image() -> None:
    pool = ImageProcessPool(2)
    try:
        pool.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_spawned_workers()) < 2:
            time.sleep(0.1)
        workers = _spawned_workers()
        assert len(workers) == 2
        data = photo_bytes(1)
        assert pool.inspect(data, "image/jpeg", ImageLimits()) == inspect_and_normalize(data, "image/jpeg")
        assert _spawned_workers() == workers  # the image went to a started worker, no new one
    finally:
        pool.shutdown()
