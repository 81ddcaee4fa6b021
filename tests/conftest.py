"""Shared fixtures: real services on this machine, each started here if it is not running.

Tests live in folders by what they need, and each test carries its folder's marker (added here,
never written by hand): `unit` (nothing but Python), `services` (PostgreSQL, the S3 server, the
stand-in VLM, the fixture site), `airflow` (Airflow runs the DAGs in-process) and `ops` (a running
Airflow, Celery workers, injected faults; `make test-ops`).

PostgreSQL is started with pg_ctlcluster when it does not answer (and the test fails loudly when it
cannot be); every test database is uniquely named and dropped afterwards. The S3 server (moto's
server process), the stand-in VLM server and the fixture website run as subprocesses on free ports.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuwen.config import Settings, StackSettings
from tuwen.db.migrate import upgrade
from tuwen.local.services import (
    BackgroundService,
    drop_database,
    ensure_database,
    ensure_postgres,
    fixture_site_service,
    free_port,
    s3_service,
    standin_vlm_service,
)
from tuwen.resources import Resources
from tuwen.storage import ObjectStore

TEST_FOLDERS = ("unit", "services", "airflow", "ops")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        folder = Path(item.fspath).relative_to(root).parts[0]
        if folder not in TEST_FOLDERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in one of tests/{{{','.join(TEST_FOLDERS)}}}/")
        item.add_marker(getattr(pytest.mark, folder))


ADMIN_URL = os.environ.get("TUWEN_TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
STANDIN_MODEL = "tuwen-standin-vlm"


def _db_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def postgres() -> str:
    """PostgreSQL answering on 127.0.0.1 (started with pg_ctlcluster if it was stopped)."""
    print(ensure_postgres(ADMIN_URL))
    return ADMIN_URL


@pytest.fixture
def empty_db(postgres: str) -> Iterator[str]:
    """A new, uniquely named, empty database; dropped after the test."""
    url = _db_url(f"tuwen_test_{uuid.uuid4().hex[:10]}")
    ensure_database(url)
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def lineage_db(empty_db: str) -> str:
    """A new database with the lineage schema migrated to head."""
    upgrade(empty_db)
    return empty_db


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


def _started(service: BackgroundService) -> Iterator[BackgroundService]:
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def s3_endpoint(run_dir: Path) -> Iterator[str]:
    port = free_port()
    yield from (f"127.0.0.1:{port}" for _ in _started(s3_service(port, run_dir)))


@pytest.fixture(scope="session")
def standin_url(run_dir: Path) -> Iterator[str]:
    port = free_port()
    # TUWEN_STANDIN_CONTRADICTION_RATE (default 0) reaches the shared stand-in as it reaches `make demo`'s;
    # tests that need contradictions start their own (StandinProcess(contradiction_rate=...)).
    rate = StackSettings.from_env().standin_contradiction_rate
    yield from (f"http://127.0.0.1:{port}/v1"
                for _ in _started(standin_vlm_service(port, STANDIN_MODEL, run_dir, contradiction_rate=rate)))


@pytest.fixture(scope="session")
def fixture_site(tmp_path_factory: pytest.TempPathFactory, run_dir: Path) -> Iterator[tuple[str, Path]]:
    """The standard fixture website, generated once per session and served on a free port."""
    from tuwen.local.fixture_site import generate_site

    site_dir = tmp_path_factory.mktemp("fixture-site")
    generate_site(site_dir)
    port = free_port()
    yield from ((f"http://127.0.0.1:{port}", site_dir) for _ in _started(fixture_site_service(site_dir, port, run_dir)))


def write_sites_file(path: Path, base_url: str, name: str = "fixture") -> Path:
    host = base_url.split("//", 1)[1].split("/", 1)[0].split(":")[0]
    path.write_text(
        f"""sites:
  - name: {name}
    start_urls: ["{base_url}/index.html"]
    allowed_domains: ["{host}"]
    max_depth: 6
    max_pages: 500
    allow_private_addresses: true
    politeness:
      download_delay: 0
      concurrency_per_domain: 16
      autothrottle_target: 16
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def settings(lineage_db: str, s3_endpoint: str, standin_url: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own database and bucket, the shared S3 server and stand-in."""
    return dataclasses.replace(
        Settings(),
        database_url=lineage_db,
        s3_endpoint=s3_endpoint,
        s3_bucket=f"tuwen-test-{uuid.uuid4().hex[:8]}",
        vlm_base_url=standin_url,
        vlm_model=STANDIN_MODEL,
        release_dir=tmp_path / "releases",
        ocr_enabled=False,
    )


@pytest.fixture
def resources(settings: Settings) -> Resources:
    """The test's services, built once as an entry point would and handed to the stage functions."""
    return Resources.from_settings(settings)


LABELLED = Path(__file__).parent / "unit" / "data" / "qc_labelled.jsonl"
LABELLED_DAY = dt.date(2026, 11, 18)


def labelled_rows() -> list[dict]:
    """The hand-labelled QC set: samples with the verdict and reasons a careful reviewer expects."""
    return [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]


def insert_labelled(settings: Settings, rows: list[dict], *, image_size: tuple[int, int] = (320, 224)) -> dict[str, dict]:
    """Store labelled rows as samples (sample id = row id), each on its own image (a JPEG in the bucket,
    OCR text as labelled); returns {sample id: row}. Rows the schema cannot hold must be left out by
    the caller (the task type CHECK constraint rejects 'caption')."""
    from bench.common import SeedSample, insert_samples, seed_images, set_ocr_text

    ObjectStore(settings).ensure_bucket()
    image_ids = seed_images(settings, len(rows), LABELLED_DAY, *image_size)
    insert_samples(settings, [SeedSample(image_id, row["task_type"], row["conversations"], row["language"],
                                         row["finish_reason"], row["id"]) for image_id, row in zip(image_ids, rows, strict=True)])
    set_ocr_text(settings, {image_id: row["ocr_text"] for image_id, row in zip(image_ids, rows, strict=True)})
    return {row["id"]: row for row in rows}
