"""Throwaway real services for the crawler, OCR and benchmark tests: a PostgreSQL database and an S3 server.

Plain context managers (not fixtures) so test modules and bench/ share them without a conftest:
`from test_crawl_services import fresh_database, moto_s3`. The two tests below check that they clean up.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2

from tuwen.db.migrate import upgrade
from tuwen.db.session import get_engine
from tuwen.services import drop_database, ensure_database, free_port

MOTO_SERVER = Path(sys.executable).parent / "moto_server"


@contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server on a free 127.0.0.1 port; yields the endpoint host:port."""
    port = free_port()
    process = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"moto_server did not start on port {port}") from None
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def fresh_database(prefix: str = "tuwen_test") -> Iterator[str]:
    """A new database migrated to head, dropped afterwards; yields its SQLAlchemy URL."""
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{prefix}_{uuid.uuid4().hex[:8]}"
    ensure_database(url)
    try:
        upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        drop_database(url)


def _database_exists(name: str) -> bool:
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def test_fresh_database_is_migrated_and_dropped() -> None:
    with fresh_database() as url:
        name = url.rsplit("/", 1)[1]
        assert _database_exists(name)
        with get_engine(url).connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM image").scalar() == 0
    assert not _database_exists(name)


def test_moto_s3_answers_then_stops() -> None:
    with moto_s3() as endpoint:
        urllib.request.urlopen(f"http://{endpoint}/moto-api/", timeout=5).close()
    try:
        urllib.request.urlopen(f"http://{endpoint}/moto-api/", timeout=2).close()
        raise AssertionError("moto_server still answering after the block")
    except OSError:
        pass
