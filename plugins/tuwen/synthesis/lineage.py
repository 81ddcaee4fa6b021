"""The synthesis stage's SQL, in one place, over the engine its entry point hands in.

Two ways in, one per purpose: planning and batch set-up are a few set-wise statements per run, in
SQLAlchemy Core on the engine; storing answers runs once per completion on the batch's writer
thread, so it is plain SQL on one DBAPI connection borrowed from the same engine's pool, one
transaction per answer (that is what bounds a killed worker's loss to the requests in flight).

Model answers are untrusted text: `storable_text` and `storable_json` escape what PostgreSQL
cannot hold (NUL; lone UTF-16 surrogates, which have no UTF-8 form) before anything is written,
and a row that still cannot be written is recorded on its generation with the reason, so one
answer never stops the batch.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import psycopg2
import psycopg2.errors
from sqlalchemy import ColumnElement, Engine, Row, exists, func, select, text, true, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import OperationalError

from tuwen.db.models import Curation, Generation, Image, Judgement
from tuwen.domain import Partition

log = logging.getLogger(__name__)

DONE_STATUSES = ("succeeded", "unparseable")  # paid for: never requested again under the same key

_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def storable_text(value: str | None) -> str | None:
    """The text with NUL and lone surrogates written as visible \\uXXXX escapes; others unchanged."""
    if value is None or not _UNSTORABLE.search(value):
        return value
    return _UNSTORABLE.sub(_escape, value)


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def storable_json(value: Any) -> str | None:
    """JSON text for a jsonb column; strings escaped as in `storable_text` (jsonb refuses \\u0000 too)."""
    if value is None:
        return None
    # ASCII JSON writes NUL as \u0000 and every surrogate as a \udXXX escape; only then (an emoji's
    # surrogate pair, or a backslash in the text, is a false alarm that costs one more pass) is the
    # value walked and escaped.
    dumped = json.dumps(value, separators=(",", ":"))
    if "\\u0000" in dumped or "\\ud" in dumped:
        dumped = json.dumps(_storable(value), separators=(",", ":"))
    return dumped


# --- planning ----------------------------------------------------------------------------------


def curated(curated_only: bool) -> ColumnElement[bool]:
    """The image's curation verdict is `curated` (tuwen.curate); always true with curation off
    (TUWEN_CURATE_ENABLED=false), when every accepted image counts as curated."""
    if not curated_only:
        return true()
    return exists().where(Curation.image_id == Image.id, Curation.status == "curated")


def assign_tasks(engine: Engine, partition: Partition,
                 deal: Callable[[list[str], dict[str, int]], Mapping[str, str]], curated_only: bool = True) -> int:
    """Persist a task type on every accepted (and curated) image of the partition that has none, day by day.

    `deal(new hashes, existing counts per task)` decides the tasks (see `planning.assign_task_types`).
    """
    assigned = 0
    with engine.begin() as conn:
        # One planner at a time, so two runs over the same day can't deal the same slots twice.
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('tuwen.assign_tasks'))"))
        for day in partition.days():
            rows = conn.execute(
                select(Image.sha256, Image.task_type)
                .where(Image.crawl_date == day, Image.status == "accepted", curated(curated_only))
            ).all()
            existing = Counter(r.task_type for r in rows if r.task_type)
            new = [r.sha256 for r in rows if not r.task_type]
            if not new:
                continue
            tasks = deal(new, dict(existing))
            for sha, task in tasks.items():
                conn.execute(update(Image).where(Image.sha256 == sha).values(task_type=task))
            assigned += len(tasks)
    return assigned


def partition_images(engine: Engine, partition: Partition, task_types: Sequence[str], curated_only: bool = True,
                     ) -> tuple[list[Row], int]:
    """(id, sha256, task_type, has_zh_text) of the partition's accepted, curated images of those tasks, and
    all accepted images."""
    in_partition = (Image.crawl_date >= partition.start, Image.crawl_date < partition.end,
                    Image.status == "accepted")
    with engine.connect() as conn:
        rows = conn.execute(
            select(Image.id, Image.sha256, Image.task_type, Image.has_zh_text)
            .where(*in_partition, Image.task_type.in_(list(task_types)), curated(curated_only))
            .order_by(Image.sha256)
        ).all()
        total = conn.scalar(select(func.count()).select_from(Image).where(*in_partition))
    return list(rows), int(total or 0)


def stored_keys(engine: Engine, keys: Iterable[str]) -> set[str]:
    """The keys among these whose answer is paid for and stored."""
    keys = list(keys)
    if not keys:
        return set()
    with engine.connect() as conn:
        return set(conn.scalars(
            select(Generation.request_key).where(Generation.request_key.in_(keys),
                                                 Generation.status.in_(DONE_STATUSES))
        ))


def refresh_statistics(engine: Engine) -> None:
    """ANALYZE the tables a run's tasks read, once its plan has written the run's rows.

    A crawl, its curation and the plan write thousands of rows minutes before the tasks query them, and
    autovacuum re-analyzes only after a while: with the old statistics (an empty curation table, say)
    PostgreSQL planned a batch's image query as a nested loop over every curated row per image, 0.8 s
    instead of 8 ms for 750 images (docs/BENCHMARKS.md). ANALYZE reads a sample (at most 30,000 rows per
    table), so it stays well under a second at the seed's size. It waits for no one: an ANALYZE waits
    for a running VACUUM of the same table (an anti-wraparound one is not cancelled for it), so after a
    few seconds the plan goes on with the statistics it has and says so.
    """
    try:
        with engine.begin() as conn:
            conn.execute(text(f"SET LOCAL lock_timeout = '{_ANALYZE_LOCK_TIMEOUT_S}s'"))
            conn.execute(text("ANALYZE image, curation, generation"))
    except OperationalError as exc:
        if not isinstance(exc.orig, psycopg2.errors.LockNotAvailable):
            raise
        log.warning("planner statistics not refreshed (a VACUUM holds the tables for over %ds): %s",
                    _ANALYZE_LOCK_TIMEOUT_S, exc.orig)


_ANALYZE_LOCK_TIMEOUT_S = 5


# --- a batch -----------------------------------------------------------------------------------


def batch_images(engine: Engine, image_ids: Sequence[int], curated_only: bool = True) -> list[Row]:
    """The batch's accepted (and still curated) images with what a request needs, in hash order."""
    with engine.connect() as conn:
        return list(conn.execute(
            select(Image.id, Image.sha256, Image.model_key, Image.model_mime, Image.task_type)
            .where(Image.id.in_(list(image_ids)), Image.status == "accepted", curated(curated_only))
            .order_by(Image.sha256)
        ))


