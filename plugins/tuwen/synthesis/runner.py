"""Synthesis: plan a partition's work, then run batches of completions with exactly-once storage.

Planning (one task per run) assigns each new image its task type, persisted on `image.task_type`,
and splits the images that still need a completion into batches for mapped tasks. A batch builds
one request per image (reading the model-ready copy from the object store lazily), sends them
through `VLMClient` and stores each answer the moment it arrives: the `generation` row (keyed by
the deterministic request key) and its parsed `sample`. A rerun, a retried task or a backfill
finds the done keys and sends nothing for them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg2
from psycopg2.extras import Json
from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import make_url

from tuwen.config import Settings
from tuwen.db.models import Generation, Image
from tuwen.db.session import session_scope
from tuwen.domain import LANGUAGES, TASK_TYPES, Partition
from tuwen.progress import Progress
from tuwen.storage import ObjectStore
from tuwen.synthesis.parsing import parse_answer
from tuwen.synthesis.planning import assign_task_types
from tuwen.synthesis.prompts import Prompt, description_instruction, get_prompt
from tuwen.synthesis.vlm_client import VLMClient, VLMRequest, VLMResult, build_messages, data_url

log = logging.getLogger(__name__)

MAX_MAPPED_BATCHES = 1024  # Airflow caps a mapped list at 1024 by default
DONE_STATUSES = ("succeeded", "unparseable")  # paid for: never requested again unless forced


class SynthesisError(RuntimeError):
    """Bad run parameters or a failed batch; the message says what to change."""


@dataclass(frozen=True)
class RunParams:
    """What a run (scheduled or manual) synthesizes; built from the DAG's params."""

    language: str = "zh"  # "zh", "en" or "mix"
    en_share: float = 0.0  # with language="mix": share of images annotated in English
    task_types: tuple[str, ...] = TASK_TYPES
    prompt_version: int | None = None  # None: latest
    limit: int | None = None
    force_regenerate: bool = False

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> RunParams:
        language = (params.get("language") or "zh").strip()
        if language not in (*LANGUAGES, "mix"):
            raise SynthesisError(f"param language must be zh, en or mix, got {language!r}")
        task_types = tuple(params.get("task_types") or TASK_TYPES)
        unknown = set(task_types) - set(TASK_TYPES)
        if unknown:
            raise SynthesisError(f"param task_types has unknown {sorted(unknown)}; known: {', '.join(TASK_TYPES)}")
        raw_share = params.get("en_share")
        en_share = float(raw_share) if raw_share is not None else 0.5
        if not 0.0 <= en_share <= 1.0:
            raise SynthesisError(f"param en_share must be between 0 and 1, got {en_share}")
        limit = params.get("limit")
        if limit is not None and int(limit) < 0:
            raise SynthesisError(f"param limit must be >= 0, got {limit}")
        version = params.get("prompt_version")
        return cls(
            language=language,
            en_share=en_share if language == "mix" else (1.0 if language == "en" else 0.0),
            task_types=task_types,
            prompt_version=int(version) if version not in (None, "") else None,
            limit=int(limit) if limit is not None else None,
            force_regenerate=bool(params.get("force_regenerate", False)),
        )

    def language_for(self, image_sha256: str) -> str:
        """Deterministic per image, so a rerun asks for the same language."""
        if self.en_share <= 0.0:
            return "zh"
        if self.en_share >= 1.0:
            return "en"
        digest = hashlib.sha256(f"language:{image_sha256}".encode()).digest()
        return "en" if int.from_bytes(digest[:8], "big") / 2**64 < self.en_share else "zh"


def sampling_params(settings: Settings, task_type: str) -> dict[str, Any]:
    """Everything that changes the completion besides prompt, image and model: stored and keyed."""
    return {
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_tokens": settings.max_tokens[task_type],
        "seed": settings.seed,
        "max_pixels": settings.max_pixels,
        "min_pixels": settings.min_pixels,
    }


def request_key(image_sha256: str, task_type: str, language: str, prompt: Prompt, model: str,
                sampling: dict[str, Any]) -> str:
    """The generation's identity: same inputs, same key, same stored answer."""
    payload = json.dumps(
        {"image": image_sha256, "task": task_type, "language": language, "prompt": prompt.sha256,
         "model": model, "sampling": sampling},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def sample_id(key: str) -> str:
    return f"tw-{key[:24]}"


# --- planning ---------------------------------------------------------------------------------


@dataclass
class Plan:
    partition: str
    images: int  # accepted images in the partition
    newly_assigned: int
    to_request: int
    already_done: int
    batches: list[dict[str, Any]] = field(default_factory=list)


def _assign_tasks(settings: Settings, partition: Partition) -> int:
    """Persist a task type on every accepted image of the partition that has none (balanced per day)."""
    assigned = 0
    with session_scope(settings.database_url) as session:
        # One planner at a time, so two runs over the same day can't deal the same slots twice.
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext('tuwen.assign_tasks'))"))
        for day in partition.days():
            rows = session.execute(
                select(Image.sha256, Image.task_type, Image.ocr_char_count)
                .where(Image.crawl_date == day, Image.status == "accepted")
            ).all()
            existing = Counter(r.task_type for r in rows if r.task_type)
            new = [r for r in rows if not r.task_type]
            if not new:
                continue
            tasks = assign_task_types([r.sha256 for r in new], settings.task_mix, dict(existing))
            for sha, task in tasks.items():
                session.execute(update(Image).where(Image.sha256 == sha).values(task_type=task))
            assigned += len(tasks)
    return assigned


