"""The crawler's writes to the lineage database (crawl_run, image, image_source), as plain SQL.

Idempotency comes from the schema's unique keys: `image.sha256` (one row per distinct image) and
`image_source (url, page_url)` (one row per place an image was seen). Near-duplicate detection
compares perceptual hashes against accepted images under a transaction-scoped advisory lock, so two
crawls running at once cannot both accept the same picture in two encodings.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from tuwen.crawl.images import ImageDecision
from tuwen_crawler.outcomes import outcome_for_reason

T = TypeVar("T")

# One lock for "decide whether this picture is new, then insert it". Serialising these short
# transactions costs little (docs/BENCHMARKS.md, Crawl); correctness across concurrent crawls needs nothing less.
IMAGE_DECISION_LOCK = 0x74_75_77_65_6E_01  # "tuwen" + 1

# Rejections worth an image row (the bytes were a real, hashable file someone might ask about);
# not_image bytes are error pages, and noai/HTTP failures never had content we may keep.
STORED_REJECTIONS = frozenset({"too_small", "corrupt", "extreme_aspect", "too_many_pixels",
                               "decompression_bomb", "animated", "unsupported_mode"})


@dataclass(frozen=True)
class Verdict:
    """What the crawl concluded about one image URL; every mention of the URL gets a row with it."""

    outcome: str
    reason: str | None
    image_id: int | None = None
    http_status: int | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class Sighting:
    """The first mention of an image URL plus what the fetch told us: written with the verdict, in the
    same transaction as the image decision, so a concurrent crawl sees verdict and source together."""

    mention: Any  # tuwen_crawler.items.Mention
    site: str
    crawl_run_id: int
    http_status: int | None = None
    content_type: str | None = None

    def verdict(self, outcome: str, reason: str | None, image_id: int | None) -> Verdict:
        return Verdict(outcome, reason, image_id, self.http_status, self.content_type)


_UPSERT_SOURCE_SQL = """
INSERT INTO image_source (image_id, crawl_run_id, last_crawl_run_id, site, url, page_url, page_title, alt_text,
                          context_text, found_in, outcome, reason, http_status, content_type)
VALUES (:image_id, :run, :run, :site, :url, :page_url, :page_title, :alt_text, :context_text, :found_in,
        :outcome, :reason, :http_status, :content_type)
ON CONFLICT (url, page_url) DO UPDATE SET
    last_crawl_run_id = EXCLUDED.last_crawl_run_id,
    last_seen_at = now(),
    page_title = COALESCE(EXCLUDED.page_title, image_source.page_title),
    alt_text = COALESCE(EXCLUDED.alt_text, image_source.alt_text),
    context_text = COALESCE(EXCLUDED.context_text, image_source.context_text),
    -- Same bytes as before: the first verdict stands. Anything else (content changed, a 404 that now
    -- serves an image, a new refusal) is today's truth.
    image_id = EXCLUDED.image_id,
    outcome = CASE WHEN image_source.image_id = EXCLUDED.image_id THEN image_source.outcome
                   ELSE EXCLUDED.outcome END,
    reason = CASE WHEN image_source.image_id = EXCLUDED.image_id THEN image_source.reason
                  ELSE EXCLUDED.reason END,
    http_status = COALESCE(EXCLUDED.http_status, image_source.http_status),
    content_type = COALESCE(EXCLUDED.content_type, image_source.content_type)
