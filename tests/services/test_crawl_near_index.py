"""The crawler's in-memory index of accepted images' pHashes, against a real lineage database."""

from __future__ import annotations

from sqlalchemy import text

from tuwen.db.session import get_engine
from tuwen_crawler.lineage import AcceptedHashes, NearMatch

BASE = -0x1234_5678_9ABC_DEF0  # negative on purpose: PostgreSQL BIGINT holds the unsigned hash signed


def flip(value: int, *bits: int) -> int:
    """`value` with the given bit positions flipped, kept in signed 64-bit range."""
    unsigned = value & 0xFFFF_FFFF_FFFF_FFFF
    for bit in bits:
        unsigned ^= 1 << bit
    return unsigned - (1 << 64) if unsigned >= 1 << 63 else unsigned


def add_image(conn, sha: str, phash: int, status: str = "accepted") -> int:
    reason = None if status == "accepted" else status
    return conn.execute(text("""INSERT INTO image (sha256, phash, width, height, format, n_bytes, status, reason,
                                                   crawl_date)
                                VALUES (:sha, :p, 640, 480, 'JPEG', 1, :st, :reason, '2026-11-20') RETURNING id"""),
                        {"sha": sha, "p": phash, "st": status, "reason": reason}).scalar_one()


def looked_up(index: AcceptedHashes, conn, phash: int, max_distance: int, earlier=None) -> NearMatch | None:
    """What the crawler does under the decision lock: top the index up, then find the nearest."""
    index.top_up(conn)
    return index.nearest(conn, phash, max_distance, earlier)


def test_nearest_finds_the_closest_accepted_image_and_follows_the_database(lineage_db: str) -> None:
    engine = get_engine(lineage_db)
    index = AcceptedHashes()
    with engine.begin() as conn:
        far = add_image(conn, "a" * 64, flip(BASE, *range(0, 40, 2)))  # 20 bits away
        four = add_image(conn, "b" * 64, flip(BASE, 1, 9, 17, 63))
        add_image(conn, "c" * 64, flip(BASE, 3), status="near_duplicate")  # never a reference
    with engine.connect() as conn:
        assert looked_up(index, conn, BASE, 6) == NearMatch(four, 4)
        assert looked_up(index, conn, BASE, 3) is None
        assert len(index) == 2  # far and four; the near_duplicate row is not loaded
    # Accepted by someone else after the index was loaded: the next look sees it.
    with engine.begin() as conn:
        two = add_image(conn, "d" * 64, flip(BASE, 5, 6))
    with engine.connect() as conn:
        assert looked_up(index, conn, BASE, 6) == NearMatch(two, 2)
        assert looked_up(index, conn, flip(BASE, 1, 9, 17, 63), 0) == NearMatch(four, 0)
    # Taken down meanwhile: confirmed against the database, skipped, and dropped from the index.
    with engine.begin() as conn:
        conn.execute(text("UPDATE image SET status = 'taken_down', reason = 'taken_down' WHERE id = :id"),
                     {"id": two})
    with engine.connect() as conn:
        assert looked_up(index, conn, BASE, 6) == NearMatch(four, 4)
        assert len(index) == 2
        assert looked_up(index, conn, flip(BASE, *range(0, 40, 2)), 6) == NearMatch(far, 0)


def test_search_before_the_lock_and_the_rest_under_it(lineage_db: str) -> None:
    """The pipeline searches the whole index once, before uploading; under the decision lock only what
    was accepted since is searched, and the earlier hits are confirmed."""
    engine = get_engine(lineage_db)
    index = AcceptedHashes()
    with engine.begin() as conn:
        three = add_image(conn, "e" * 64, flip(BASE, 7, 8, 9))
    with engine.connect() as conn:
        index.top_up(conn)
    early = index.search(BASE, 6)
    assert [image_id for _, image_id, _ in early.candidates] == [three] and early.end == 1
    assert not index.search(flip(BASE, *range(0, 64, 2)), 6).candidates  # a far picture: no hint
    # Accepted by another crawl between this image's search and its decision: found under the lock.
    with engine.begin() as conn:
        one = add_image(conn, "f" * 64, flip(BASE, 11))
    with engine.connect() as conn:
        assert looked_up(index, conn, BASE, 6, earlier=early) == NearMatch(one, 1)
    # The earlier hit taken down meanwhile and the newer one too: nothing is near any more.
    with engine.begin() as conn:
        conn.execute(text("UPDATE image SET status = 'taken_down', reason = 'taken_down' WHERE id = ANY(:ids)"),
                     {"ids": [one, three]})
    with engine.connect() as conn:
        assert looked_up(index, conn, BASE, 6, earlier=early) is None
        assert len(index) == 0
