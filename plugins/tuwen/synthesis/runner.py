"""Running a batch of completions with exactly-once storage.

A batch builds one request per image (reading the model-ready copy from the object store lazily),
sends them through `VLMClient` and stores each answer the moment it arrives: the `generation` row
(keyed by the request key of `tuwen.synthesis.keys`) and its parsed `sample`. A rerun, a retried
task or a backfill finds the done keys and sends nothing for them. Planning the batches is
`tuwen.synthesis.planning`; the SQL is `tuwen.synthesis.lineage`.

One item's trouble stays with that item: an image whose object is missing from the store is
recorded as failed with `image_missing` (no call is paid for it), an answer that cannot be parsed
or stored is recorded with its reason, and the batch goes on. Only an unreachable service (the
endpoint's circuit breaker, the database, the object store) stops a batch, so Airflow's retries
apply to outages and not to bad items.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

from tuwen.db.models import Generation
from tuwen.progress import Progress
from tuwen.resources import Resources
from tuwen.storage import ObjectMissingError
from tuwen.synthesis import lineage
from tuwen.synthesis.keys import RequestSpec, RunParams, request_key, request_spec, sample_id, sampling_params
from tuwen.synthesis.parsing import ParseResult, parse_answer
from tuwen.synthesis.planning import Plan, plan_partition
from tuwen.synthesis.prompts import description_instruction
from tuwen.synthesis.vlm_client import VLMClient, VLMRequest, VLMResult, build_messages, data_url

__all__ = ["AirflowIds", "BatchResult", "Plan", "RunParams", "SynthesisError", "plan_partition", "request_key",
           "run_batch", "sample_id", "sampling_params"]

log = logging.getLogger(__name__)

IMAGE_MISSING = "image_missing"


class SynthesisError(RuntimeError):
    """A batch that cannot run as asked; the message says what to change."""


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
    unparseable_by_reason: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def count_failure(self, error_type: str) -> None:
        self.failed += 1
        self.failed_by_type[error_type] = self.failed_by_type.get(error_type, 0) + 1

    def count_unparseable(self, reason: str) -> None:
        self.unparseable += 1
        self.unparseable_by_reason[reason] = self.unparseable_by_reason.get(reason, 0) + 1


@dataclass(frozen=True)
class _Job:
    spec: RequestSpec
    generation_id: int
    image_id: int
    image_sha256: str
    model_key: str
    model_mime: str

    @property
    def key(self) -> str:
        return self.spec.key


def _prepare_jobs(resources: Resources, image_ids: Sequence[int], params: RunParams, ids: AirflowIds,
                  result: BatchResult) -> list[_Job]:
    """Create (or find) the generation rows of the batch; return the ones that still need a call."""
    settings = resources.settings
    images = lineage.batch_images(resources.engine, image_ids, curated_only=settings.curate_enabled)
    specs = []
    for img in images:
        if not img.task_type:
            raise SynthesisError(f"image {img.sha256} has no task type; plan the partition first")
        specs.append((img, request_spec(settings, params, img.sha256, img.task_type)))
    existing = lineage.open_requests(resources.engine, Generation, [
        {"request_key": spec.key, "image_id": img.id, "task_type": spec.task_type, "language": spec.language,
         "prompt_id": spec.prompt.id, "prompt_version": spec.prompt.version, "prompt_sha256": spec.prompt.sha256,
         "model": settings.vlm_model, "sampling": spec.sampling, "status": "pending",
         "dag_id": ids.dag_id, "run_id": ids.run_id, "task_id": ids.task_id, "map_index": ids.map_index}
        for img, spec in specs
    ])
    jobs = []
    for img, spec in specs:
        row = existing[spec.key]
        if row.status in lineage.DONE_STATUSES:
            result.skipped_done += 1
            continue
        jobs.append(_Job(spec, row.id, img.id, img.sha256, img.model_key or "", img.model_mime or "image/jpeg"))
    return jobs


def _parse(job: _Job, text: str) -> ParseResult:
    instruction = description_instruction(job.image_sha256, job.spec.language)
    try:
        return parse_answer(job.spec.task_type, job.spec.language, text, instruction)
    except Exception as exc:  # a parser defect is this answer's problem, not the batch's
        log.exception("parsing the answer for %s failed", job.key)
        return ParseResult(ok=False, error=f"parser_error: {type(exc).__name__}")


class _ResultWriter:
    """Turns each finished request into its rows and stores them, on the batch's one DB thread."""

    def __init__(self, resources: Resources, jobs: dict[str, _Job], ids: AirflowIds, result: BatchResult) -> None:
        self.store = lineage.AnswerStore(resources.engine)
        self.jobs = jobs
        self.ids = ids
        self.result = result
        where = f"map {ids.map_index}" if ids.map_index is not None else "batch"
        self.progress = Progress(f"synthesis {where}", total=len(jobs), log=log, unit="completions")

    def _run_ids(self) -> dict[str, Any]:
        return {"dag_id": self.ids.dag_id, "run_id": self.ids.run_id, "task_id": self.ids.task_id,
                "map_index": self.ids.map_index}

    def write(self, res: VLMResult) -> None:
        if res.ok:
            self._store_answer(self.jobs[res.key], res)
        else:
            self._store_failure(self.jobs[res.key], res.error_type or "unknown", res.error, res.attempts,
                                res.latency_ms)
        # Counted after the commit: the line reports answers that are safely stored.
        self.progress.advance(completion_tokens=res.completion_tokens or 0,
                              **({f"error_{res.error_type or 'unknown'}": 1} if not res.ok else {}))

    def image_missing(self, job: _Job, message: str) -> None:
        """The image's object is gone from the store: recorded on its generation, nothing sent."""
        self._store_failure(job, IMAGE_MISSING, message, attempts=0, latency_ms=None)
        self.progress.advance(**{f"error_{IMAGE_MISSING}": 1})

    def _store_failure(self, job: _Job, error_type: str, error: str | None, attempts: int,
                       latency_ms: float | None) -> None:
        self.store.store_failure({**self._run_ids(), "id": job.generation_id, "attempts": attempts,
                                  "latency_ms": latency_ms, "error_type": error_type, "error": error})
        self.result.count_failure(error_type)

    def _store_answer(self, job: _Job, res: VLMResult) -> None:
        self.result.prompt_tokens += res.prompt_tokens or 0
        self.result.completion_tokens += res.completion_tokens or 0
        parsed = _parse(job, res.text or "")
        values = {
            **self._run_ids(), "id": job.generation_id, "attempts": res.attempts, "latency_ms": res.latency_ms,
            "raw_text": res.text, "response": res.response, "finish_reason": res.finish_reason,
            "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
            "status": "succeeded" if parsed.ok else "unparseable",
            "error_type": None if parsed.ok else "unparseable",
            "error": None if parsed.ok else parsed.error,
        }
        sample = None
        if parsed.ok:
            sample = {"id": sample_id(job.key), "generation_id": job.generation_id, "image_id": job.image_id,
                      "task_type": job.spec.task_type, "language": job.spec.language,
                      "conversations": parsed.conversations, "rounds": parsed.rounds,
                      "parse_notes": list(parsed.notes)}
        if not self.store.store_answer(values, sample):
            self.result.count_unparseable("unstorable")
        elif parsed.ok:
            self.result.succeeded += 1
        else:
            self.result.count_unparseable(parsed.error or "unknown")

    def close(self) -> None:
        self.store.close()