def open_requests(engine: Engine, table: type[Generation] | type[Judgement], rows: list[dict[str, Any]]
                  ) -> dict[str, Row]:
    """Create the pending rows of paid requests (generations, judgements) that do not exist yet, keyed by
    their unique request key; -> {request key: (id, status)} of every row asked for, new or stored."""
    if not rows:
        return {}
    with engine.begin() as conn:
        conn.execute(insert(table).values(rows).on_conflict_do_nothing(index_elements=["request_key"]))
        return {
            row.request_key: row
            for row in conn.execute(
                select(table.id, table.request_key, table.status)
                .where(table.request_key.in_([r["request_key"] for r in rows]))
            )
        }


# --- a run's queue of requests (migration 0012) -----------------------------------------------

# Rows per statement when a plan queues a whole partition (a giant one holds 600k images).
_QUEUE_CHUNK = 2000

# A failed row, or a pending one no live task holds, becomes this run's: a failure of an earlier run
# is asked again (its finished lease cleared), one of this run stays failed (a per-item failure is not
# retried within its run). Without a run (tests, benchmarks, scripts) every failure is asked again,
# as a rerun always did.
_OWN_REQUESTS = text("""
UPDATE generation SET dag_id = :dag_id, run_id = :run_id, status = 'pending',
  claimed_by = CASE WHEN status = 'failed' THEN NULL ELSE claimed_by END,
  claimed_until = CASE WHEN status = 'failed' THEN NULL ELSE claimed_until END
WHERE request_key = ANY(:keys)
  AND (status = 'failed' OR (status = 'pending' AND (claimed_until IS NULL OR claimed_until < now())))
  AND (CAST(:run_id AS text) IS NULL OR status = 'pending'
       OR dag_id IS DISTINCT FROM :dag_id OR run_id IS DISTINCT FROM :run_id)""")