def plan_partition(settings: Settings, partition: Partition, params: RunParams) -> Plan:
    """Assign tasks, then list the images that still need a completion, split into mapped batches."""
    newly_assigned = _assign_tasks(settings, partition)
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            select(Image.id, Image.sha256, Image.task_type)
            .where(Image.crawl_date >= partition.start, Image.crawl_date < partition.end,
                   Image.status == "accepted", Image.task_type.in_(params.task_types))
            .order_by(Image.sha256)
        ).all()
        images = session.scalar(
            select(func.count()).select_from(Image).where(
                Image.crawl_date >= partition.start, Image.crawl_date < partition.end, Image.status == "accepted")
        )
        keys = {}
        for row in rows:
            language = params.language_for(row.sha256)
            prompt = get_prompt(row.task_type, language, params.prompt_version, settings.prompts_dir)
            keys[row.id] = request_key(row.sha256, row.task_type, language, prompt, settings.vlm_model,
                                       sampling_params(settings, row.task_type))
        done: set[str] = set()
        if keys and not params.force_regenerate:
            done = set(session.scalars(
                select(Generation.request_key).where(
                    Generation.request_key.in_(list(keys.values())), Generation.status.in_(DONE_STATUSES))
            ))
    todo = [image_id for image_id, key in keys.items() if key not in done]
    if params.limit is not None:
        todo = todo[: params.limit]
    n_batches = min(MAX_MAPPED_BATCHES, math.ceil(len(todo) / settings.batch_size)) if todo else 0
    batches = [{"image_ids": todo[i::n_batches], "partition": partition.label} for i in range(n_batches)]
    return Plan(partition.label, images or 0, newly_assigned, len(todo), len(keys) - len(todo) if keys else 0,
                batches)


# --- running a batch --------------------------------------------------------------------------


@dataclass
class AirflowIds:
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    map_index: int | None = None


@dataclass
class BatchResult:
    requested: int = 0
    skipped_done: int = 0
    succeeded: int = 0
    unparseable: int = 0
    failed: int = 0
    failed_by_type: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Job:
    key: str
    generation_id: int
    image_id: int
    image_sha256: str
    model_key: str
    model_mime: str
    task_type: str
    language: str
    prompt: Prompt
    sampling: dict[str, Any]


def _prepare_jobs(settings: Settings, image_ids: Sequence[int], params: RunParams, ids: AirflowIds,
                  result: BatchResult) -> list[_Job]:
    """Create (or find) the generation rows of the batch; return the ones that still need a call."""
    with session_scope(settings.database_url) as session:
        images = session.execute(
            select(Image.id, Image.sha256, Image.model_key, Image.model_mime, Image.task_type)
            .where(Image.id.in_(list(image_ids)), Image.status == "accepted")
            .order_by(Image.sha256)
        ).all()
        specs = []
        for img in images:
            if not img.task_type or not img.model_key:
                raise SynthesisError(f"image {img.sha256} has no task type or model-ready copy; plan first")
            language = params.language_for(img.sha256)
            prompt = get_prompt(img.task_type, language, params.prompt_version, settings.prompts_dir)
            sampling = sampling_params(settings, img.task_type)
            key = request_key(img.sha256, img.task_type, language, prompt, settings.vlm_model, sampling)
            specs.append((img, language, prompt, sampling, key))
        if not specs:
            return []
        session.execute(
            insert(Generation).values([
                {"request_key": key, "image_id": img.id, "task_type": img.task_type, "language": language,
                 "prompt_id": prompt.id, "prompt_version": prompt.version, "prompt_sha256": prompt.sha256,
                 "model": settings.vlm_model, "sampling": sampling, "status": "pending",
                 "dag_id": ids.dag_id, "run_id": ids.run_id, "task_id": ids.task_id, "map_index": ids.map_index}
                for img, language, prompt, sampling, key in specs
            ]).on_conflict_do_nothing(index_elements=["request_key"])
        )
        existing = {
            row.request_key: row
            for row in session.execute(
                select(Generation.id, Generation.request_key, Generation.status)
                .where(Generation.request_key.in_([s[4] for s in specs]))
            )
        }
    jobs = []
    for img, language, prompt, sampling, key in specs:
        row = existing[key]
        if row.status in DONE_STATUSES and not params.force_regenerate:
            result.skipped_done += 1
            continue
        jobs.append(_Job(key, row.id, img.id, img.sha256, img.model_key, img.model_mime or "image/jpeg",
                         img.task_type, language, prompt, sampling))
    return jobs


