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
import itertools
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

from tuwen.progress import Progress
from tuwen.resources import Resources
from tuwen.storage import AsyncObjectReader, ObjectMissingError
from tuwen.synthesis import lineage
from tuwen.synthesis.keys import (
    RequestSpec,
    RunParams,
    generation_row,
    request_key,
    request_spec,
    sample_id,
    sampling_params,
)
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
    requested: int = 0  # sent by this task (or found without an image object)
    skipped_done: int = 0
    taken_over: int = 0  # of `requested`: rows of the run's other batches (continuous flow)
    taken_by_others: int = 0  # rows of this batch that another task of the run sent
    stale_plan: int = 0  # rows planned under other settings than this task's: left pending
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


def _queue_own(resources: Resources, image_ids: Sequence[int], params: RunParams, ids: AirflowIds,
               result: BatchResult) -> list[str]:
    """Create (or find, and make this run's) the generation rows of the batch; return the request keys
    that still need a call (the rest are stored: counted as skipped)."""
    settings = resources.settings
    images = lineage.batch_images(resources.engine, image_ids, curated_only=settings.curate_enabled)
    specs = []
    for img in images:
        if not img.task_type:
            raise SynthesisError(f"image {img.sha256} has no task type; plan the partition first")
        specs.append(request_spec(settings, params, img.sha256, img.task_type))
    rows = {spec.key: generation_row(settings, spec, img.id, ids.dag_id, ids.run_id, ids.task_id, ids.map_index)
            for img, spec in zip(images, specs, strict=True)}
    existing = lineage.request_states(resources.engine, rows)
    # What the plan queued for this very run is ready; the rest is created or made this run's.
    to_queue = [row for key, row in rows.items() if key not in existing or (
        existing[key].status not in lineage.DONE_STATUSES
        and (ids.run_id is None or (existing[key].dag_id, existing[key].run_id) != (ids.dag_id, ids.run_id)))]
    if to_queue:
        existing.update(lineage.queue_requests(resources.engine, to_queue, ids.dag_id, ids.run_id))
    keys = []
    for spec in specs:
        if existing[spec.key].status in lineage.DONE_STATUSES:
            result.skipped_done += 1
        else:
            keys.append(spec.key)
    # In queue order (the plan's: longest answers first), the order claims take them in.
    keys.sort(key=lambda key: existing[key].id)
    return keys


# Rows a task claims at a time, at most: the read-ahead window's worth, so claims follow the free request
# slots (and never more than the task's requests in flight, or a task with few slots would hoard its run).
_CLAIM_CHUNK = 16
# A claim of a task's own rows names this many of its request keys, the first not yet claimed: naming the
# whole batch each time (750 keys in a 3,000-image run of 4 tasks) cost the task quoting and PostgreSQL
# index probes that grew with the square of the batch.
_CLAIM_WINDOW = 4 * _CLAIM_CHUNK
# A claim's lease, renewed every _RENEW_S while the task lives: a task killed outright holds its rows
# this long (its own Airflow retry takes them back at once).
LEASE_S = 300.0
_RENEW_S = 60.0