_QUEUE_INSERT = insert(Generation).on_conflict_do_nothing(index_elements=["request_key"])


def queue_requests(engine: Engine, rows: list[dict[str, Any]], dag_id: str | None, run_id: str | None
                   ) -> dict[str, Row]:
    """Create the generations of these requests that do not exist yet and make the open ones the run's
    (see _OWN_REQUESTS); -> {request key: (id, status)} for every row asked for."""
    found: dict[str, Row] = {}
    for start in range(0, len(rows), _QUEUE_CHUNK):
        chunk = rows[start:start + _QUEUE_CHUNK]
        keys = [r["request_key"] for r in chunk]
        with engine.begin() as conn:
            # The rows as parameters (executemany), not .values(chunk): one compiled statement, cached across
            # calls, instead of compiling a multi-row VALUES for every chunk.
            conn.execute(_QUEUE_INSERT, chunk)
            conn.execute(_OWN_REQUESTS, {"keys": keys, "dag_id": dag_id, "run_id": run_id})
            found.update((row.request_key, row) for row in conn.execute(
                select(Generation.id, Generation.request_key, Generation.status)
                .where(Generation.request_key.in_(keys))))
    return found


def request_states(engine: Engine, keys: Iterable[str]) -> dict[str, Any]:
    """{request key: (id, status, dag_id, run_id)} of the generations among these keys that exist."""
    keys = list(keys)
    if not keys:
        return {}
    with engine.connect() as conn:
        return {row.request_key: row for row in conn.execute(
            select(Generation.id, Generation.request_key, Generation.status, Generation.dag_id, Generation.run_id)
            .where(Generation.request_key.in_(keys)))}


def _claim_sql(scope: str) -> str:
    # The inner SELECT ... FOR UPDATE SKIP LOCKED is the usual queue claim: two tasks never lease the
    # same row, and a row another task stored meanwhile is re-read (and dropped) under the lock.
    # `claimed_by = :me` lets an Airflow retry (same task, same claimer) take its dead try's rows back
    # at once; `held` keeps this attempt from claiming what it already has in flight.
    return f"""
UPDATE generation g SET claimed_by = %(me)s, claimed_until = now() + make_interval(secs => %(lease_s)s)
FROM image i
WHERE i.id = g.image_id AND g.id IN (
  SELECT q.id FROM generation q JOIN image qi ON qi.id = q.image_id
  WHERE {scope} AND q.status = 'pending'
    AND (q.claimed_until IS NULL OR q.claimed_until < now() OR q.claimed_by = %(me)s)
    AND NOT (q.id = ANY(%(held)s))
    AND qi.status = 'accepted'
    AND (NOT %(curated_only)s OR EXISTS (
      SELECT 1 FROM curation c WHERE c.image_id = qi.id AND c.status = 'curated'))
  ORDER BY q.id LIMIT %(want)s
  FOR UPDATE OF q SKIP LOCKED)
RETURNING g.id, g.image_id, g.request_key, i.sha256, i.task_type, i.model_key, i.model_mime"""


# In the order the plan queued them (longest answers first, tuwen.synthesis.planning): a task's own batch
# (by request key), then the run's other rows.
_CLAIM_OWN = _claim_sql("q.request_key = ANY(%(keys)s)")
_CLAIM_RUN = _claim_sql("q.dag_id = %(dag_id)s AND q.run_id = %(run_id)s")
_RENEW_CLAIMS = """
UPDATE generation SET claimed_until = now() + make_interval(secs => %(lease_s)s)
WHERE id = ANY(%(ids)s) AND claimed_by = %(me)s AND status = 'pending'"""
_RELEASE_CLAIMS = """
UPDATE generation SET claimed_by = NULL, claimed_until = NULL
WHERE id = ANY(%(ids)s) AND claimed_by = %(me)s AND status = 'pending'"""