"""
UPSERT_SOURCE = text(_UPSERT_SOURCE_SQL)

# The statements of the per-image hot path, built once: a TextClause parses its SQL for bind
# parameters on construction, which showed up in the crawler's profile when done per image.
FIND_EXACT = text("SELECT id, status, reason FROM image WHERE sha256 = :sha")
SOURCE_VERDICT = text("SELECT outcome, reason FROM image_source WHERE url = :url AND image_id = :id LIMIT 1")
STILL_ACCEPTED = text("SELECT id FROM image WHERE id = ANY(:ids) AND status = 'accepted'")
_EXACT_AND_NEWLY_ACCEPTED_SQL = """
SELECT id, phash, status, reason, 'exact' AS kind FROM image WHERE sha256 = :sha
UNION ALL
SELECT id, phash, status, reason, 'added' FROM image WHERE id > :last AND status = 'accepted' AND phash IS NOT NULL"""
EXACT_AND_NEWLY_ACCEPTED = text(_EXACT_AND_NEWLY_ACCEPTED_SQL)

# The image decision is two round trips on an autocommit connection: every crawl queues for the lock
# it holds, so each round trip held under it counts (docs/BENCHMARKS.md, Crawl). The first opens the transaction, takes the lock, looks the sha up, tops the index up and
# draws the id the new row will get; the second inserts the row with its first source row and
# commits. In READ COMMITTED each statement of a multi-statement query takes its own snapshot, so the
# lookup sees every row committed before the lock was granted. (An id drawn for bytes that turn out
# known is a gap in the sequence, nothing more.)
BEGIN_DECISION = text("BEGIN; SELECT pg_advisory_xact_lock(:k); " + _EXACT_AND_NEWLY_ACCEPTED_SQL + """
UNION ALL
SELECT nextval(pg_get_serial_sequence('image', 'id')), NULL, NULL, NULL, 'next_id'""")


def _with_first_source_and_commit(insert_image: str) -> Any:
    """INSERT an image row (id drawn by BEGIN_DECISION) and upsert its first source row, then COMMIT."""
    return text(f"WITH new_image AS ({insert_image} RETURNING id) "
                + _UPSERT_SOURCE_SQL.replace(":image_id", "(SELECT id FROM new_image)") + "; COMMIT")


INSERT_ACCEPTED = _with_first_source_and_commit("""
    INSERT INTO image (id, sha256, phash, width, height, format, n_bytes, original_key, model_key, model_width,
                       model_height, model_mime, status, crawl_date, first_crawl_run_id)
    VALUES (:new_id, :sha, :phash, :w, :h, :fmt, :n, :okey, :mkey, :mw, :mh, :mime, 'accepted', :crawl_date,
            :run)""")
INSERT_NEAR_DUPLICATE = _with_first_source_and_commit("""
    INSERT INTO image (id, sha256, phash, width, height, format, n_bytes, status, reason, duplicate_of, crawl_date,
                       first_crawl_run_id)
    VALUES (:new_id, :sha, :phash, :w, :h, :fmt, :n, 'near_duplicate', 'near_duplicate', :dup, :crawl_date,
            :run)""")


def retry_on_disconnect(write: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a lineage write; if it met a dead pooled connection (PostgreSQL restarted since the
    connection was last used), run it once more on a fresh one.

    The crawler's engine has no pre-ping (a round trip per checkout, several per image); this is what
    keeps a database restart a reconnect rather than a stopped crawl. Every write here may run twice:
    upserts are idempotent, a decision whose transaction died is rolled back, and one whose COMMIT
    went through but whose answer was lost finds its own row and source the second time.
    """
    try:
        return write(*args, **kwargs)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return write(*args, **kwargs)


def create_crawl_run(engine: Engine, *, spider: str, site: str, seeds: list[str], settings: dict[str, Any],
                     partition_date: dt.date, dag_id: str | None, run_id: str | None) -> int:
    with engine.begin() as conn:
        return conn.execute(
            text("""INSERT INTO crawl_run (spider, site, seeds, settings, partition_date, dag_id, run_id, status)
                    VALUES (:spider, :site, CAST(:seeds AS jsonb), CAST(:settings AS jsonb), :partition_date,
                            :dag_id, :run_id, 'running') RETURNING id"""),
            {"spider": spider, "site": site, "seeds": json.dumps(seeds), "settings": json.dumps(settings, default=str),
             "partition_date": partition_date, "dag_id": dag_id, "run_id": run_id},
        ).scalar_one()


def close_crawl_run(engine: Engine, crawl_run_id: int, *, status: str, stats: dict[str, Any],
                    counts: dict[str, Any], error: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("""UPDATE crawl_run SET status = :status, stats = CAST(:stats AS jsonb),
                    counts = CAST(:counts AS jsonb), error = :error, finished_at = now() WHERE id = :id"""),
            {"status": status, "stats": json.dumps(stats, default=str), "counts": json.dumps(counts),
             "error": error, "id": crawl_run_id},
        )