class _ClaimedJobs:
    """The jobs of a batch task, claimed as its request slots free up (issue 19: no idle slots at batch ends).

    First the task's own batch, then — in an Airflow run — any pending row of its run that no live task
    holds: the batches queued behind it for a pool slot. A task therefore ends when its run has no
    work left to start, not when its own slowest request returns, and the tasks started later find
    their rows done and end at once. Claims are leases (`lineage.RequestClaims`), so two tasks never
    send the same request, and a row stored is never claimed again.
    """

    def __init__(self, resources: Resources, params: RunParams, ids: AirflowIds, own_keys: list[str],
                 result: BatchResult) -> None:
        self.resources = resources
        self.params = params
        self.ids = ids
        self.own_keys = own_keys
        self.result = result
        # Not an Airflow task (a script, a test, a benchmark): one claimer for all of them, so a rerun after a
        # killed process takes its rows back at once, as reruns always did; they do not exclude each other.
        claimer = f"{ids.dag_id}/{ids.run_id}/{ids.task_id}/{ids.map_index}" if ids.run_id is not None else "local"
        self.claims = lineage.RequestClaims(resources.engine, claimer, LEASE_S, resources.settings.curate_enabled)
        # The claims' connection is used from this one thread (leases are not shared with the writer's).
        self.thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuwen-claims")
        self.held: set[int] = set()  # generation ids claimed by this attempt and not yet stored
        # Rows planned under other settings: not this task's to send, kept out of its later claims (a row
        # given back at once would be claimed again by the next call) and given back at the end.
        self.stale: set[int] = set()
        self.jobs: dict[str, _Job] = {}
        # Own keys not yet claimed by this attempt, in queue order (a dict as an ordered set).
        self.unclaimed = dict.fromkeys(own_keys)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn, *args)

    def _job(self, row: lineage.ClaimedRow) -> _Job | None:
        if not row.task_type:  # a plan assigns the task before it queues the row
            raise SynthesisError(f"image {row.sha256} has no task type; plan the partition first")
        spec = request_spec(self.resources.settings, self.params, row.sha256, row.task_type)
        if spec.key != row.request_key:
            # Planned under other settings (prompt, model, sampling changed since): not this task's request.
            return None
        job = _Job(spec, row.id, row.image_id, row.sha256, row.model_key or "", row.model_mime or "image/jpeg")
        self.jobs[job.key] = job
        self.held.add(job.generation_id)
        return job

    def _claim_own(self, want: int) -> list[lineage.ClaimedRow]:
        """Claim up to `want` of the first _CLAIM_WINDOW unclaimed own keys (claims' thread). A window with
        fewer claimable rows than that is done: its other keys are stored, held by another live task (the
        run phase takes them if their lease runs out) or planned under other settings."""
        window = list(itertools.islice(self.unclaimed, _CLAIM_WINDOW))
        if not window:
            return []
        rows = self.claims.claim_own(window, want, self.held | self.stale)
        for key in window if len(rows) < want else (row.request_key for row in rows):
            self.unclaimed.pop(key, None)
        return rows

    def stored(self, job: _Job) -> None:
        """The job's outcome is committed (writer's thread): its row is done, no longer held. Only after the
        commit: a row dropped from `held` while still pending could be claimed again by this very task."""
        del self.jobs[job.key]
        self.held.discard(job.generation_id)

    async def __aiter__(self) -> AsyncIterator[_Job]:
        phases: list[tuple[str, Callable[[int], list[lineage.ClaimedRow]]]] = [("own", self._claim_own)]
        if self.ids.dag_id is not None and self.ids.run_id is not None:
            dag_id, run_id = self.ids.dag_id, self.ids.run_id
            phases.append(("run", lambda want: self.claims.claim_run(dag_id, run_id, want, self.held | self.stale)))
        own_sent = 0
        for phase, claim in phases:
            while True:
                rows = await self._call(claim, min(_CLAIM_CHUNK, self.resources.settings.vlm_max_in_flight))
                if not rows:
                    if phase == "own" and self.unclaimed:
                        continue  # nothing claimable in this window: the next one
                    break
                for row in rows:
                    job = self._job(row)
                    if job is None:
                        self.stale.add(row.id)
                        self.result.stale_plan += 1
                        continue
                    self.result.requested += 1
                    if phase == "run":
                        self.result.taken_over += 1
                    else:
                        own_sent += 1
                    yield job
        # Own rows not stored before and not sent here: another task of the run took them over.
        self.result.taken_by_others = len(self.own_keys) - own_sent

    async def keep_leases(self) -> None:
        """Renew the leases of what this task holds every _RENEW_S, while it runs."""
        while True:
            await asyncio.sleep(_RENEW_S)
            await self._call(self.claims.renew, list(self.held))

    async def close(self) -> None:
        """Give back what was claimed and not stored (a stopped batch, stale rows), then drop the connection."""
        try:
            await self._call(self.claims.release, list(self.held | self.stale))
        finally:
            await self._call(self.claims.close)
            self.thread.shutdown(wait=True)


def _parse(job: _Job, text: str) -> ParseResult:
    instruction = description_instruction(job.image_sha256, job.spec.language)
    try:
        return parse_answer(job.spec.task_type, job.spec.language, text, instruction)
    except Exception as exc:  # a parser defect is this answer's problem, not the batch's
        log.exception("parsing the answer for %s failed", job.key)
        return ParseResult(ok=False, error=f"parser_error: {type(exc).__name__}")


class _ResultWriter:
    """Turns each finished request into its rows and stores them, on the batch's one DB thread."""

    def __init__(self, resources: Resources, source: _ClaimedJobs, ids: AirflowIds, result: BatchResult) -> None:
        self.store = lineage.AnswerStore(resources.engine)
        self.source = source
        self.ids = ids
        self.result = result
        where = f"map {ids.map_index}" if ids.map_index is not None else "batch"
        # The total is the task's own batch; work taken over from the run's other batches adds to it.
        self.progress = Progress(f"synthesis {where}", total=len(source.own_keys), log=log, unit="completions")

    def _run_ids(self) -> dict[str, Any]:
        return {"dag_id": self.ids.dag_id, "run_id": self.ids.run_id, "task_id": self.ids.task_id,
                "map_index": self.ids.map_index}

    def write(self, res: VLMResult) -> None:
        job = self.source.jobs[res.key]
        if res.ok:
            self._store_answer(job, res)
        else:
            self._store_failure(job, res.error_type or "unknown", res.error, res.attempts, res.latency_ms)
        self.source.stored(job)
        # Counted after the commit: the line reports answers that are safely stored.
        self.progress.advance(completion_tokens=res.completion_tokens or 0,
                              **({f"error_{res.error_type or 'unknown'}": 1} if not res.ok else {}))

    def image_missing(self, job: _Job, message: str) -> None:
        """The image's object is gone from the store: recorded on its generation, nothing sent."""
        self._store_failure(job, IMAGE_MISSING, message, attempts=0, latency_ms=None)
        self.source.stored(job)
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


