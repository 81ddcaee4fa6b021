"""The crawler's image worker processes: results equal in-thread work, a dying worker loses nothing, and
every job is bounded in CPU time, wall time and memory (a worker over a limit is replaced and the image
gets its reason)."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import psutil
import pytest
from PIL import Image

from tuwen.crawl.images import ImageDecision, ImageLimits, inspect_and_normalize, warm_up
from tuwen.local.hostile_images import jpeg_scan_bomb, png_memory_bomb
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


def spin_on_crash_bytes(data: bytes, content_type: str | None, limits: ImageLimits) -> ImageDecision:
    """Stands in for a decoder in an endless loop on hostile bytes, using CPU."""
    if data == CRASH:
        while True:
            pass
    return inspect_and_normalize(data, content_type, limits)


def sleep_on_crash_bytes(data: bytes, content_type: str | None, limits: ImageLimits) -> ImageDecision:
    """Stands in for a worker stuck without using CPU (a deadlock in a library)."""
    if data == CRASH:
        time.sleep(3600)
    return inspect_and_normalize(data, content_type, limits)


def allocate_on_crash_bytes(data: bytes, content_type: str | None, limits: ImageLimits) -> ImageDecision:
    """Stands in for a decoder that allocates without bound: 4 GiB in 64 MiB pieces."""
    if data == CRASH:
        hoard = [bytearray(64 << 20) for _ in range(64)]
        raise AssertionError(f"allocated {len(hoard)} pieces under the memory cap")
    return inspect_and_normalize(data, content_type, limits)


SLOW_WARM_UP_SECONDS = 3.0


def slow_warm_up() -> None:
    """Stands in for a worker's start-up on a crowded machine: the usual warm-up, then seconds more."""
    warm_up()
    time.sleep(SLOW_WARM_UP_SECONDS)