def _existing_verdict(conn: Connection, url: str, row: Any) -> tuple[str, str | None]:
    """The verdict for a URL whose bytes match an image row we already have."""
    seen = conn.execute(SOURCE_VERDICT, {"url": url, "id": row.id}).first()
    if seen is not None:
        # The same URL served the same bytes before (a rerun, a resumed job, a second concurrent crawl):
        # its first verdict stands, so reruns report the same counts and add nothing.
        return seen.outcome, seen.reason
    if row.status == "rejected":
        return "rejected", row.reason
    if row.status == "taken_down":
        return "rejected", "taken_down"
    return "duplicate", "duplicate"


def find_exact(conn: Connection, sha256: str) -> Any:
    return conn.execute(FIND_EXACT, {"sha": sha256}).first()


@dataclass(frozen=True)
class NearMatch:
    id: int
    distance: int


@dataclass(frozen=True)
class NearSearch:
    """What a search of the in-memory index found: (distance, image id, position) of each hit, and
    how many entries it covered (a later search under the lock starts there)."""

    candidates: tuple[tuple[int, int, int], ...]
    end: int


class AcceptedHashes:
    """The pHashes of accepted images, held in memory and topped up from the database on every look.

    The near-duplicate check compares a new image with every accepted one. As SQL (bit_count over an
    XOR) that scans `image`: 150-190 ms at the seed's 641,868 images, twice per accepted image and once
    under the decision lock, which would cap every crawl at a few images a second. Here it is a
    vectorised XOR and popcount over a numpy array (about 2 ms at that size, 10 MB of memory).

    A look under IMAGE_DECISION_LOCK first reads the accepted rows newer than the last one seen, so
    images other crawls accepted meanwhile count; that read is complete because accepted rows are only
    inserted while holding the lock, so their ids grow in commit order. A match is confirmed against
    the database before it is used; an image no longer accepted (taken down) leaves the index instead.
    Each image is searched once in full, outside the lock (`search`, also the hint that decides whether
    to upload before the decision); under the lock only the entries added since are (`nearest`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = np.zeros(1024, dtype=np.int64)  # 0 marks an entry that left the index
        self._hashes = np.zeros(1024, dtype=np.uint64)
        self._n = 0
        self._last_id = 0

    def __len__(self) -> int:
        return int(np.count_nonzero(self._ids[:self._n]))

    def _append(self, ids: list[int], hashes: list[int]) -> None:
        need = self._n + len(ids)
        if need > len(self._ids):
            capacity = max(need, 2 * len(self._ids))
            self._ids = np.resize(self._ids, capacity)
            self._hashes = np.resize(self._hashes, capacity)
        self._ids[self._n:need] = ids
        self._hashes[self._n:need] = np.array(hashes, dtype=np.int64).view(np.uint64)
        self._n = need

    @property
    def last_id(self) -> int:
        """The newest accepted image id loaded: a top-up reads the rows after it."""
        return self._last_id

    def top_up(self, conn: Connection, sha256: str | None = None) -> Any:
        """Load the accepted rows added since the last look; returns the image row with `sha256`, if any.

        The exact-duplicate lookup rides in the same statement: under the decision lock every round
        trip is paid by every crawl waiting for it.
        """
        return self.absorb(conn.execute(EXACT_AND_NEWLY_ACCEPTED, {"sha": sha256, "last": self._last_id}).all())

    def absorb(self, rows: list[Any]) -> Any:
        """Add the 'added' rows of an EXACT_AND_NEWLY_ACCEPTED result; returns its 'exact' row, if any."""
        added = sorted((r for r in rows if r.kind == "added"), key=lambda r: r.id)
        with self._lock:
            added = [r for r in added if r.id > self._last_id]  # a concurrent top-up may have had them
            if added:
                self._append([r.id for r in added], [r.phash for r in added])
                self._last_id = added[-1].id
        return next((r for r in rows if r.kind == "exact"), None)

    def search(self, phash: int, max_distance: int, start: int = 0) -> NearSearch:
        """Indexed images from entry `start` on within `max_distance` bits, from memory alone.

        Reads without the lock, so searches from the pipeline's threads run side by side (numpy lets go
        of the GIL) and never hold up the thread inside the decision lock: appends only write past the
        entries read here or into new arrays, and an id cleared meanwhile is caught by `nearest`'s
        confirmation against the database.
        """
        with self._lock:
            ids, hashes, n = self._ids, self._hashes, self._n
        if n <= start:
            return NearSearch((), n)
        probe = np.array([phash], dtype=np.int64).view(np.uint64)[0]
        distances = np.bitwise_count(hashes[start:n] ^ probe)
        hits = np.flatnonzero(distances <= max_distance)
        return NearSearch(tuple((int(distances[i]), int(ids[start + i]), start + int(i)) for i in hits
                                if ids[start + i] != 0), n)

    def nearest(self, conn: Connection, phash: int, max_distance: int,
                earlier: NearSearch | None = None) -> NearMatch | None:
        """The closest image within `max_distance` bits that is still accepted (ties: the oldest), or None.

        Call after `top_up`, inside the decision lock. With `earlier` (this image's search before the
        lock) only the entries added since are searched: the lock is held for a few entries, not for a
        scan of the whole index.
        """
        found = self.search(phash, max_distance, start=earlier.end if earlier else 0)
        ranked = sorted((earlier.candidates if earlier else ()) + found.candidates)
        if not ranked:
            return None
        accepted = set(conn.execute(STILL_ACCEPTED, {"ids": [image_id for _, image_id, _ in ranked]}).scalars())
        for distance, image_id, position in ranked:
            if image_id in accepted:
                return NearMatch(image_id, distance)
            with self._lock:
                self._ids[position] = 0
        return None


def _settled(conn: Connection, sighting: Sighting, outcome: str, reason: str | None, image_id: int | None) -> Verdict:
    verdict = sighting.verdict(outcome, reason, image_id)
    conn.execute(UPSERT_SOURCE, source_params(sighting.mention, verdict, site=sighting.site,
                                              crawl_run_id=sighting.crawl_run_id))
    return verdict


def verdict_for_known_bytes(engine: Engine, sha256: str, sighting: Sighting) -> Verdict | None:
    """A cheap, lock-free check before any upload: is this exact file already in the database?

    Autocommit: for new bytes (nearly every image of a first crawl) this is one round trip, where a
    transaction would add its BEGIN and COMMIT.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = find_exact(conn, sha256)
        if row is None:
            return None
        outcome, reason = _existing_verdict(conn, sighting.mention.url, row)
        return _settled(conn, sighting, outcome, reason, row.id)


