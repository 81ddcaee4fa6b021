"""Crawl throughput: the fixture site's bench profile crawled into moto's S3 server and PostgreSQL.

    .venv/bin/python -m bench.bench_crawl [--images 2000] [--workers 6] [--concurrency 32] [--ocr-images 50]
                                        [--preseed 641868]

Each image is downloaded, hashed (SHA-256 + pHash), decoded, resized to the Qwen2.5-VL budget, encoded,
uploaded twice (raw/ + model/) and recorded (image + image_source rows, near-duplicate check under the
advisory lock); OCR is off during the crawl. Prints images/s (accepted images over the crawl's own
elapsed time, and over wall time including process start-up), the crawl process's peak RSS, and OCR
throughput per core on the standard fixture's text images (model-ready copies, 1 ONNX thread).
`images_per_s_steady` is the rate between 10% and 90% of the accepted images, without start-up and drain;
`idle_share_steady` is the share of the cores left idle over that span;
`timeline_s` says when the first, 10 %, 90 % and last accepted image were counted;
`cpu_ms_per_image_steady` is each process's CPU over that span per accepted image (the crawl process,
its image workers, the S3 server, the web server and the database's backends for this crawl; they all
share the same cores); `cpu_reference_ms` times one Pillow decode + encode of a bench image on one core;
`image_work_ms` times each stage of the image work on one core (best of 5 over 20 bench photos), on the
planar path colour JPEGs take and on the BGR path every other image takes.
`cpu_ms_per_image_run` is each process's CPU over the whole run per image, start-up included.

Side by side with img2dataset (issue 19):

    .venv/bin/python -m bench.bench_crawl --img2dataset [--rounds 2] [--img2dataset-output s3|local]
                                        [--img2dataset-format files|webdataset] [--img2dataset-python PATH]

installs img2dataset (pinned, with s3fs) into a throwaway venv under the bench's temp dir (or uses
PATH's), then runs it and the crawl one after the other on the same generated photos, served by the
same web server; each round flips the order. img2dataset gets the accepted photos' URLs (no pages, no
robots.txt) and does the comparable work at its fastest settings (see img2dataset_options); its
images/s is images written over its `download()` call, the crawl's is accepted images over Scrapy's
elapsed time. By default img2dataset writes to an S3 server of the crawl's kind, started for it (image
and JSON, two objects per image, as the crawl's raw/ and model/): the same server, the fair comparison;
`--img2dataset-output local` has it write local files instead. Prints both sides' runs and
`side_by_side`, the medians and the crawl's ratio to img2dataset.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import psutil
from PIL import Image
from sqlalchemy import text

from bench.common import machine
from tuwen.config import Settings
from tuwen.crawl import images
from tuwen.crawl.images import inspect_and_normalize
from tuwen.crawl.ocr import extract_text
from tuwen.crawl.run import LOG_DIR, start_crawl
from tuwen.db.migrate import upgrade
from tuwen.db.session import get_engine
from tuwen.local.fixture_site import ExpectedImage, FixtureSiteProcess, SiteManifest, generate_site
from tuwen.local.services import drop_database, ensure_database, free_port, s3_service
from tuwen.storage import ObjectStore


def preseed_accepted_images(database_url: str, n: int) -> float:
    """n accepted image rows with random pHashes (no objects), COPYed in and vacuumed: the database of a
    project that already holds the seed's 641,868 images, which every near-duplicate check must search.
    Returns the seconds it took."""
    from bench.bench_export import _copy  # the benchmarks' one COPY helper

    started = time.perf_counter()
    rng = np.random.default_rng(11)
    hashes = rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64)
    rows = ((hashlib.sha256(f"preseed-{k}".encode()).hexdigest(), int(h), 896, 672, "JPEG", 120_000,
             "accepted", dt.date(2024, 1, 1)) for k, h in enumerate(hashes))
    _copy(Settings(database_url=database_url), "image",
          "sha256, phash, width, height, format, n_bytes, status, crawl_date", rows)
    with get_engine(database_url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) image"))
    return time.perf_counter() - started


ACCEPTED_SO_FAR = text("SELECT count(*) FROM image WHERE status = 'accepted' AND first_crawl_run_id IS NOT NULL")


BENCH_BACKENDS = text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")


class CpuLedger:
    """CPU seconds used so far by each role in the benchmark (every process shares the same cores), with
    the last reading kept for processes that have exited (PostgreSQL backends come and go)."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[str, float]] = {}

    def read(self, role: str, pids: list[int]) -> None:
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            self._last[pid] = (role, times.user + times.system)

    def totals(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for role, seconds in self._last.values():
            totals[role] = totals.get(role, 0.0) + seconds
        return totals


Progress = tuple[float, int, dict[str, float]]  # (seconds, accepted images so far, CPU seconds per role)
IDLE = "machine_idle"  # the ledger's entry for the cores' idle time (not a process's)


def _steady_span(progress: list[Progress], total: int) -> tuple[Progress, Progress] | None:
    """The samples at 10% and 90% of the crawl's accepted images: after the process has started, its
    workers spawned and the first pages arrived, before the last requests drain."""
    try:
        start = next(p for p in progress if p[1] >= 0.1 * total)
        end = next(p for p in progress if p[1] >= 0.9 * total)
    except StopIteration:
        return None
    return (start, end) if end[1] > start[1] and end[0] > start[0] else None


def steady_rate(progress: list[Progress], total: int) -> float | None:
    span = _steady_span(progress, total)
    return round((span[1][1] - span[0][1]) / (span[1][0] - span[0][0]), 1) if span else None


def timeline(progress: list[Progress], total: int, started: float) -> dict[str, float]:
    """Seconds after the crawl process started at which the first, 10 %, 90 % and last accepted image
    were counted (sampled every 0.25 s): where start-up and drain go."""
    marks = {"first": 1, "p10": 0.1 * total, "p90": 0.9 * total, "last": total}
    return {name: round(next(p[0] for p in progress if p[1] >= need) - started, 2)
            for name, need in marks.items() if total and any(p[1] >= need for p in progress)}


def steady_cpu_ms_per_image(progress: list[Progress], total: int) -> dict[str, float]:
    """CPU milliseconds per accepted image of each role over the same steady span."""
    span = _steady_span(progress, total)
    if span is None:
        return {}
    (_, n0, cpu0), (_, n1, cpu1) = span
    per_role = {role: round((cpu1[role] - cpu0.get(role, 0.0)) / (n1 - n0) * 1000, 2) for role in cpu1
                if role != IDLE}
    return {**per_role, "total": round(sum(per_role.values()), 2)}


def run_cpu_ms_per_image(progress: list[Progress], ledger: CpuLedger, total: int) -> dict[str, float]:
    """CPU milliseconds per image of each role over the whole run, start-up included, counted from the
    first sample (the web server serves every side of a run; its earlier CPU is not this one's)."""
    first = progress[0][2] if progress else {}
    return {role: round((seconds - first.get(role, 0.0)) / total * 1000, 2)
            for role, seconds in ledger.totals().items()} if total else {}


def steady_idle_share(progress: list[Progress], total: int) -> float | None:
    """The share of the machine's cores that sat idle over the steady span: what is left on the table
    when the crawl's processes do not keep both cores busy."""
    span = _steady_span(progress, total)
    if span is None:
        return None
    (t0, _, cpu0), (t1, _, cpu1) = span
    return round((cpu1[IDLE] - cpu0[IDLE]) / ((t1 - t0) * (psutil.cpu_count() or 1)), 3)


def cpu_reference_ms(jpeg: bytes) -> float:
    """Milliseconds one core takes to decode and re-encode `jpeg` with Pillow (best of 20).

    This vm's speed drifts by a third within an hour (its host is shared); crawl results taken at
    different times compare only next to this number."""
    best = float("inf")
    for _ in range(20):
        started = time.process_time()
        with Image.open(io.BytesIO(jpeg)) as image:
            image.save(io.BytesIO(), format="JPEG", quality=90)
        best = min(best, time.process_time() - started)
    return round(best * 1000, 2)


def image_work_ms(jpegs: list[bytes]) -> dict[str, float]:
    """One core's milliseconds per photo for each stage of the image work, best of 5 rounds over `jpegs`:
    the whole of inspect_and_normalize, then each stage on the planar path and on the BGR path."""
    headers = [Image.open(io.BytesIO(data)) for data in jpegs]
    planes = [images._decode_ycbcr_planes(d, h) for d, h in zip(jpegs, headers, strict=True)]
    bgrs = [images._decode_plain_jpeg(d, h) for d, h in zip(jpegs, headers, strict=True)]
    assert all(p is not None for p in planes) and all(b is not None for b in bgrs)
    sizes = [images.smart_resize(*b.shape[:2]) for b in bgrs]  # (height, width)

    def resize_planes(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return images.resize_planes(planes[i], sizes[i][1], sizes[i][0])

    def resize_bgr(i: int) -> np.ndarray:
        return images.resize_pixels(bgrs[i], sizes[i][1], sizes[i][0])

    resized_planes = [resize_planes(i) for i in range(len(jpegs))]
    resized_bgrs = [resize_bgr(i) for i in range(len(jpegs))]
    stages = {
        "whole": lambda i: inspect_and_normalize(jpegs[i]),
        "decode_planes": lambda i: images._decode_ycbcr_planes(jpegs[i], headers[i]),
        "decode_bgr": lambda i: images._decode_plain_jpeg(jpegs[i], headers[i]),
        "resize_planes": resize_planes,
        "resize_bgr": resize_bgr,
        "encode_planes": lambda i: images._encode_planes(*resized_planes[i]),
        "encode_bgr": lambda i: cv2.imencode(".jpg", resized_bgrs[i], [cv2.IMWRITE_JPEG_QUALITY, images.JPEG_QUALITY]),
        "phash_y": lambda i: images.phash_int64(planes[i].y),
        "phash_bgr": lambda i: images.phash_int64(bgrs[i]),
    }
    result = {}
    for name, stage in stages.items():
        best = float("inf")
        for _ in range(5):
            started = time.process_time()
            for i in range(len(jpegs)):
                stage(i)
            best = min(best, (time.process_time() - started) / len(jpegs))
        result[name] = round(best * 1000, 2)
    return result


@dataclass(frozen=True)
class BenchSite:
    """The generated bench site and its web server, shared by every side of a run."""

    dir: Path
    manifest: SiteManifest
    server: FixtureSiteProcess
    generated_s: float

    @property
    def accepted(self) -> list[ExpectedImage]:
        return [img for img in self.manifest.images.values() if img.outcome == "accepted"]


@contextmanager
def bench_site(work: Path, images: int) -> Iterator[BenchSite]:
    site_dir = work / "site"
    started = time.perf_counter()
    manifest = generate_site(site_dir, seed=3, profile="bench", images=images)
    generated_s = time.perf_counter() - started
    with FixtureSiteProcess(site_dir) as server:
        yield BenchSite(site_dir, manifest, server, generated_s)


def crawl_bench(site: BenchSite, workers: int, concurrency: int, preseed: int = 0) -> dict[str, object]:
    work = site.dir.parent
    accepted_images = site.accepted
    sizes = [img.bytes or 0 for img in accepted_images]
    reference_ms = cpu_reference_ms((site.dir / "www" / (accepted_images[0].file or "")).read_bytes())
    stage_ms = image_work_ms([(site.dir / "www" / (img.file or "")).read_bytes() for img in accepted_images[:20]])
    database_url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/tuwen_bench_crawl_{uuid.uuid4().hex[:8]}"
    ensure_database(database_url)
    s3_port = free_port()
    s3 = s3_service(s3_port, run_dir=work, on_disk=False)  # the crawler is measured, not the stand-in's disk
    s3.start()
    try:
        upgrade(database_url)
        preseed_s = preseed_accepted_images(database_url, preseed) if preseed else 0.0
        sites = work / "sites.yaml"
        sites.write_text(json.dumps({"sites": [{
            "name": "bench", "start_urls": [f"{site.server.url}/index.html"], "allowed_domains": ["127.0.0.1"],
            "max_depth": 2, "max_pages": 10_000, "allow_private_addresses": True,
            "politeness": {"download_delay": 0, "concurrency_per_domain": concurrency,
                           "autothrottle_target": float(concurrency)},
        }]}))
        settings = Settings(database_url=database_url, s3_endpoint=f"127.0.0.1:{s3_port}", s3_bucket="bench",
                            sites_file=sites, ocr_enabled=False)
        log_path = LOG_DIR / f"bench-{uuid.uuid4().hex[:8]}.log"
        wall_start = time.perf_counter()
        process = start_crawl(settings, "bench", dt.date(2024, 1, 1), crawl_key=uuid.uuid4().hex, log_path=log_path,
                              extra_env={"TUWEN_CRAWL_WORKERS": str(workers),
                                         "TUWEN_CRAWL_CONCURRENT_REQUESTS": str(concurrency)})
        peak_rss = 0
        watched = psutil.Process(process.pid)
        cpu_samples = []
        progress: list[Progress] = []
        ledger = CpuLedger()
        s3_pid = int(s3.pid_file.read_text())
        assert site.server.process is not None
        with get_engine(database_url).connect() as counter:
            while process.poll() is None:
                try:
                    # The crawl process and its image worker processes together.
                    children = watched.children(recursive=True)
                    peak_rss = max(peak_rss, sum(p.memory_info().rss for p in [watched, *children]))
                    cpu_samples.append(watched.cpu_percent(interval=None))
                except psutil.NoSuchProcess:
                    break
                ledger.read("crawl_process", [watched.pid])
                ledger.read("image_workers", [child.pid for child in children])
                ledger.read("s3_server", [s3_pid])
                ledger.read("web_server", [site.server.process.pid])
                ledger.read("postgres_backends", list(counter.execute(BENCH_BACKENDS).scalars()))
                progress.append((time.perf_counter(), counter.execute(ACCEPTED_SO_FAR).scalar_one(),
                                 {**ledger.totals(), IDLE: psutil.cpu_times().idle}))
                counter.rollback()
                time.sleep(0.25)
        wall_s = time.perf_counter() - wall_start
        if process.returncode != 0:
            raise SystemExit(f"crawl failed (exit {process.returncode}); see {log_path}")
        with get_engine(database_url).connect() as conn:
            run = conn.execute(text("SELECT status, counts, stats FROM crawl_run")).one()
            accepted = conn.execute(ACCEPTED_SO_FAR).scalar_one()
        elapsed = float(run.stats["elapsed_time_seconds"])
        steady = steady_rate(progress, accepted)
        return {
            "images": len(accepted_images), "generated_s": round(site.generated_s, 1),
            "image_kb_median": round(statistics.median(sizes) / 1024), "status": run.status,
            "accepted": accepted, "expected_accepted": site.manifest.expected_counts["by_outcome"]["accepted"],
            "crawl_elapsed_s": round(elapsed, 1), "wall_s_incl_startup": round(wall_s, 1),
            "images_per_s": round(accepted / elapsed, 1), "images_per_s_wall": round(accepted / wall_s, 1),
            "images_per_s_steady": steady,
            "timeline_s": timeline(progress, accepted, wall_start),
            "cpu_ms_per_image_steady": steady_cpu_ms_per_image(progress, accepted),
            "idle_share_steady": steady_idle_share(progress, accepted),
            "cpu_ms_per_image_run": run_cpu_ms_per_image(progress, ledger, accepted),
            "peak_rss_mb": round(peak_rss / 2**20), "crawl_cpu_percent_median": statistics.median(cpu_samples[4:] or [0]),
            "workers": workers, "concurrency": concurrency, "log": str(log_path),
            "preseeded_accepted_images": preseed, "preseed_s": round(preseed_s, 1),
            "cpu_reference_ms": reference_ms, "image_work_ms": stage_ms,
        }
    finally:
        s3.stop()
        get_engine(database_url).dispose()
        drop_database(database_url)


# img2dataset, pinned: installed only into a throwaway venv when the side-by-side run asks for it; s3fs
# (the version matching img2dataset's fsspec) lets it write to the same S3 server as the crawl.
IMG2DATASET = ("img2dataset==1.47.0", "s3fs==2026.9.0")

# Runs in the throwaway venv: img2dataset's own entry point, timed from the call (its imports, like the
# crawl process's, are outside the timing; its worker processes are forked from this one). Then the
# images it wrote, from its own per-shard stats files.
_IMG2DATASET_DRIVER = """
import json, sys, time
import fsspec
from img2dataset import download
options = json.loads(sys.argv[1])
started = time.perf_counter()
download(**options)
elapsed = time.perf_counter() - started
fs, root = fsspec.core.url_to_fs(options["output_folder"])
written = sum(json.loads(fs.cat(path))["successes"] for path in fs.glob(root + "/*_stats.json"))
print(json.dumps({"elapsed_s": elapsed, "written": written}))
"""


def img2dataset_python(work: Path) -> Path:
    """A venv of its own under `work` with IMG2DATASET installed (PyPI); tuwen's venv never gets it."""
    venv = work / "img2dataset-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *IMG2DATASET],
                   check=True)
    return python


def img2dataset_options(url_list: Path, output: str, output_format: str, count: int, processes: int,
                        threads: int, image_size: int) -> dict[str, object]:
    """img2dataset doing the comparable work at its fastest: every URL downloaded, SHA-256 of the bytes
    (its default), decoded, resized keeping the ratio (bilinear both ways, as the crawler's resize for
    these sizes; its defaults are Lanczos up and area down, both slower), re-encoded as JPEG at the
    crawler's quality and written to `output` in `output_format` ("files": an image and a JSON per
    sample; "webdataset": a tar per shard; a parquet of the shard's metadata either way) — no EXIF
    extraction, no second copy, no database."""
    return {
        "url_list": str(url_list), "input_format": "txt", "output_folder": output, "output_format": output_format,
        "processes_count": processes, "thread_count": threads,
        # Shards of a quarter of each process's share, so that no process idles while the other drains.
        "number_sample_per_shard": max(1, -(-count // (4 * processes))),
        "image_size": image_size, "resize_mode": "keep_ratio", "resize_only_if_bigger": False,
        "upscale_interpolation": "linear", "downscale_interpolation": "linear",
        "encode_format": "jpg", "encode_quality": images.JPEG_QUALITY,
        "extract_exif": False, "compute_hash": "sha256", "timeout": 30, "retries": 0, "enable_wandb": False,
    }


def _files_written(output: Path) -> int:
    """The images img2dataset has written so far (one folder per shard)."""
    count = 0
    for shard in os.scandir(output):
        if shard.is_dir():
            count += sum(1 for entry in os.scandir(shard.path) if entry.name.endswith(".jpg"))
    return count


def img2dataset_bench(site: BenchSite, python: Path, processes: int, threads: int, output_to: str,
                      output_format: str) -> dict[str, object]:
    """img2dataset on the URLs of the site's accepted photos, served by the same web server the crawl uses,
    writing to local files (`output_to="local"`) or to an S3 server of the crawl's kind (`"s3"`)."""
    work = Path(tempfile.mkdtemp(prefix="img2dataset-", dir=site.dir.parent))
    url_list = work / "urls.txt"
    accepted_images = site.accepted
    url_list.write_text("".join(f"{site.server.url}{img.url}\n" for img in accepted_images))
    local = work / "out"
    env = dict(os.environ)
    s3 = None
    if output_to == "s3":
        s3_port = free_port()
        s3 = s3_service(s3_port, run_dir=work, on_disk=False)
        s3.start()
        settings = Settings(s3_endpoint=f"127.0.0.1:{s3_port}", s3_bucket="img2dataset")
        ObjectStore(settings).ensure_bucket()
        env["FSSPEC_S3"] = json.dumps({"endpoint_url": f"http://127.0.0.1:{s3_port}", "key": settings.s3_access_key,
                                       "secret": settings.s3_secret_key})
    output = "s3://img2dataset/out" if s3 is not None else str(local)
    # The model copies' shorter side is the photos' own, rounded to 28 px: 525-750 px, median about 640.
    options = img2dataset_options(url_list, output, output_format, len(accepted_images), processes, threads,
                                  image_size=640)
    log_path = work / "img2dataset.log"
    assert site.server.process is not None
    try:
        with open(log_path, "w") as log:
            wall_start = time.perf_counter()
            process = subprocess.Popen([str(python), "-c", _IMG2DATASET_DRIVER, json.dumps(options)],
                                       stdout=subprocess.PIPE, stderr=log, text=True, cwd=work, env=env)
            watched = psutil.Process(process.pid)
            progress: list[Progress] = []
            ledger = CpuLedger()
            peak_rss = 0
            while process.poll() is None:
                try:
                    processes_now = [watched, *watched.children(recursive=True)]
                    peak_rss = max(peak_rss, sum(p.memory_info().rss for p in processes_now))
                except psutil.NoSuchProcess:
                    break
                ledger.read("img2dataset", [p.pid for p in processes_now])
                ledger.read("web_server", [site.server.process.pid])
                if s3 is not None:
                    ledger.read("s3_server", [int(s3.pid_file.read_text())])
                # Progress is counted only where each image is a file of its own as soon as it is done.
                written = _files_written(local) if local.is_dir() and output_format == "files" else 0
                progress.append((time.perf_counter(), written, {**ledger.totals(), IDLE: psutil.cpu_times().idle}))
                time.sleep(0.25)
            stdout = process.communicate()[0]
            wall_s = time.perf_counter() - wall_start
    finally:
        if s3 is not None:
            s3.stop()
    if process.returncode != 0:
        raise SystemExit(f"img2dataset failed (exit {process.returncode}); see {log_path}")
    answer = json.loads(stdout.strip().splitlines()[-1])
    elapsed, written = float(answer["elapsed_s"]), int(answer["written"])
    return {
        "version": IMG2DATASET[0], "output_to": output_to, "images": len(accepted_images), "written": written,
        "elapsed_s": round(elapsed, 1), "wall_s_incl_startup": round(wall_s, 1),
        "images_per_s": round(written / elapsed, 1), "images_per_s_wall": round(written / wall_s, 1),
        "images_per_s_steady": steady_rate(progress, written),
        "timeline_s": timeline(progress, written, wall_start),
        "cpu_ms_per_image_steady": steady_cpu_ms_per_image(progress, written),
        "idle_share_steady": steady_idle_share(progress, written),
        "cpu_ms_per_image_run": run_cpu_ms_per_image(progress, ledger, written),
        "peak_rss_mb": round(peak_rss / 2**20), "log": str(log_path),
        "options": {k: v for k, v in options.items() if k not in ("url_list", "output_folder")},
    }


def side_by_side(site: BenchSite, python: Path, rounds: int, workers: int, concurrency: int,
                 processes: int, threads: int, output_to: str, output_format: str) -> dict[str, object]:
    """img2dataset and the crawl on the same site and web server, one after the other; the order flips
    every round so that a drift of the machine's speed does not favour either."""
    runs: dict[str, list[dict[str, object]]] = {"img2dataset": [], "tuwen": []}
    for round_ in range(rounds):
        order = ("img2dataset", "tuwen") if round_ % 2 == 0 else ("tuwen", "img2dataset")
        for side in order:
            load = os.getloadavg()[0]
            result = (img2dataset_bench(site, python, processes, threads, output_to, output_format)
                      if side == "img2dataset"
                      else crawl_bench(site, workers, concurrency))
            runs[side].append({"round": round_ + 1, "load_avg_1min_before": round(load, 2), **result})
            print(f"round {round_ + 1} {side}: {result['images_per_s']} images/s "
                  f"(steady {result['images_per_s_steady']})", file=sys.stderr, flush=True)

    def median_of(side: str, field: str) -> float | None:
        values = [run[field] for run in runs[side]]
        # No steady rate where img2dataset's progress cannot be counted (tar shards, S3).
        return None if None in values else statistics.median(float(v) for v in values)  # type: ignore[arg-type]

    summary = {}
    for field in ("images_per_s", "images_per_s_steady", "images_per_s_wall"):
        theirs, ours = median_of("img2dataset", field), median_of("tuwen", field)
        summary[field] = {"img2dataset": theirs, "tuwen": ours,
                          "ratio": round(ours / theirs, 2) if ours and theirs else None}
    return {"side_by_side": summary, "machine": machine(), **runs}


def ocr_bench(work: Path, count: int) -> dict[str, object]:
    site_dir = work / "ocr-site"
    manifest = generate_site(site_dir, seed=7, profile="standard")
    copies = []
    for image in manifest.images.values():
        if image.outcome == "accepted" and image.text and image.file and len(copies) < count:
            decision = inspect_and_normalize((site_dir / "www" / image.file).read_bytes(), image.content_type)
            assert decision.model is not None
            copies.append(decision.model.data)
    extract_text(copies[0])  # load the models outside the timing
    started = time.perf_counter()
    chars = sum(extract_text(data, threads=1).cjk_chars for data in copies)
    elapsed = time.perf_counter() - started
    return {"ocr_images": len(copies), "ocr_s": round(elapsed, 1),
            "ocr_images_per_s_per_core": round(len(copies) / elapsed, 2), "ocr_cjk_chars": chars}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=6, help="image-processing threads in the crawler")
    parser.add_argument("--concurrency", type=int, default=32, help="CONCURRENT_REQUESTS (and per domain)")
    parser.add_argument("--ocr-images", type=int, default=50, help="0 skips the OCR measurement")
    parser.add_argument("--preseed", type=int, default=0,
                        help="accepted images already in the database (e.g. 641868, the seed's scale)")
    parser.add_argument("--img2dataset", action="store_true",
                        help=f"side by side: {IMG2DATASET[0]} (installed into a throwaway venv) and the crawl on "
                             "the same photos and web server, one after the other")
    parser.add_argument("--img2dataset-python", type=Path,
                        help="the python of a venv that has img2dataset already (skips the install)")
    parser.add_argument("--rounds", type=int, default=1, help="side-by-side rounds (the order flips each round)")
    parser.add_argument("--img2dataset-processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--img2dataset-threads", type=int, default=16, help="download threads per process")
    parser.add_argument("--img2dataset-output", choices=("local", "s3"), default="s3",
                        help="an S3 server of the crawl's kind, started for it (the default: the same server "
                             "as the crawl's), or local files")
    parser.add_argument("--img2dataset-format", choices=("files", "webdataset"), default="files")
    args = parser.parse_args([] if argv is None else argv)  # `python -m bench crawl` passes none
    with tempfile.TemporaryDirectory(prefix="tuwen-bench-") as tmp:
        if args.img2dataset:
            python = args.img2dataset_python or img2dataset_python(Path(tmp))
            with bench_site(Path(tmp), args.images) as site:
                result = side_by_side(site, python, args.rounds, args.workers, args.concurrency,
                                      args.img2dataset_processes, args.img2dataset_threads,
                                      args.img2dataset_output, args.img2dataset_format)
        else:
            with bench_site(Path(tmp), args.images) as site:
                result = crawl_bench(site, args.workers, args.concurrency, args.preseed)
            if args.ocr_images:
                result.update(ocr_bench(Path(tmp), args.ocr_images))
    print(json.dumps(result, indent=1))
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