_STORE_ANSWER = """
UPDATE generation SET attempts = attempts + %(attempts)s, latency_ms = %(latency_ms)s, dag_id = %(dag_id)s,
  run_id = %(run_id)s, task_id = %(task_id)s, map_index = %(map_index)s, completed_at = now(),
  raw_text = %(raw_text)s, response = %(response)s, finish_reason = %(finish_reason)s,
  prompt_tokens = %(prompt_tokens)s, completion_tokens = %(completion_tokens)s, status = %(status)s,
  error_type = %(error_type)s, error = %(error)s
WHERE id = %(id)s"""


def store_failure_sql(table: str) -> str:
    """The UPDATE recording a paid request's failure (generation or judgement rows alike); a failure never
    overwrites an answer already paid for."""
    return f"""
UPDATE {table} SET attempts = attempts + %(attempts)s, latency_ms = %(latency_ms)s, dag_id = %(dag_id)s,
  run_id = %(run_id)s, task_id = %(task_id)s, map_index = %(map_index)s, completed_at = now(),
  status = 'failed', error_type = %(error_type)s, error = %(error)s
WHERE id = %(id)s AND status NOT IN ('succeeded', 'unparseable')"""


_STORE_FAILURE = store_failure_sql("generation")
_COUNT_ATTEMPTS = "UPDATE generation SET attempts = attempts + %(attempts)s WHERE id = %(id)s"
# Samples are never rewritten: a regeneration is a new generation with a sample of its own.
# Sent with _STORE_ANSWER in one query string (`OneConnectionWriter._atomic`), so the sample's own id is
# %(sample_id)s beside the generation's %(id)s.
_INSERT_SAMPLE = """
INSERT INTO sample (id, generation_id, image_id, task_type, language, conversations, rounds, parse_notes, qc_status)
VALUES (%(sample_id)s, %(generation_id)s, %(image_id)s, %(task_type)s, %(language)s, %(conversations)s, %(rounds)s,
        %(parse_notes)s, 'pending')
ON CONFLICT (generation_id) DO NOTHING"""
_STORE_ANSWER_AND_SAMPLE = f"{_STORE_ANSWER};{_INSERT_SAMPLE}"
# An answer whose row could not be written even escaped: paid for, so done, with the reason.
_STORE_UNSTORABLE = """
UPDATE generation SET attempts = attempts + %(attempts)s, completed_at = now(), status = 'unparseable',
  error_type = 'unstorable', error = %(error)s
WHERE id = %(id)s"""

_ANSWER_TEXT = ("raw_text", "finish_reason", "error_type", "error", "dag_id", "run_id", "task_id")


