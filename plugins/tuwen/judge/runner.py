"""Running a batch of judge requests with exactly-once storage.

A batch builds one request per sample — the judge prompt with the sample rendered in, and the
sample's image read from the object store by synthesis's plumbing (`send_with_images`) — sends
them through `VLMClient` to the judge's endpoint (TUWEN_JUDGE_BASE_URL / _MODEL / _API_KEY, the
VLM's where empty) and stores each verdict the moment it arrives. A rerun finds the done keys and
sends nothing for them.

The judge is optional, so a judge endpoint that fails never fails the run: a request that fails
for good is stored `failed` with its error type (connection, timeout, ...), and when the breaker
finds the endpoint down, every judgement of the batch still without an answer is stored `failed`
with `circuit_open` and the reason; the batch returns normally (a warning in the log) and the
samples stay unjudged until a later run, which asks again (nothing was paid). A database or
object-store outage still raises, as in synthesis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tuwen.db.models import Judgement
from tuwen.judge import lineage
from tuwen.judge.keys import JudgeRunParams, JudgeSpec, judge_spec
from tuwen.judge.prompts import render_prompt
from tuwen.judge.verdict import LABELS, Verdict, parse_verdict, response_format
from tuwen.progress import Progress
from tuwen.resources import Resources
from tuwen.synthesis.lineage import open_requests
from tuwen.synthesis.runner import IMAGE_MISSING, AirflowIds, send_with_images
from tuwen.synthesis.vlm_client import CircuitOpenError, VLMClient, VLMRequest, VLMResult, build_messages

__all__ = ["CIRCUIT_OPEN", "JudgeBatchResult", "run_judge_batch"]

log = logging.getLogger(__name__)

CIRCUIT_OPEN = "circuit_open"


@dataclass
class JudgeBatchResult:
    requested: int = 0
    skipped_done: int = 0
    succeeded: int = 0
    unparseable: int = 0
    failed: int = 0
    failed_by_type: dict[str, int] = field(default_factory=dict)
    unparseable_by_reason: dict[str, int] = field(default_factory=dict)
    contradicted_samples: int = 0  # succeeded verdicts with at least one contradicted statement
    # Statements per label over the verdicts that reported the label (prompt v2 reports only contradicted).
    statements: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    endpoint_down: str | None = None  # the breaker's reason, when the judge endpoint looked down

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def count_failure(self, error_type: str, n: int = 1) -> None:
        self.failed += n
        self.failed_by_type[error_type] = self.failed_by_type.get(error_type, 0) + n

    def count_unparseable(self, reason: str) -> None:
        self.unparseable += 1
        kind = reason.split(":", 1)[0].split(" ", 1)[0]  # "bad_label: 'x'" -> "bad_label"
        self.unparseable_by_reason[kind] = self.unparseable_by_reason.get(kind, 0) + 1

    def count_verdict(self, verdict: Verdict) -> None:
        self.succeeded += 1
        for label, n in verdict.counts.items():
            if n is not None:
                self.statements[label] += n
        if verdict.n_contradicted:
            self.contradicted_samples += 1


@dataclass(frozen=True)
class _Job:
    spec: JudgeSpec
    judgement_id: int
    sample_id: str
    conversations: list[Any]
    image_sha256: str
    model_key: str
    model_mime: str

    @property
    def key(self) -> str:
        return self.spec.key


def _prepare_jobs(resources: Resources, sample_ids: Sequence[str], params: JudgeRunParams, ids: AirflowIds,
                  result: JudgeBatchResult) -> list[_Job]:
    """Create (or find) the judgement rows of the batch; return the ones that still need a call."""
    settings = resources.settings
    samples = lineage.batch_samples(resources.engine, sample_ids)
    specs = [(row, judge_spec(settings, params, row.id, row.language)) for row in samples]
    existing = open_requests(resources.engine, Judgement, [
        {"request_key": spec.key, "sample_id": row.id, "language": row.language, "prompt_id": spec.prompt.id,
         "prompt_version": spec.prompt.version, "prompt_sha256": spec.prompt.sha256, "model": spec.model,
         "params": spec.params, "status": "pending", "dag_id": ids.dag_id, "run_id": ids.run_id,
         "task_id": ids.task_id, "map_index": ids.map_index}
        for row, spec in specs
    ])
    jobs = []
    for row, spec in specs:
        found = existing[spec.key]
        if found.status in lineage.DONE_STATUSES:
            result.skipped_done += 1
            continue
        jobs.append(_Job(spec, found.id, row.id, list(row.conversations), row.sha256, row.model_key or "",
                         row.model_mime or "image/jpeg"))
    return jobs


def _request(job: _Job, image_url: str) -> VLMRequest:
    params = job.spec.params
    extra: dict[str, Any] = {"mm_processor_kwargs": {"max_pixels": params["max_pixels"],
                                                     "min_pixels": params["min_pixels"]}}
    if params["structured"]:
        # A top-level field of the request body, as the SDK's extra_body would send it.
        extra["response_format"] = response_format(job.spec.prompt.verdict)
    return VLMRequest(
        key=job.key,
        messages=build_messages(render_prompt(job.spec.prompt, job.conversations), image_url),
        max_tokens=params["max_tokens"],
        temperature=params["temperature"],
        top_p=params["top_p"],
        seed=params["seed"],
        extra_body=extra,
    )


class _VerdictWriter:
    """Turns each finished judge request into its row, on the batch's one DB thread."""

    def __init__(self, resources: Resources, jobs: dict[str, _Job], ids: AirflowIds,
                 result: JudgeBatchResult) -> None:
        self.store = lineage.JudgementStore(resources.engine)
        self.jobs = jobs
        self.ids = ids
        self.result = result
        self.finished: set[str] = set()  # keys with a row written in this batch
        where = f"map {ids.map_index}" if ids.map_index is not None else "batch"
        self.progress = Progress(f"judge {where}", total=len(jobs), log=log, unit="verdicts")

    def _run_ids(self) -> dict[str, Any]:
        return {"dag_id": self.ids.dag_id, "run_id": self.ids.run_id, "task_id": self.ids.task_id,
                "map_index": self.ids.map_index}

    def write(self, res: VLMResult) -> None:
        job = self.jobs[res.key]
        if res.ok:
            self._store_verdict(job, res)
        else:
            self._store_failure(job, res.error_type or "unknown", res.error, res.attempts, res.latency_ms)
        self.finished.add(job.key)
        self.progress.advance(completion_tokens=res.completion_tokens or 0,
                              **({f"error_{res.error_type or 'unknown'}": 1} if not res.ok else {}))

    def image_missing(self, job: _Job, message: str) -> None:
        """The sample's image object is gone from the store: recorded, nothing sent."""
        self._store_failure(job, IMAGE_MISSING, message, attempts=0, latency_ms=None)
        self.finished.add(job.key)
        self.progress.advance(**{f"error_{IMAGE_MISSING}": 1})

    def _store_failure(self, job: _Job, error_type: str, error: str | None, attempts: int,
                       latency_ms: float | None) -> None:
        self.store.store_failure({**self._run_ids(), "id": job.judgement_id, "attempts": attempts,
                                  "latency_ms": latency_ms, "error_type": error_type, "error": error})
        self.result.count_failure(error_type)

    def _store_verdict(self, job: _Job, res: VLMResult) -> None:
        self.result.prompt_tokens += res.prompt_tokens or 0
        self.result.completion_tokens += res.completion_tokens or 0
        verdict = parse_verdict(res.text, res.finish_reason, job.spec.prompt.verdict)
        # A contradicted-only verdict (prompt v2) leaves n_supported / n_unverifiable NULL: not asked.
        counts = verdict.counts if verdict.ok else {}
        values = {
            **self._run_ids(), "id": job.judgement_id, "attempts": res.attempts, "latency_ms": res.latency_ms,
            "raw_text": res.text, "finish_reason": res.finish_reason, "prompt_tokens": res.prompt_tokens,
            "completion_tokens": res.completion_tokens, "status": "succeeded" if verdict.ok else "unparseable",
            "n_supported": counts.get("supported"), "n_contradicted": counts.get("contradicted"),
            "n_unverifiable": counts.get("unverifiable"),
            "statements": list(verdict.statements) if verdict.ok else None,
            "error_type": None if verdict.ok else "unparseable", "error": verdict.error,
        }
        if not self.store.store_verdict(values):
            self.result.count_unparseable("unstorable")
        elif verdict.ok:
            self.result.count_verdict(verdict)
        else:
            self.result.count_unparseable(verdict.error or "unknown")

    def close(self) -> None:
        self.store.close()


