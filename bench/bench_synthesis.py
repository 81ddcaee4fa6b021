"""Synthesis throughput against the stand-in at a fixed latency: is the client the bottleneck?

3,000 images are in the store (model-ready copies in S3, rows in PostgreSQL). One batch runs them
end to end — read the image from S3, base64-encode, call the stand-in, parse, write generation and
sample — with 128 requests in flight. By Little's law the ideal is 128 in flight / 1.0 s latency =
128 samples/s; the score is the achieved fraction (target >= 0.85) and the client process's CPU
milliseconds per sample (target <= 5 ms). Repeated with log-normal latency (median 1 s, p99 10 s).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import text

from bench.common import bench_settings, machine, seed_images
from tuwen.domain import Partition
from tuwen.resources import Resources
from tuwen.synthesis.keys import RunParams
from tuwen.synthesis.planning import plan_partition
from tuwen.synthesis.runner import run_batch

IN_FLIGHT = 128
N_IMAGES = 3000
DAY = Partition(dt.date(2026, 11, 19), dt.date(2026, 11, 20))


def _run(settings, standin_root: str, latency: str, label: str) -> dict:
    httpx.post(f"{standin_root}/stand-in/faults", json={"latency": latency}).raise_for_status()
    httpx.post(f"{standin_root}/stand-in/stats/reset").raise_for_status()
    resources = Resources.from_settings(settings)
    with resources.engine.begin() as conn:
        conn.execute(text("TRUNCATE sample, generation RESTART IDENTITY CASCADE"))
    plan = plan_partition(resources, DAY, RunParams())
    ids = [i for batch in plan.batches for i in batch["image_ids"]]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = run_batch(resources, ids, RunParams())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    done = result.succeeded + result.unparseable
    rate = done / wall
    stats = httpx.get(f"{standin_root}/stand-in/stats").json()
    row = {"label": label, "samples": done, "failed": result.failed, "wall_s": wall, "samples_per_s": rate,
           "fraction_of_ideal": rate / (IN_FLIGHT / 1.0), "cpu_ms_per_sample": 1000 * cpu / max(done, 1),
           "max_in_flight_seen": stats.get("max_in_flight")}
    print(f"{label}: {done} samples in {wall:.1f}s = {rate:.1f}/s = {row['fraction_of_ideal']:.3f} of ideal "
          f"128/s; client CPU {row['cpu_ms_per_sample']:.2f} ms/sample; max in flight at server "
          f"{row['max_in_flight_seen']}")
    return row


def main() -> list[dict]:
    from tuwen.local.standin_vlm import StandinProcess

    print(f"== synthesis benchmark ({machine()}): {N_IMAGES} images, {IN_FLIGHT} in flight ==")
    with tempfile.TemporaryDirectory() as tmp, bench_settings(Path(tmp)) as settings, \
            StandinProcess(latency="fixed:1.0") as vlm:
        settings = dataclasses.replace(settings, vlm_base_url=vlm.base_url, vlm_model=vlm.model,
                                       vlm_max_in_flight=IN_FLIGHT, vlm_timeout_s=60.0)
        t0 = time.perf_counter()
        seed_images(settings, N_IMAGES, DAY.start)
        print(f"seeded {N_IMAGES} images into S3 + PostgreSQL in {time.perf_counter() - t0:.1f}s")
        root = vlm.base_url.removesuffix("/v1")
        return [
            _run(settings, root, "fixed:1.0", "fixed 1.0 s latency"),
            _run(settings, root, "lognormal:1.0,10.0", "log-normal latency (median 1 s, p99 10 s)"),
        ]


if __name__ == "__main__":
    main()
    sys.exit(0)
