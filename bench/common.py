"""What every benchmark needs: a fresh lineage database, an S3 server, and honest measurements."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import platform
import re
import resource
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import bindparam, insert

from tuwen.config import Settings
from tuwen.db.migrate import upgrade
from tuwen.db.models import CrawlRun, Curation, Image
from tuwen.db.session import get_engine
from tuwen.local.services import (
    drop_database,
    ensure_database,
    ensure_postgres,
    free_port,
    s3_service,
)
from tuwen.storage import ObjectStore, model_key

ADMIN_URL = os.environ.get("TUWEN_TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@contextmanager
def bench_settings(run_dir: Path, *, with_s3: bool = True) -> Iterator[Settings]:
    """A throwaway database (migrated) and, optionally, an S3 server with a bucket; removed afterwards."""
    ensure_postgres(ADMIN_URL)
    db_url = ADMIN_URL.rsplit("/", 1)[0] + f"/tuwen_bench_{uuid.uuid4().hex[:8]}"
    ensure_database(db_url)
    upgrade(db_url)
    s3 = None
    settings = dataclasses.replace(Settings(), database_url=db_url, release_dir=run_dir / "releases")
    try:
        if with_s3:
            port = free_port()
            s3 = s3_service(port, run_dir, on_disk=False)
            s3.start()
            settings = dataclasses.replace(settings, s3_endpoint=f"127.0.0.1:{port}")
            ObjectStore(settings).ensure_bucket()
        yield settings
    finally:
        if s3 is not None:
            s3.stop()
        get_engine(db_url).dispose()
        drop_database(db_url)


def peak_rss_mb(children: bool = False) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_maxrss / 1024.0  # KiB on Linux


def cpu_model() -> str:
    """The processor's name as the kernel gives it: machines of the same kind and core count differ by half in
    this bench's CPU figures, so a record says which one it came from."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    return f"{platform.node()} {os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}"


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def record_result(heading: str, entry: str, intro: str = "") -> None:
    """Append one run's entry at the end of `## heading` in docs/BENCHMARKS.md, after the runs before it
    (the section is created, with `intro`, if missing); other sections are left alone."""
    doc = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmarks\n"
    title = re.compile(rf"^## {re.escape(heading)}\n", flags=re.MULTILINE)  # a line of its own, not "### ..."
    if not title.search(doc):
        doc = doc.rstrip("\n") + f"\n\n## {heading}\n" + (f"\n{intro.strip()}\n" if intro else "")
    start = next(title.finditer(doc)).end()
    following = re.search(r"^## ", doc[start:], flags=re.MULTILINE)
    end = start + following.start() if following else len(doc)
    doc = doc[:end].rstrip("\n") + "\n\n" + entry.strip("\n") + "\n" + ("\n" + doc[end:] if following else "")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(doc, encoding="utf-8")


SEEDED_CURATION = "seeded"  # the config version of the verdicts seed_images writes