def _libpq_dsn(database_url: str) -> str:
    """The SQLAlchemy URL as a libpq connection string for psycopg2."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class _ResultWriter:
    """Stores each answer as it arrives, one transaction per answer, on one DB thread.

    Committing per answer is what bounds a killed worker's loss to the requests in flight.
    """

    def __init__(self, settings: Settings, jobs: dict[str, _Job], ids: AirflowIds, result: BatchResult) -> None:
        self.dsn = _libpq_dsn(settings.database_url)
        self._conn: Any = None
        self.jobs = jobs
        self.ids = ids
        self.result = result
        where = f"map {ids.map_index}" if ids.map_index is not None else "batch"
        self.progress = Progress(f"synthesis {where}", total=len(jobs), log=log, unit="completions")

    def write(self, res: VLMResult) -> None:
        self._store(res)
        # Counted after the commit: the line reports answers that are safely stored.
        self.progress.advance(completion_tokens=res.completion_tokens or 0,
                              **({f"error_{res.error_type or 'unknown'}": 1} if not res.ok else {}))

    def _store(self, res: VLMResult) -> None:
        job = self.jobs[res.key]
        values: dict[str, Any] = {
            "latency_ms": res.latency_ms,
            "dag_id": self.ids.dag_id, "run_id": self.ids.run_id, "task_id": self.ids.task_id,
            "map_index": self.ids.map_index,
        }
        sample_row = None
        if not res.ok:
            values |= {"status": "failed", "error_type": res.error_type, "error": res.error}
            self.result.failed += 1
            self.result.failed_by_type[res.error_type or "unknown"] = (
                self.result.failed_by_type.get(res.error_type or "unknown", 0) + 1)
        else:
            self.result.prompt_tokens += res.prompt_tokens or 0
            self.result.completion_tokens += res.completion_tokens or 0
            instruction = description_instruction(job.image_sha256, job.language)
            parsed = parse_answer(job.task_type, job.language, res.text or "", instruction)
            values |= {
                "raw_text": res.text, "response": Json(res.response), "finish_reason": res.finish_reason,
                "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                "status": "succeeded" if parsed.ok else "unparseable",
                "error_type": None if parsed.ok else "unparseable",
                "error": None if parsed.ok else parsed.error,
            }
            if parsed.ok:
                self.result.succeeded += 1
                sample_row = {
                    "id": sample_id(job.key), "generation_id": job.generation_id, "image_id": job.image_id,
                    "task_type": job.task_type, "language": job.language,
                    "conversations": Json(parsed.conversations), "rounds": parsed.rounds,
                    "parse_notes": Json(list(parsed.notes)),
                }
            else:
                self.result.unparseable += 1
        self._execute(job.generation_id, res, values, sample_row)

    def _execute(self, generation_id: int, res: VLMResult, values: dict[str, Any],
                 sample_row: dict[str, Any] | None) -> None:
        """One transaction per answer, in plain SQL on one connection: this runs for every completion,
        so it must cost well under a millisecond of CPU (SQLAlchemy's statement building did not)."""
        params = {**values, "id": generation_id, "attempts": res.attempts}
        for attempt in (1, 2):
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    if res.ok:
                        cur.execute(_STORE_ANSWER, params)
                    else:
                        # A failed forced regeneration must not overwrite an answer already paid for.
                        cur.execute(_STORE_FAILURE, params)
                        if cur.rowcount == 0:
                            cur.execute(_COUNT_ATTEMPTS, params)
                    if sample_row is not None:
                        cur.execute(_UPSERT_SAMPLE, sample_row)
                conn.commit()
                return
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                # The server restarted or the connection dropped: reconnect once, then give up loudly.
                self._conn = None
                if attempt == 2:
                    raise

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(self.dsn)
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()


_STORE_ANSWER = """
UPDATE generation SET attempts = attempts + %(attempts)s, latency_ms = %(latency_ms)s, dag_id = %(dag_id)s,
  run_id = %(run_id)s, task_id = %(task_id)s, map_index = %(map_index)s, completed_at = now(),
  raw_text = %(raw_text)s, response = %(response)s, finish_reason = %(finish_reason)s,
  prompt_tokens = %(prompt_tokens)s, completion_tokens = %(completion_tokens)s, status = %(status)s,
  error_type = %(error_type)s, error = %(error)s
WHERE id = %(id)s"""
_STORE_FAILURE = """
UPDATE generation SET attempts = attempts + %(attempts)s, latency_ms = %(latency_ms)s, dag_id = %(dag_id)s,
  run_id = %(run_id)s, task_id = %(task_id)s, map_index = %(map_index)s, completed_at = now(),
  status = 'failed', error_type = %(error_type)s, error = %(error)s
WHERE id = %(id)s AND status NOT IN ('succeeded', 'unparseable')"""
_COUNT_ATTEMPTS = "UPDATE generation SET attempts = attempts + %(attempts)s WHERE id = %(id)s"
# A forced regeneration replaces the sample's text and sends it back through QC.
_UPSERT_SAMPLE = """
INSERT INTO sample (id, generation_id, image_id, task_type, language, conversations, rounds, parse_notes, qc_status)
VALUES (%(id)s, %(generation_id)s, %(image_id)s, %(task_type)s, %(language)s, %(conversations)s, %(rounds)s,
        %(parse_notes)s, 'pending')
ON CONFLICT (generation_id) DO UPDATE SET conversations = EXCLUDED.conversations, rounds = EXCLUDED.rounds,
  parse_notes = EXCLUDED.parse_notes, qc_status = 'pending', qc_reasons = '[]'::jsonb"""


# Images read (and base64-encoded) ahead of the client's pulls, on _IO_THREADS threads.
_IO_THREADS = 8
_READ_AHEAD = 2 * _IO_THREADS


async def _run_batch_async(settings: Settings, jobs: list[_Job], writer: _ResultWriter,
                           client: VLMClient | None = None) -> None:
    store = ObjectStore(settings)
    loop = asyncio.get_running_loop()
    io_pool = concurrent.futures.ThreadPoolExecutor(max_workers=_IO_THREADS, thread_name_prefix="tuwen-s3")
    db_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuwen-db")

    def image_url(job: _Job) -> str:
        if settings.vlm_image_mode == "presigned_url":
            return store.presigned_get(job.model_key, expires_s=int(settings.vlm_timeout_s * 4))
        return data_url(store.get_bytes(job.model_key), job.model_mime)

    async def requests() -> AsyncIterator[VLMRequest]:
        # The client pulls one request at a time, so reading images one by one would put a serial S3
        # round trip in front of every request: a read-ahead window keeps the io_pool's reads in
        # parallel (and bounds the encoded images held in memory to the window).
        window: deque[tuple[_Job, asyncio.Future[str]]] = deque()
        upcoming = iter(jobs)
        try:
            while True:
                while len(window) < _READ_AHEAD and (job := next(upcoming, None)) is not None:
                    window.append((job, loop.run_in_executor(io_pool, image_url, job)))
                if not window:
                    return
                job, future = window.popleft()
                url = await future
                yield VLMRequest(
                    key=job.key,
                    messages=build_messages(job.prompt.text, url),
                    max_tokens=job.sampling["max_tokens"],
                    temperature=job.sampling["temperature"],
                    top_p=job.sampling["top_p"],
                    seed=job.sampling["seed"],
                    extra_body={"mm_processor_kwargs": {"max_pixels": job.sampling["max_pixels"],
                                                        "min_pixels": job.sampling["min_pixels"]}},
                )
        finally:
            for _, future in window:
                future.cancel()

    async def on_result(res: VLMResult) -> None:
        await loop.run_in_executor(db_pool, writer.write, res)

    own_client = client is None
    client = client or VLMClient.from_settings(settings)
    try:
        await client.run(requests(), on_result)
    finally:
        if own_client:
            await client.aclose()
        io_pool.shutdown(wait=False, cancel_futures=True)
        db_pool.shutdown(wait=True)
        writer.close()


def run_batch(settings: Settings, image_ids: Sequence[int], params: RunParams, ids: AirflowIds | None = None
              ) -> BatchResult:
    """Request and store completions for a batch of images; done keys are skipped, nothing is paid twice."""
    ids = ids or AirflowIds()
    result = BatchResult()
    started = time.perf_counter()
    jobs = _prepare_jobs(settings, image_ids, params, ids, result)
    result.requested = len(jobs)
    if jobs:
        writer = _ResultWriter(settings, {j.key: j for j in jobs}, ids, result)
        try:
            asyncio.run(_run_batch_async(settings, jobs, writer))
        finally:
            writer.progress.finish()
    result.elapsed_s = time.perf_counter() - started
    log.info(
        "batch done: %d requested, %d skipped (already stored), %d ok, %d unparseable, %d failed %s, "
        "%d completion tokens in %.1fs (%.0f tokens/s)",
        result.requested, result.skipped_done, result.succeeded, result.unparseable, result.failed,
        result.failed_by_type or "", result.completion_tokens, result.elapsed_s,
        result.completion_tokens / result.elapsed_s if result.elapsed_s else 0.0,
    )
    return result
