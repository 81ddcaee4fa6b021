"""The crawler's image decision and its connection handling, against a real lineage database."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from tuwen.crawl.images import ImageDecision, ModelCopy
from tuwen.db.session import get_engine
from tuwen_crawler import lineage
from tuwen_crawler.items import Mention

DAY = dt.date(2026, 11, 20)


def _run(engine) -> int:
    return lineage.create_crawl_run(engine, spider="site", site="t", seeds=[], settings={}, partition_date=DAY,
                                    dag_id=None, run_id=None)


def _decision(name: str, phash: int) -> ImageDecision:
    return ImageDecision(True, None, hashlib.sha256(name.encode()).hexdigest(), 1000, 640, 480, "JPEG", phash,
                         ModelCopy(b"", 644, 476, "image/jpeg", "jpg"))


def _sighting(run: int, name: str, page: str = "p") -> lineage.Sighting:
    return lineage.Sighting(Mention(f"http://t.example/{name}.jpg", f"http://t.example/{page}.html", "title",
                                    None, None, "img"), "t", run, 200, "image/jpeg")


def _decide(engine, index: lineage.AcceptedHashes, decision: ImageDecision, sighting: lineage.Sighting):
    return lineage.record_accepted_image(engine, decision, sighting, original_key=f"raw/{decision.sha256}",
                                         model_key=f"model/{decision.sha256}", crawl_date=DAY, near_distance=6,
                                         index=index, earlier=index.search(decision.phash or 0, 6))


def _lock_is_free(url: str) -> bool:
    with create_engine(url).connect() as other:
        free = other.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lineage.IMAGE_DECISION_LOCK}).scalar()
        other.execute(text("SELECT pg_advisory_unlock_all()"))
        return bool(free)


def test_decisions_insert_accepted_near_and_known_images_with_their_sources(lineage_db: str) -> None:
    engine = get_engine(lineage_db, pre_ping=False)
    run, index = _run(engine), lineage.AcceptedHashes()
    first = _decision("a", 0x0F0F)
    verdict, inserted, referenced = _decide(engine, index, first, _sighting(run, "a"))
    assert (verdict.outcome, inserted, referenced) == ("accepted", True, True)
    near, inserted, referenced = _decide(engine, index, _decision("b", 0x0F0F ^ 0b111), _sighting(run, "b"))
    assert (near.outcome, inserted, referenced) == ("near_duplicate", False, False)
    # The same bytes at another URL, decided under the lock (as when two crawls race): a duplicate.
    again, inserted, referenced = _decide(engine, index, first, _sighting(run, "a-copy"))
    assert (again.outcome, again.image_id, inserted, referenced) == ("duplicate", verdict.image_id, False, True)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT i.id, i.status, i.duplicate_of, s.url, s.outcome FROM image i "
                                 "JOIN image_source s ON s.image_id = i.id ORDER BY s.id")).all()
    assert [tuple(r) for r in rows] == [
        (verdict.image_id, "accepted", None, "http://t.example/a.jpg", "accepted"),
        (near.image_id, "near_duplicate", verdict.image_id, "http://t.example/b.jpg", "near_duplicate"),
        (verdict.image_id, "accepted", None, "http://t.example/a-copy.jpg", "duplicate"),
    ]
    assert _lock_is_free(lineage_db)  # every decision committed: nobody holds the lock


def test_a_failed_decision_rolls_back_and_releases_the_lock(lineage_db: str) -> None:
    engine = get_engine(lineage_db, pre_ping=False)
    index = lineage.AcceptedHashes()
    with pytest.raises(DBAPIError):  # crawl run 999 does not exist: the insert breaks its foreign key
        _decide(engine, index, _decision("x", 1), _sighting(999, "x"))
    assert _lock_is_free(lineage_db)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM image")).scalar_one() == 0
    # The pool's connection is clean: the next decision goes through on it.
    verdict, inserted, _ = _decide(engine, index, _decision("x", 1), _sighting(_run(engine), "x"))
    assert (verdict.outcome, inserted) == ("accepted", True)


def _drop_connections(url: str) -> int:
    """What a PostgreSQL restart does to a pool: every connection to the database dies."""
    database = url.rsplit("/", 1)[1]
    with create_engine(url.rsplit("/", 1)[0] + "/postgres").connect() as admin:
        return len(admin.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                      "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database}).all())


def test_a_write_that_meets_a_dead_connection_is_run_again_on_a_new_one(lineage_db: str) -> None:
    engine = get_engine(lineage_db, pre_ping=False)
    run = _run(engine)
    source = lineage.source_params(_sighting(run, "m").mention, lineage.Verdict("rejected", "http_404"), site="t",
                                   crawl_run_id=run)
    lineage.upsert_sources(engine, [source])
    # Without the retry a dead pooled connection is a failed write (no pre-ping on this engine)...
    assert _drop_connections(lineage_db) >= 1
    with pytest.raises(DBAPIError) as dead:
        lineage.upsert_sources(engine, [source])
    assert dead.value.connection_invalidated
    # ...with it, the write goes through on a fresh connection, once.
    lineage.upsert_sources(engine, [source])  # warm the pool again
    assert _drop_connections(lineage_db) >= 1
    lineage.retry_on_disconnect(lineage.upsert_sources, engine, [{**source, "page_url": "http://t.example/q.html"}])
    assert _drop_connections(lineage_db) >= 1
    verdict, inserted, _ = lineage.retry_on_disconnect(_decide, engine, lineage.AcceptedHashes(), _decision("r", 5),
                                                       _sighting(run, "r"))
    assert (verdict.outcome, inserted) == ("accepted", True)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM image_source")).scalar_one() == 3
    # Other errors are not retried.
    calls = []

    def broken(engine) -> None:
        calls.append(1)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1/0"))

    with pytest.raises(DBAPIError):
        lineage.retry_on_disconnect(broken, engine)
    assert calls == [1]
