"""Curation throughput per core, and what the seed's 641,868 images cost in core-hours.

    python -m bench curate            (or: .venv/bin/python -m bench.bench_curate [--rounds 2])

The images are the standard fixture site's accepted ones as model-ready copies (signs, posters, menus
with Chinese text, photo stand-ins, QR posters, placeholders, a logo, a banner): their copies go into an
S3 server and `image` rows into a throwaway database, and `tuwen.curate.run.curate_pending` curates them
in this one process with every library pinned to one thread (OpenCV, ONNX Runtime for OCR and NudeNet),
so images per CPU-second is images per core. Three passes:

  1. first curation: OCR where missing + every filter + the verdict rows (what the crawl DAG's mapped
     `curate` tasks do for a new partition);
  2. re-curation after a threshold change: the filters again from the stored objects, OCR text reused;
  3. the same without the unsafe filter (TUWEN_CURATE_FILTERS_OFF=unsafe), to show its share.

Prints images/s per core per pass and the core-hours of each at 641,868 images; `--record` appends them to
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
from sqlalchemy import insert

from bench.common import bench_settings, machine, record_result
from tuwen.crawl.images import inspect_and_normalize
from tuwen.curate import filters
from tuwen.curate.run import curate_pending
from tuwen.db.models import CrawlRun, Image
from tuwen.local.fixture_site import generate_site
from tuwen.resources import Resources
from tuwen.storage import ObjectStore, model_key

SEED_IMAGES = 641_868
DAY = dt.date(2026, 11, 21)


def _fixture_copies(work: Path) -> list[tuple[bytes, str]]:
    site = work / "site"
    manifest = generate_site(site, seed=7, profile="standard")
    copies = []
    for image in manifest.images.values():
        if image.outcome == "accepted" and image.file:
            decision = inspect_and_normalize((site / "www" / image.file).read_bytes(), image.content_type)
            assert decision.model is not None
            copies.append((decision.model.data, decision.model.mime))
    return copies


def _seed(settings, copies: list[tuple[bytes, str]], rounds: int) -> int:  # type: ignore[no-untyped-def]
    """Store the copies `rounds` times (round r re-encoded with r bytes appended: distinct objects)."""
    store = ObjectStore(settings)
    resources = Resources.from_settings(settings)
    rows = []
    with resources.engine.begin() as conn:
        run_id = conn.execute(insert(CrawlRun).values(spider="bench-curate", partition_date=DAY)
                              .returning(CrawlRun.id)).scalar_one()
    for r in range(rounds):
        for data, mime in copies:
            body = data + b"\0" * r  # trailing bytes after the end marker: the same pixels, another object
            sha = hashlib.sha256(body).hexdigest()
            key = model_key(sha, "png" if mime == "image/png" else "jpg")
            store.put_bytes(key, body, mime)
            rows.append({"sha256": sha, "model_key": key, "original_key": key, "model_mime": mime,
                         "status": "accepted", "crawl_date": DAY, "first_crawl_run_id": run_id})
    with resources.engine.begin() as conn:
        conn.execute(insert(Image), rows)
    return len(rows)


def _pass(resources: Resources, label: str, config: filters.CurationConfig) -> dict:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    summary = curate_pending(resources, DAY, config=config)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    per_core = summary.images / cpu
    row = {"pass": label, "images": summary.images, "ocr_images": summary.ocr_images, "wall_s": round(wall, 1),
           "cpu_s": round(cpu, 1), "images_per_s_per_core": round(per_core, 2),
           "core_hours_641868": round(SEED_IMAGES / per_core / 3600, 1), "by_status": summary.by_status}
    print(f"{label}: {summary.images} images ({summary.ocr_images} OCRed) in {wall:.1f}s wall, {cpu:.1f}s CPU = "
          f"{per_core:.2f} images/s per core -> {row['core_hours_641868']} core-hours for {SEED_IMAGES:,} images; "
          f"{summary.by_status}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="copies of the fixture's accepted images")
    parser.add_argument("--record", action="store_true", help="append the result to docs/BENCHMARKS.md")
    args = parser.parse_args([] if argv is None else argv)
    cv2.setNumThreads(1)  # one core: OpenCV's own pool would spread the filters over every core
    with tempfile.TemporaryDirectory(prefix="tuwen-bench-curate-") as tmp, bench_settings(Path(tmp)) as settings:
        settings = dataclasses.replace(settings, ocr_enabled=True)
        copies = _fixture_copies(Path(tmp))
        n = _seed(settings, copies, args.rounds)
        print(f"== curation ({machine()}): {n} model-ready copies of the fixture's {len(copies)} accepted images ==",
              flush=True)
        resources = Resources.from_settings(settings)
        default = filters.CurationConfig()
        rows = [_pass(resources, "first curation (OCR + all filters)", default),
                _pass(resources, "re-curation (stored OCR, all filters)", dataclasses.replace(default, qr_max_area_share=0.13)),
                _pass(resources, "re-curation without the unsafe filter",
                      dataclasses.replace(default, disabled=frozenset({"unsafe"})))]
    print(json.dumps(rows, indent=1))
    if args.record:
        lines = [f"### {dt.date.today().isoformat()} — {machine()}, `python -m bench curate --rounds {args.rounds} --record`",
                 "", "| pass | images | OCRed | images/s per core | core-hours at 641,868 images |",
                 "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['pass']} | {r['images']} | {r['ocr_images']} | {r['images_per_s_per_core']} | "
                  f"{r['core_hours_641868']} |" for r in rows]
        record_result("Curation (python -m bench curate)", "\n".join(lines),
                      intro="Curation per core (one process, OpenCV and ONNX Runtime on one thread) over the "
                            "fixture site's accepted images as model-ready copies; bench/bench_curate.py.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
