"""What every benchmark needs: a fresh lineage database, an S3 server, and honest measurements."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import os
import platform
import resource
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import insert

from tuwen.config import Settings
from tuwen.db.migrate import upgrade
from tuwen.db.models import CrawlRun, Image
from tuwen.db.session import get_engine
from tuwen.services import (
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
            s3 = s3_service(port, run_dir)
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


def machine() -> str:
    return f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}"


def seed_images(settings: Settings, n: int, day: dt.date, width: int = 672, height: int = 448) -> list[int]:
    """n distinct JPEGs (~100 KB at the default size: noise plus a per-image stripe) stored as model-ready
    copies in the bucket, with accepted `image` rows for crawl date `day`; returns the image ids."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    store = ObjectStore(settings)
    engine = get_engine(settings.database_url)
    with engine.begin() as conn:
        run_id = conn.execute(insert(CrawlRun).values(spider="bench", partition_date=day)
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
        return list(conn.execute(insert(Image).returning(Image.id), rows).scalars())