# Images read (and base64-encoded) ahead of the client's pulls, on _IO_THREADS threads.
_IO_THREADS = 8
_READ_AHEAD = 2 * _IO_THREADS


class ImageJob(Protocol):
    """What a request needs to carry an image: any job with these (synthesis's, the judge's)."""

    @property
    def image_sha256(self) -> str: ...
    @property
    def model_key(self) -> str: ...
    @property
    def model_mime(self) -> str: ...


J = TypeVar("J", bound="ImageJob")


def image_url(resources: Resources, job: ImageJob) -> str:
    """The image as the request carries it (a data URL or a presigned URL); ObjectMissingError if gone."""
    settings, store = resources.settings, resources.store
    if not job.model_key:
        raise ObjectMissingError(f"image {job.image_sha256} has no model-ready copy")
    if settings.vlm_image_mode == "presigned_url":
        if not store.exists(job.model_key):
            raise ObjectMissingError(f"no object {job.model_key!r} in bucket {store.bucket!r}")
        return store.presigned_get(job.model_key, expires_s=int(settings.vlm_timeout_s * 4))
    return data_url(store.get_bytes(job.model_key), job.model_mime)


def _request(job: _Job, image_url: str) -> VLMRequest:
    sampling = job.spec.sampling
    return VLMRequest(
        key=job.key,
        messages=build_messages(job.spec.prompt.text, image_url),
        max_tokens=sampling["max_tokens"],
        temperature=sampling["temperature"],
        top_p=sampling["top_p"],
        seed=sampling["seed"],
        extra_body={"mm_processor_kwargs": {"max_pixels": sampling["max_pixels"],
                                            "min_pixels": sampling["min_pixels"]}},
    )