def seed_images(settings: Settings, n: int, day: dt.date, width: int = 672, height: int = 448, *,
                rng_seed: int = 1, spider: str = "bench", curated: bool = True) -> list[int]:
    """n distinct JPEGs (~100 KB at the default size: noise plus a per-image stripe) stored as model-ready
    copies in the bucket, with accepted `image` rows for crawl date `day`; returns the image ids.
    Calls with different `rng_seed` make different images (e.g. one seed per day). With `curated` each
    image also gets a `curated` verdict (as if tuwen.curate had passed it), so synthesis takes it."""
    rng = np.random.default_rng(rng_seed)
    base = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    store = ObjectStore(settings)
    engine = get_engine(settings.database_url)
    with engine.begin() as conn:
        run_id = conn.execute(insert(CrawlRun).values(spider=spider, partition_date=day)
                              .returning(CrawlRun.id)).scalar_one()
    rows = []
    for i in range(n):
        pixels = base.copy()
        pixels[i % height, :, :] = (i * 7) % 255
        pixels[(i // height) % height, : width // 2, 0] = (i * 13) % 255
        buffer = io.BytesIO()
        PILImage.fromarray(pixels).save(buffer, "JPEG", quality=80)
        data = buffer.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        key = model_key(sha, "jpg")
        store.put_bytes(key, data, "image/jpeg")
        rows.append({"sha256": sha, "width": width, "height": height, "format": "JPEG", "n_bytes": len(data),
                     "original_key": key, "model_key": key, "model_width": width, "model_height": height,
                     "model_mime": "image/jpeg", "status": "accepted", "crawl_date": day,
                     "first_crawl_run_id": run_id})
    with engine.begin() as conn:
        ids = list(conn.execute(insert(Image).returning(Image.id), rows).scalars())
        if curated:
            conn.execute(insert(Curation), [{"image_id": image_id, "status": "curated",
                                             "config_version": SEEDED_CURATION} for image_id in ids])
        return ids


# --- generated samples, inserted with COPY (the QC benchmark inserts 641,868 of them) ---------------


@dataclass
class SeedSample:
    """A generated sample as the synthesis DAG would have stored it; `id` defaults to a hash."""

    image_id: int
    task_type: str
    conversations: list[dict[str, Any]]
    language: str = "zh"
    finish_reason: str | None = "stop"
    id: str | None = None


def _copy_value(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def copy_rows(settings: Settings, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """COPY rows into a table through a temporary file (constant memory); returns the row count."""
    count = 0
    with tempfile.TemporaryFile("w+", encoding="utf-8") as buffer:
        for row in rows:
            buffer.write("\t".join(_copy_value(v) for v in row) + "\n")
            count += 1
        buffer.seek(0)
        raw = get_engine(settings.database_url).raw_connection()
        try:
            with raw.cursor() as cur:
                cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buffer, size=1 << 20)
            raw.commit()
        finally:
            raw.close()
    return count


def _reserve_ids(settings: Settings, table: str, n: int) -> int:
    """First of n consecutive ids for explicit-id COPY; the sequence moves past them."""
    raw = get_engine(settings.database_url).raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
            cur.execute(f"SELECT coalesce(max(id), 0) FROM {table}")
            first = cur.fetchone()[0] + 1
            cur.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", (table, first + n - 1))
        raw.commit()
    finally:
        raw.close()
    return first


def sample_id_for(image_id: int, task_type: str, language: str) -> str:
    return "tw-" + hashlib.sha256(f"{image_id}:{task_type}:{language}".encode()).hexdigest()[:24]


def insert_samples(settings: Settings, samples: Sequence[SeedSample], model: str = "bench-model") -> list[str]:
    """generation (succeeded) + sample rows for each SeedSample, both by COPY; returns the sample ids."""
    first = _reserve_ids(settings, "generation", len(samples))
    ids = [s.id or sample_id_for(s.image_id, s.task_type, s.language) for s in samples]
    sampling = json.dumps({"temperature": 0.7, "top_p": 0.9})
    copy_rows(settings, "generation",
              ("id", "request_key", "image_id", "task_type", "language", "prompt_id", "prompt_version",
               "prompt_sha256", "model", "sampling", "status", "attempts", "finish_reason", "completed_at"),
              ((first + i, hashlib.sha256(sid.encode()).hexdigest(), s.image_id, s.task_type, s.language,
                f"{s.task_type}.{s.language}", 1, "0" * 64, model, sampling, "succeeded", 1, s.finish_reason,
                "2026-11-20 03:00:00+00") for i, (sid, s) in enumerate(zip(ids, samples, strict=True))))
    copy_rows(settings, "sample", ("id", "generation_id", "image_id", "task_type", "language", "conversations", "rounds"),
              ((sid, first + i, s.image_id, s.task_type, s.language, s.conversations,
                sum(1 for t in s.conversations if isinstance(t, dict) and t.get("from") == "gpt"))
               for i, (sid, s) in enumerate(zip(ids, samples, strict=True))))
    return ids


def set_ocr_text(settings: Settings, ocr_by_image: dict[int, str | None]) -> None:
    """What the OCR step would have stored on the image rows (None: OCR did not run)."""
    from tuwen.quality.checks import cjk_count

    with get_engine(settings.database_url).begin() as conn:
        conn.execute(Image.__table__.update().where(Image.id == bindparam("image_id")).values(
            ocr_text=bindparam("ocr"), ocr_char_count=bindparam("chars"), has_zh_text=bindparam("zh")),
            [{"image_id": i, "ocr": t, "chars": len(t) if t is not None else None,
              "zh": bool(t and cjk_count(t)) if t is not None else None} for i, t in ocr_by_image.items()])


# --- a synthesis run's mapped tasks, as Airflow's pool runs them ------------------------------------

_task_resources: Any = None


def _mapped_task(settings: Settings, image_ids: Sequence[int], ids: Any, retries: int) -> dict[str, Any]:
    """One mapped `synthesize` task in a pool worker process (as a Celery worker runs it), with the
    task's Airflow retries after an outage; returns its BatchResult and the CPU seconds it used."""
    global _task_resources
    from tuwen.resources import Resources
    from tuwen.synthesis.keys import RunParams
    from tuwen.synthesis.runner import run_batch
    from tuwen.synthesis.vlm_client import CircuitOpenError

    if _task_resources is None:
        _task_resources = Resources.from_settings(settings)
    cpu0 = time.process_time()
    for attempt in range(1 + retries):
        try:
            result = run_batch(_task_resources, image_ids, RunParams(), ids)
        except CircuitOpenError:
            if attempt == retries:
                raise
            continue  # Airflow retries the task; the rerun sends only the keys not yet stored
        return {**result.as_dict(), "task_attempts": attempt + 1, "cpu_s": time.process_time() - cpu0,
                "ended_at": time.perf_counter()}
    raise AssertionError("unreachable")


def _warm(_: int) -> int:
    """What a worker pays once, before the clock starts: its imports, the SDK's lazy ones included (the first
    client built imports httpcore2 for its TLS context: 0.1 s of CPU, which a task counted as its own)."""
    import asyncio

    import tuwen.synthesis.runner  # noqa: F401
    from tuwen.synthesis.vlm_client import VLMClient

    client = VLMClient("http://127.0.0.1:9/v1", "warm-up", "warm-up", timeout_s=1.0, max_retries=0, max_in_flight=1)
    asyncio.run(client.aclose())
    time.sleep(0.2)
    return os.getpid()


def run_mapped_tasks(settings: Settings, queue: Sequence[tuple[Any, Sequence[int]]], pool_slots: int,
                     retries: int = 2) -> tuple[list[dict[str, Any]], float]:
    """Run a backfill's mapped batch tasks, `queue` = [(AirflowIds, image ids)] in the order Airflow maps
    them, `pool_slots` at a time, each in a fresh interpreter (spawned and warmed before the clock
    starts); -> (each task's result, wall seconds from the first task to the last)."""
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(pool_slots, mp_context=context) as pool:
        # Every worker warm before the clock starts: the first one to finish its imports could run all the
        # warm-up calls while the others still import (~10 s each without a bytecode cache), on the same cores
        # the measured tasks then use.
        warm: set[int] = set()
        deadline = time.monotonic() + 300
        while len(warm) < pool_slots:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(warm)} of {pool_slots} bench workers started within 300 s")
            warm |= set(pool.map(_warm, range(pool_slots)))
        started = time.perf_counter()
        futures = [pool.submit(_mapped_task, settings, image_ids, ids, retries) for ids, image_ids in queue]
        results = [future.result() for future in futures]
        wall = time.perf_counter() - started
    # perf_counter is CLOCK_MONOTONIC on Linux, one clock for every process of the machine.
    return [{**result, "ended_s": result["ended_at"] - started} for result in results], wall


def server_metrics(root: str) -> dict[str, float]:
    """A vLLM-style server's unlabelled Prometheus samples (the model_name label aside), by name."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{root}/metrics", timeout=10).text):
        for sample in family.samples:
            if not sample.labels.keys() - {"model_name"}:
                out[sample.name] = sample.value
    return out