def record_unstored_rejection(engine: Engine, reason: str, sighting: Sighting) -> Verdict:
    with engine.begin() as conn:
        return _settled(conn, sighting, outcome_for_reason(reason), reason, None)


def record_rejected_image(engine: Engine, decision: ImageDecision, sighting: Sighting, *,
                          crawl_date: dt.date) -> Verdict:
    assert decision.reason is not None
    if decision.reason not in STORED_REJECTIONS:
        return record_unstored_rejection(engine, decision.reason, sighting)
    crawl_run_id = sighting.crawl_run_id
    with engine.begin() as conn:
        image_id = conn.execute(
            text("""INSERT INTO image (sha256, width, height, format, n_bytes, status, reason, crawl_date,
                                       first_crawl_run_id)
                    VALUES (:sha, :w, :h, :fmt, :n, 'rejected', :reason, :crawl_date, :run)
                    ON CONFLICT (sha256) DO NOTHING RETURNING id"""),
            {"sha": decision.sha256, "w": decision.width, "h": decision.height, "fmt": decision.format,
             "n": decision.n_bytes, "reason": decision.reason, "crawl_date": crawl_date, "run": crawl_run_id},
        ).scalar()
        if image_id is None:
            row = find_exact(conn, decision.sha256)
            outcome, reason = _existing_verdict(conn, sighting.mention.url, row)
            return _settled(conn, sighting, outcome, reason, row.id)
        return _settled(conn, sighting, "rejected", decision.reason, image_id)