# Images read (and base64-encoded) ahead of the client's pulls, at most this many at once.
_READ_AHEAD = 16


class ImageJob(Protocol):
    """What a request needs to carry an image: any job with these (synthesis's, the judge's)."""

    @property
    def image_sha256(self) -> str: ...
    @property
    def model_key(self) -> str: ...
    @property
    def model_mime(self) -> str: ...


J = TypeVar("J", bound="ImageJob")
T = TypeVar("T")


async def image_url(resources: Resources, reader: AsyncObjectReader, job: ImageJob) -> str:
    """The image as the request carries it (a data URL or a presigned URL); ObjectMissingError if gone."""
    settings, store = resources.settings, resources.store
    if not job.model_key:
        raise ObjectMissingError(f"image {job.image_sha256} has no model-ready copy")
    if settings.vlm_image_mode == "presigned_url":
        if not await reader.exists(job.model_key):
            raise ObjectMissingError(f"no object {job.model_key!r} in bucket {store.bucket!r}")
        return store.presigned_get(job.model_key, expires_s=int(settings.vlm_timeout_s * 4))
    return data_url(await reader.get_bytes(job.model_key), job.model_mime)


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


async def _as_async(items: Iterable[J] | AsyncIterable[J]) -> AsyncIterator[J]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def send_with_images(
    resources: Resources, jobs: Iterable[J] | AsyncIterable[J], request_of: Callable[[J, str], VLMRequest],
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
    reader = AsyncObjectReader(resources.store, max_connections=_READ_AHEAD)
    db_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuwen-db")

    async def requests() -> AsyncIterator[VLMRequest]:
        # The client pulls one request at a time, so reading images one by one would put a serial S3
        # round trip in front of every request: a read-ahead window keeps reads in flight (and bounds
        # the encoded images held in memory to the window).
        window: dict[asyncio.Task[str], J] = {}  # in queue order
        upcoming = _as_async(jobs)
        try:
            while True:
                while len(window) < read_ahead and (job := await anext(upcoming, None)) is not None:
                    window[asyncio.create_task(image_url(resources, reader, job))] = job
                if not window:
                    return
                # The first read done, in queue order: one slow read (a stalled GET, its retries) holds up its
                # own request only, not the reads behind it, while the request slots drain and the rows this
                # task holds wait where no other task can take them.
                future = next((read for read in window if read.done()), None)
                if future is None:
                    await asyncio.wait(window, return_when=asyncio.FIRST_COMPLETED)
                    future = next(read for read in window if read.done())
                job = window.pop(future)
                try:
                    url = future.result()
                except ObjectMissingError as exc:
                    await loop.run_in_executor(db_pool, on_missing, job, str(exc))
                    continue
                yield request_of(job, url)
        finally:
            for future in window:
                if future.done() and not future.cancelled():
                    future.exception()  # read: an error of a read no request will use is not logged as lost
                future.cancel()

    async def deliver(res: VLMResult) -> None:
        await loop.run_in_executor(db_pool, on_result, res)

    own_client = client is None
    client = client or VLMClient.from_settings(resources.settings, endpoint, engine=resources.engine)
    # Jobs held ahead of the sends: no more than the client can have in flight (a claimed job waiting here
    # is work no other task of the run can take).
    read_ahead = max(1, min(_READ_AHEAD, client.max_in_flight))
    try:
        await client.run(requests(), deliver)
    finally:
        if own_client:
            await client.aclose()
        await reader.aclose()
        db_pool.shutdown(wait=True)


def run_batch(resources: Resources, image_ids: Sequence[int], params: RunParams, ids: AirflowIds | None = None
              ) -> BatchResult:
    """Request and store completions for a batch of images, then (in an Airflow run) for the run's
    pending rows no other task holds; done keys are skipped, nothing is paid twice."""
    ids = ids or AirflowIds()
    result = BatchResult()
    started = time.perf_counter()
    own_keys = _queue_own(resources, image_ids, params, ids, result)
    source = _ClaimedJobs(resources, params, ids, own_keys, result)
    writer = _ResultWriter(resources, source, ids, result)

    async def send() -> None:
        leases = asyncio.create_task(source.keep_leases())
        try:
            await send_with_images(resources, source, _request, writer.write, writer.image_missing)
        finally:
            leases.cancel()
            await asyncio.gather(leases, return_exceptions=True)
            await source.close()

    try:
        asyncio.run(send())
    finally:
        writer.progress.finish()
        writer.close()
    result.elapsed_s = time.perf_counter() - started
    log.info(
        "batch done: %d requested (%d of them taken over from the run's other batches, %d of its own taken by "
        "other tasks), %d skipped (already stored), %d ok, %d unparseable %s, %d failed %s, "
        "%d completion tokens in %.1fs (%.0f tokens/s)",
        result.requested, result.taken_over, result.taken_by_others, result.skipped_done, result.succeeded,
        result.unparseable,
        result.unparseable_by_reason or "", result.failed, result.failed_by_type or "", result.completion_tokens,
        result.elapsed_s, result.completion_tokens / result.elapsed_s if result.elapsed_s else 0.0,
    )
    return result