def run_judge_batch(resources: Resources, sample_ids: Sequence[str], params: JudgeRunParams,
                    ids: AirflowIds | None = None, client: VLMClient | None = None) -> JudgeBatchResult:
    """Judge a batch of samples; stored verdicts are skipped, and a judge endpoint that is down leaves
    the rest `failed` with the reason and returns (see the module doc)."""
    ids = ids or AirflowIds()
    result = JudgeBatchResult()
    started = time.perf_counter()
    jobs = _prepare_jobs(resources, sample_ids, params, ids, result)
    result.requested = len(jobs)
    if jobs:
        writer = _VerdictWriter(resources, {j.key: j for j in jobs}, ids, result)
        try:
            asyncio.run(send_with_images(resources, jobs, _request, writer.write, writer.image_missing,
                                         client=client, endpoint=resources.settings.judge_endpoint))
        except CircuitOpenError as exc:
            unfinished = [j.judgement_id for j in jobs if j.key not in writer.finished]
            lineage.fail_unfinished(resources.engine, unfinished, CIRCUIT_OPEN, str(exc))
            result.count_failure(CIRCUIT_OPEN, len(unfinished))
            result.endpoint_down = str(exc)
            log.warning("judge endpoint down: %d samples of this batch left unjudged (a later run asks "
                        "again; nothing was paid for them): %s", len(unfinished), exc)
        finally:
            writer.progress.finish()
            writer.close()
    result.elapsed_s = time.perf_counter() - started
    log.info(
        "judge batch done: %d requested, %d skipped (already judged), %d verdicts (%d with a contradicted "
        "statement; statements %s), %d unparseable %s, %d failed %s, %d prompt + %d completion tokens in %.1fs",
        result.requested, result.skipped_done, result.succeeded, result.contradicted_samples, result.statements,
        result.unparseable, result.unparseable_by_reason or "", result.failed, result.failed_by_type or "",
        result.prompt_tokens, result.completion_tokens, result.elapsed_s,
    )
    return result