def record_accepted_image(engine: Engine, decision: ImageDecision, sighting: Sighting, *, original_key: str,
                          model_key: str, crawl_date: dt.date, near_distance: int,
                          index: AcceptedHashes,
                          earlier: NearSearch | None = None) -> tuple[Verdict, bool, bool]:
    """Insert the image as accepted, or as a near duplicate of an accepted one, or find it exists.

    Returns the verdict, whether this call inserted the image as accepted, and whether the image's keys
    are referenced (its sha's row is accepted, by this call or an earlier one). Every crawl queues
    for the lock this holds, so new bytes cost two round trips (BEGIN_DECISION, then the insert with
    its COMMIT), plus one when a near match must be confirmed.
    """
    assert decision.model is not None and decision.phash is not None
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        try:
            rows = conn.execute(BEGIN_DECISION, {"k": IMAGE_DECISION_LOCK, "sha": decision.sha256,
                                                 "last": index.last_id}).all()
            row = index.absorb(rows)
            if row is not None:
                outcome, reason = _existing_verdict(conn, sighting.mention.url, row)
                verdict = _settled(conn, sighting, outcome, reason, row.id)
                conn.exec_driver_sql("COMMIT")
                return verdict, False, row.status == "accepted"
            near = index.nearest(conn, decision.phash, near_distance, earlier)
            params = {
                "new_id": next(r.id for r in rows if r.kind == "next_id"), "sha": decision.sha256,
                "phash": decision.phash, "w": decision.width, "h": decision.height, "fmt": decision.format,
                "n": decision.n_bytes, "crawl_date": crawl_date, "run": sighting.crawl_run_id,
            }
            if near is not None:
                return _inserted(conn, sighting, "near_duplicate", "near_duplicate", INSERT_NEAR_DUPLICATE,
                                 {**params, "dup": near.id}), False, False
            return _inserted(conn, sighting, "accepted", None, INSERT_ACCEPTED, {
                **params, "okey": original_key, "mkey": model_key, "mw": decision.model.width,
                "mh": decision.model.height, "mime": decision.model.mime}), True, True
        except BaseException:
            # The transaction BEGIN_DECISION opened is still open (or aborted) unless a COMMIT ran;
            # the connection must not go back to the pool holding the lock. A dead one holds nothing.
            if not conn.invalidated:
                with contextlib.suppress(DBAPIError):
                    conn.exec_driver_sql("ROLLBACK")
            raise


def _inserted(conn: Connection, sighting: Sighting, outcome: str, reason: str | None, insert: Any,
              params: dict[str, Any]) -> Verdict:
    """Insert an image row with its first source row and commit (the caller holds the decision lock
    and knows the sha is new)."""
    source = source_params(sighting.mention, sighting.verdict(outcome, reason, None), site=sighting.site,
                           crawl_run_id=sighting.crawl_run_id)
    conn.execute(insert, {**source, **params})
    return sighting.verdict(outcome, reason, params["new_id"])


def source_params(mention: Any, verdict: Verdict, *, site: str, crawl_run_id: int) -> dict[str, Any]:
    return {
        "image_id": verdict.image_id, "run": crawl_run_id, "site": site, "url": mention.url,
        "page_url": mention.page_url, "page_title": mention.page_title, "alt_text": mention.alt_text,
        "context_text": mention.context_text, "found_in": mention.found_in, "outcome": verdict.outcome,
        "reason": verdict.reason, "http_status": verdict.http_status, "content_type": verdict.content_type,
    }


def upsert_sources(engine: Engine, rows: list[dict[str, Any]]) -> None:
    if len(rows) == 1:
        # One statement is its own transaction: no BEGIN and COMMIT round trips for the usual case.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(UPSERT_SOURCE, rows[0])
    elif rows:
        with engine.begin() as conn:
            conn.execute(UPSERT_SOURCE, rows)


def verdicts_from_runs(engine: Engine, crawl_run_ids: list[int]) -> dict[str, Verdict]:
    """Verdicts already recorded by earlier runs of a resumed job, keyed by image URL."""
    if not crawl_run_ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(
            text("""SELECT DISTINCT ON (url) url, image_id, outcome, reason, http_status, content_type
                    FROM image_source WHERE last_crawl_run_id = ANY(:ids) OR crawl_run_id = ANY(:ids)
                    ORDER BY url, last_seen_at DESC"""),
            {"ids": crawl_run_ids},
        ).all()
    return {r.url: Verdict(r.outcome, r.reason, r.image_id, r.http_status, r.content_type) for r in rows}


def job_crawl_runs(engine: Engine, site: str, job_key: str) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(
            text("SELECT id FROM crawl_run WHERE site = :site AND settings->>'job_key' = :job ORDER BY id"),
            {"site": site, "job": job_key},
        ).scalars())


def fail_running_runs(engine: Engine, crawl_run_ids: list[int], error: str) -> None:
    if crawl_run_ids:
        with engine.begin() as conn:
            conn.execute(text("""UPDATE crawl_run SET status = 'failed', error = :error, finished_at = now()
                                 WHERE id = ANY(:ids) AND status = 'running'"""), {"ids": crawl_run_ids, "error": error})