class OneConnectionWriter:
    """One transaction per call on one pooled DBAPI connection, reconnecting once after a dropped
    connection; used from one thread only (a batch's writer thread). The judge's store shares it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Any = None

    def _transaction(self, statements: Callable[[Any], object]) -> None:
        for attempt in (1, 2):
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    statements(cur)
                conn.commit()
                return
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                # The server restarted or the connection dropped: reconnect once, then give up loudly.
                self._discard()
                if attempt == 2:
                    raise
            except BaseException:
                conn.rollback()
                raise

    def _atomic(self, sql: str, params: Mapping[str, Any]) -> None:
        """One query string, of one statement or several, as one transaction in one round trip.

        PostgreSQL runs the statements of one simple query as one transaction (all or none), and in autocommit
        mode psycopg2 sends no BEGIN and COMMIT of its own: one round trip instead of a statement's plus two,
        for each answer of a run.
        """
        def run(cur: Any) -> None:
            driver = cur.connection
            driver.autocommit = True  # no round trip: psycopg2 only sends BEGIN lazily, before a statement
            try:
                cur.execute(sql, params)
            finally:
                if not driver.closed:
                    driver.autocommit = False

        self._transaction(run)  # its commit finds no transaction open: nothing sent

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self.engine.raw_connection()
        return self._conn

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.invalidate()
            self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class AnswerStore(OneConnectionWriter):
    """Writes one answer (generation and sample) per transaction, in one round trip; used from one thread only."""

    def store_answer(self, values: dict[str, Any], sample: dict[str, Any] | None) -> bool:
        """An answer the server returned (status set by the caller), and its sample if it parsed.

        False when the row could not be written as given and the generation was recorded as
        `unstorable` instead (paid for, so it is not asked again).
        """
        params = {k: storable_text(v) if k in _ANSWER_TEXT else v for k, v in values.items()}
        params["response"] = storable_json(values.get("response"))
        both = params
        if sample is not None:
            both = {**params, **sample, "id": params["id"], "sample_id": sample["id"],
                    "conversations": storable_json(sample["conversations"]),
                    "parse_notes": storable_json(sample["parse_notes"])}
        try:
            self._atomic(_STORE_ANSWER if sample is None else _STORE_ANSWER_AND_SAMPLE, both)
            return True
        except (psycopg2.DataError, psycopg2.IntegrityError, ValueError) as exc:
            reason = storable_text(f"{type(exc).__name__}: {str(exc)[:500]}")
            self._transaction(lambda cur: cur.execute(_STORE_UNSTORABLE, {**params, "error": reason}))
            return False

    def store_failure(self, values: dict[str, Any]) -> None:
        """A request that failed for good (or never went out); a stored answer is left as it is."""
        params = {k: storable_text(v) if k in _ANSWER_TEXT else v for k, v in values.items()}

        def write(cur: Any) -> None:
            cur.execute(_STORE_FAILURE, params)
            if cur.rowcount == 0:
                cur.execute(_COUNT_ATTEMPTS, params)

        self._transaction(write)


class ClaimedRow(NamedTuple):
    id: int
    image_id: int
    request_key: str
    sha256: str
    task_type: str | None
    model_key: str | None
    model_mime: str | None


class RequestClaims(OneConnectionWriter):
    """A mapped task's leases on its run's pending generations (migration 0012); one thread only.

    `claimer` names the task the same way across its Airflow tries; `lease_s` is how long a claim
    holds without `renew` (a killed task's rows wait that long for another task of the run).
    """

    def __init__(self, engine: Engine, claimer: str, lease_s: float, curated_only: bool) -> None:
        super().__init__(engine)
        self.claimer = claimer
        self.lease_s = lease_s
        self.curated_only = curated_only

    def _claim(self, sql: str, params: dict[str, Any]) -> list[ClaimedRow]:
        found: list[ClaimedRow] = []

        def run(cur: Any) -> None:
            cur.execute(sql, params)
            found.extend(ClaimedRow(*row) for row in cur.fetchall())

        self._transaction(run)
        return found

    def claim_own(self, keys: Sequence[str], want: int, held: Iterable[int]) -> list[ClaimedRow]:
        """Up to `want` pending rows of these request keys that no other live task holds, leased to this task:
        (id, image_id, request_key, sha256, task_type, model_key, model_mime)."""
        return self._claim(_CLAIM_OWN, {"keys": list(keys), **self._claim_params(want, held)})

    def claim_run(self, dag_id: str, run_id: str, want: int, held: Iterable[int]) -> list[ClaimedRow]:
        """Up to `want` of the run's pending rows that no other live task holds (the work of the run's other
        batches), leased to this task; the same columns as `claim_own`."""
        return self._claim(_CLAIM_RUN, {"dag_id": dag_id, "run_id": run_id, **self._claim_params(want, held)})

    def _claim_params(self, want: int, held: Iterable[int]) -> dict[str, Any]:
        return {"me": self.claimer, "lease_s": self.lease_s, "want": want, "held": list(held),
                "curated_only": self.curated_only}

    def renew(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if ids:
            self._transaction(lambda cur: cur.execute(_RENEW_CLAIMS, {"ids": ids, "me": self.claimer,
                                                                      "lease_s": self.lease_s}))

    def release(self, ids: Iterable[int]) -> None:
        """Give back rows this task holds and did not store (a stopped batch), for any task to take at once."""
        ids = list(ids)
        if ids:
            self._transaction(lambda cur: cur.execute(_RELEASE_CLAIMS, {"ids": ids, "me": self.claimer}))