def within(seconds: float, call: Callable[[], ImageDecision]) -> ImageDecision:
    """The call's result, or a failure (not a hung test) when the pool does not answer in time."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(call).result(timeout=seconds)


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


def test_an_exception_in_the_image_code_is_a_corrupt_rejection_and_the_worker_lives_on(
        caplog: pytest.LogCaptureFixture) -> None:
    # Raised out of the pool, it would leave the mention without a lineage row (Scrapy drops the item).
    pool = ImageProcessPool(1, work=raise_on_crash_bytes)
    try:
        pool.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _spawned_workers():
            time.sleep(0.1)
        (worker,) = _spawned_workers()
        decision = pool.inspect(CRASH, "image/jpeg", ImageLimits())
        assert (decision.accepted, decision.reason) == (False, "corrupt")
        assert decision.sha256 == hashlib.sha256(CRASH).hexdigest()
        assert "the image code has a bug" in caplog.text  # the worker's traceback, for whoever fixes it
        assert pool.inspect(photo_bytes(3), "image/jpeg", ImageLimits()).accepted
        assert _spawned_workers() == {worker}
    finally:
        pool.shutdown()


def test_in_thread_work_that_raises_is_a_corrupt_rejection_too() -> None:
    decision = ImageProcessPool(0, work=raise_on_crash_bytes).inspect(CRASH, "image/jpeg", ImageLimits())
    assert (decision.accepted, decision.reason) == (False, "corrupt")


def test_a_job_over_its_cpu_time_is_killed_and_the_image_is_decode_timeout() -> None:
    pool = ImageProcessPool(1, work=spin_on_crash_bytes)
    limits = ImageLimits(job_cpu_seconds=1)
    try:
        assert within(120, lambda: pool.inspect(photo_bytes(1), "image/jpeg", limits)).accepted
        (before,) = _spawned_workers()
        started = time.monotonic()
        decision = within(60, lambda: pool.inspect(CRASH, "image/jpeg", limits))
        assert (decision.accepted, decision.reason) == (False, "decode_timeout")
        assert time.monotonic() - started < 10  # the kernel's SIGXCPU, not the 60 s wall deadline
        assert not psutil.pid_exists(before) or psutil.Process(before).status() == psutil.STATUS_ZOMBIE
        # A fresh worker takes the next image.
        assert within(120, lambda: pool.inspect(photo_bytes(2), "image/jpeg", limits)).accepted
        assert before not in _spawned_workers()
    finally:
        pool.shutdown()


def test_a_fresh_workers_start_up_does_not_count_against_the_first_jobs_wall_time() -> None:
    # Spawning, importing and warming up take seconds (tens on a crowded machine); the deadline is the
    # job's own, so the first image of a fresh worker is not refused as decode_timeout. A warm-up made
    # slower than the job's wall limit shows it on any machine: counted, it would time the job out.
    pool = ImageProcessPool(1, warm=slow_warm_up)
    try:
        started = time.monotonic()
        decision = within(300, lambda: pool.inspect(photo_bytes(4), "image/jpeg", ImageLimits(job_wall_seconds=1.0)))
        assert decision.accepted, decision.reason
        assert time.monotonic() - started > SLOW_WARM_UP_SECONDS  # the job waited for the slow start-up
    finally:
        pool.shutdown()


def test_a_job_stuck_past_its_wall_time_is_killed_and_no_worker_is_left_hung() -> None:
    pool = ImageProcessPool(1, work=sleep_on_crash_bytes)
    try:
        assert within(120, lambda: pool.inspect(photo_bytes(1), "image/jpeg", ImageLimits())).accepted
        (stuck,) = _spawned_workers()
        decision = within(60, lambda: pool.inspect(CRASH, "image/jpeg", ImageLimits(job_wall_seconds=2)))
        assert (decision.accepted, decision.reason) == (False, "decode_timeout")
        assert not psutil.pid_exists(stuck)
        assert within(120, lambda: pool.inspect(photo_bytes(2), "image/jpeg", ImageLimits())).accepted
    finally:
        pool.shutdown()
    assert not _spawned_workers()


def test_a_job_over_its_memory_cap_is_decode_memory_and_the_worker_goes_on() -> None:
    pool = ImageProcessPool(1, work=allocate_on_crash_bytes)
    limits = ImageLimits(job_memory_bytes=256 << 20)
    try:
        assert within(120, lambda: pool.inspect(photo_bytes(1), "image/jpeg", limits)).accepted
        (worker,) = _spawned_workers()
        decision = within(60, lambda: pool.inspect(CRASH, "image/jpeg", limits))
        assert (decision.accepted, decision.reason) == (False, "decode_memory")
        assert within(60, lambda: pool.inspect(photo_bytes(2), "image/jpeg", limits)).accepted
        assert _spawned_workers() == {worker}
    finally:
        pool.shutdown()


def test_real_bombs_past_the_structural_checks_are_stopped_by_the_worker_limits() -> None:
    # With the header checks switched off, the limits are the backstop: the scan bomb's decode runs
    # out of CPU, the memory bomb's conversions out of address space.
    unchecked = replace(ImageLimits(), max_jpeg_scans=1_000_000, max_decode_bytes=1 << 40)
    pool = ImageProcessPool(1)
    try:
        assert within(120, lambda: pool.inspect(photo_bytes(1), "image/jpeg", unchecked)).accepted
        # Tens of seconds of CPU: 20,000 scans over 3 MP.
        heavy_scan_bomb = jpeg_scan_bomb(scans=20_000, size=(2048, 1536))
        decision = within(60, lambda: pool.inspect(heavy_scan_bomb, "image/jpeg",
                                                   replace(unchecked, job_cpu_seconds=1)))
        assert decision.reason == "decode_timeout"
        decision = within(60, lambda: pool.inspect(png_memory_bomb(), "image/png",
                                                   replace(unchecked, job_memory_bytes=200 << 20)))
        assert decision.reason == "decode_memory"
        assert within(120, lambda: pool.inspect(photo_bytes(2), "image/jpeg", ImageLimits())).accepted
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
