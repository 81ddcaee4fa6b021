"""A module-scoped lineage database for the crawler and OCR tests (conftest's `lineage_db` is per test,
and a crawl is too slow to repeat per test). Import: `from tests.services.test_crawl_services import fresh_database`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2

from tuwen.db.migrate import upgrade
from tuwen.db.session import get_engine
from tuwen.local.services import drop_database, ensure_database


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


def test_fresh_database_is_migrated_and_dropped(postgres: str) -> None:
    with fresh_database() as url:
        name = url.rsplit("/", 1)[1]
        assert _database_exists(name)
        with get_engine(url).connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM image").scalar() == 0
    assert not _database_exists(name)