async def send_with_images(
    resources: Resources, jobs: Sequence[J], request_of: Callable[[J, str], VLMRequest],
    on_result: Callable[[VLMResult], None], on_missing: Callable[[J, str], None],
    client: VLMClient | None = None, endpoint: tuple[str, str, str] | None = None,
) -> None:
    """Send one request per job, its image read from the object store; the stage's plumbing.

    `on_result` (each finished request) and `on_missing` (a job whose image object is gone: nothing
    is sent for it) run on one database thread, so a stage's writer needs no locking. Without a
    `client`, one is built for `endpoint` (default: the VLM's) and closed at the end. Raises what
    `VLMClient.run` raises (CircuitOpenError when the endpoint looks down).
    """
    loop = asyncio.get_running_loop()
    io_pool = concurrent.futures.ThreadPoolExecutor(max_workers=_IO_THREADS, thread_name_prefix="tuwen-s3")
    db_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuwen-db")

    async def requests() -> AsyncIterator[VLMRequest]:
        # The client pulls one request at a time, so reading images one by one would put a serial S3
        # round trip in front of every request: a read-ahead window keeps the io_pool's reads in
        # parallel (and bounds the encoded images held in memory to the window).
        window: deque[tuple[J, asyncio.Future[str]]] = deque()
        upcoming = iter(jobs)
        try:
            while True:
                while len(window) < _READ_AHEAD and (job := next(upcoming, None)) is not None:
                    window.append((job, loop.run_in_executor(io_pool, image_url, resources, job)))
                if not window:
                    return
                job, future = window.popleft()
                try:
                    url = await future
                except ObjectMissingError as exc:
                    await loop.run_in_executor(db_pool, on_missing, job, str(exc))
                    continue
                yield request_of(job, url)
        finally:
            for _, future in window:
                future.cancel()

    async def deliver(res: VLMResult) -> None:
        await loop.run_in_executor(db_pool, on_result, res)

    own_client = client is None
    client = client or VLMClient.from_settings(resources.settings, endpoint)
    try:
        await client.run(requests(), deliver)
    finally:
        if own_client:
            await client.aclose()
        io_pool.shutdown(wait=False, cancel_futures=True)
        db_pool.shutdown(wait=True)


def run_batch(resources: Resources, image_ids: Sequence[int], params: RunParams, ids: AirflowIds | None = None
              ) -> BatchResult:
    """Request and store completions for a batch of images; done keys are skipped, nothing is paid twice."""
    ids = ids or AirflowIds()
    result = BatchResult()
    started = time.perf_counter()
    jobs = _prepare_jobs(resources, image_ids, params, ids, result)
    result.requested = len(jobs)
    if jobs:
        writer = _ResultWriter(resources, {j.key: j for j in jobs}, ids, result)
        try:
            asyncio.run(send_with_images(resources, jobs, _request, writer.write, writer.image_missing))
        finally:
            writer.progress.finish()
            writer.close()
    result.elapsed_s = time.perf_counter() - started
    log.info(
        "batch done: %d requested, %d skipped (already stored), %d ok, %d unparseable %s, %d failed %s, "
        "%d completion tokens in %.1fs (%.0f tokens/s)",
        result.requested, result.skipped_done, result.succeeded, result.unparseable,
        result.unparseable_by_reason or "", result.failed, result.failed_by_type or "", result.completion_tokens,
        result.elapsed_s, result.completion_tokens / result.elapsed_s if result.elapsed_s else 0.0,
    )
    return result
