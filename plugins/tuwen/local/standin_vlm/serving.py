"""The stand-in's serving model: an EMULATION of vLLM's continuous batching, deciding when answers come.

Off by default. With `--serving PRESET` the stand-in stops answering after a configured latency and
instead schedules every chat request as a sequence on one emulated engine, the way vLLM's scheduler
does, so that a client's in-flight control can be measured against what a GPU server really does
under load. It is arithmetic and `asyncio.sleep`, not a model and not a GPU; the figures it reports
are the emulation's own.

What it emulates:
- continuous batching: one scheduler loop steps the running batch; each step emits one token for
  every running sequence, and a sequence leaves the batch the step it reaches its length;
- `max_num_seqs` (vLLM's flag of that name): at most that many sequences run; the rest wait in a
  FIFO queue and are admitted at the start of a step as running ones finish;
- a step time that grows with the batch: `step_s = base + per_seq * running + prefill_per_token *
  prompt tokens admitted this step` (vLLM's chunked prefill shares the step with decoding, so an
  admission slows every running sequence a little);
- output lengths drawn per task from a clipped log-normal (conversations long, reasoning and
  descriptions in between), seeded by the request's key, so a rerun draws the same lengths;
- a client that hangs up aborts its sequence (vLLM aborts on disconnect), freeing its slot;
- Prometheus `/metrics` with vLLM's names (V1 engine, checked against vLLM's metrics design doc):
  `vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc` (and the
  older `vllm:gpu_cache_usage_perc`), `vllm:prompt_tokens_total`, `vllm:generation_tokens_total`,
  `vllm:request_success_total{finished_reason}`, `vllm:request_queue_time_seconds`,
  `vllm:e2e_request_latency_seconds`, each labelled `model_name`.

What it does not: KV-cache capacity never limits admission and nothing is preempted (the usage
gauge is reported from the tokens held, for dashboards and controllers that read it); no
speculative decoding, no prefix cache, no streaming.

Tokens. The answer TEXT still comes from `answers.py` (templates, one "token" per character as
elsewhere in the stand-in). The serving model decides how many tokens the sequence emits - the
drawn length, capped by `max_tokens` - and `usage.completion_tokens` reports exactly that count, so
`usage` adds up to `vllm:generation_tokens_total`. When the text is cut by `max_tokens`
(`finish_reason: "length"`, as without the serving model) the sequence emits `max_tokens` tokens.
The text's length and the emitted count therefore differ: the count is what the GPU time paid for.

Faults (faults.py) still apply, with the serving model in place of `--latency`: 429 and 503 answer at
once as before; a 500, a reset or a hang happens before the sequence is queued (no GPU time spent);
answer faults reshape the text as before, and the sequence then runs its emitted count.

`time_scale` divides every duration (a bench can run the 32B preset 20x faster and keep its
shape: occupancy, queueing and ratios are unchanged, absolute rates are scaled).

`GET /stand-in/serving` returns the preset and an occupancy summary from a log of every step (and
every idle gap): the time-weighted mean of running sequences over max_num_seqs from the first step
the batch is full until the last sequence finishes, and the waiting queue's mean and max over the
same window. `POST /stand-in/serving/reset` starts a new log.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tuwen.local.standin_vlm.faults import StandinConfigError


class ServingConfigError(StandinConfigError):
    """A serving preset or override is malformed; the message says which."""


@dataclass(frozen=True)
class LengthDist:
    """Output tokens of one task: log-normal with this median and sigma, clipped to [low, high]."""

    median: int
    sigma: float
    low: int
    high: int

    def draw(self, rng: random.Random) -> int:
        if self.sigma <= 0:
            return max(self.low, min(self.high, self.median))
        value = rng.lognormvariate(math.log(self.median), self.sigma)
        return max(self.low, min(self.high, round(value)))


@dataclass(frozen=True)
class ServingPreset:
    name: str
    max_num_seqs: int
    step_base_s: float
    step_per_seq_s: float
    prefill_s_per_token: float
    kv_cache_tokens: int
    # task type (answers.detect_task's: conversation, complex_reasoning, detail, other) -> lengths
    output_tokens: Mapping[str, LengthDist]
    time_scale: float = 1.0

    def step_s(self, running: int, prefill_tokens: int = 0) -> float:
        """Seconds one scheduler step takes with `running` sequences and `prefill_tokens` admitted."""
        raw = self.step_base_s + self.step_per_seq_s * running + self.prefill_s_per_token * prefill_tokens
        return raw / self.time_scale

    @property
    def full_batch_tokens_per_s(self) -> float:
        return self.max_num_seqs / self.step_s(self.max_num_seqs)

    def lengths_for(self, task: str) -> LengthDist:
        return self.output_tokens.get(task) or self.output_tokens["other"]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["full_batch_tokens_per_s"] = self.full_batch_tokens_per_s
        return data


# h100-32b: a 32B VLM (Qwen2.5-VL-32B, FP8 weights) on one H100, scaled to ~650 output tokens/s at a
# full batch of 64: 64 / (0.025 + 64 * 0.00115) = 649 tokens/s, 38 tokens/s for one sequence alone.
# Prefill at 8,000 tokens/s. Output lengths: the seed's ~400M tokens over 641,868 samples are ~620
# per sample; LLaVA's task mix (conversation 37 %, reasoning 49 %, description 15 %) with these
# medians (x e^(sigma^2/2) for the mean) comes to about that.
H100_32B = ServingPreset(
    name="h100-32b",
    max_num_seqs=64,
    step_base_s=0.025,
    step_per_seq_s=0.00115,
    prefill_s_per_token=1 / 8000,
    kv_cache_tokens=120_000,
    output_tokens={
        "conversation": LengthDist(750, 0.35, 150, 1900),
        "complex_reasoning": LengthDist(520, 0.35, 100, 1400),
        "detail": LengthDist(480, 0.30, 100, 1400),
        "other": LengthDist(200, 0.50, 20, 1000),
    },
)

# test-small: 4 sequences, fixed lengths and a step of 10 ms + 2.5 ms per sequence, so a test can
# predict a batch's time (a full batch's 15-token description: 15 x 20 ms = 0.3 s) and finish fast.
TEST_SMALL = ServingPreset(
    name="test-small",
    max_num_seqs=4,
    step_base_s=0.010,
    step_per_seq_s=0.0025,
    prefill_s_per_token=0.00001,
    kv_cache_tokens=4_000,
    output_tokens={
        "conversation": LengthDist(30, 0.0, 30, 30),
        "complex_reasoning": LengthDist(20, 0.0, 20, 20),
        "detail": LengthDist(15, 0.0, 15, 15),
        "other": LengthDist(10, 0.0, 10, 10),
    },
)

PRESETS = {p.name: p for p in (H100_32B, TEST_SMALL)}


def serving_preset(name: str, *, max_num_seqs: int | None = None, time_scale: float | None = None) -> ServingPreset:
    """A preset by name, with vLLM's `--max-num-seqs` and the emulation's time scale overridable."""
    if name not in PRESETS:
        raise ServingConfigError(f"unknown serving preset {name!r}; known: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if max_num_seqs is not None:
        if max_num_seqs < 1:
            raise ServingConfigError(f"max_num_seqs must be at least 1, got {max_num_seqs}")
        preset = replace(preset, max_num_seqs=max_num_seqs)
    if time_scale is not None:
        if not time_scale > 0:
            raise ServingConfigError(f"time_scale must be positive, got {time_scale}")
        preset = replace(preset, time_scale=time_scale)
    return preset


def output_length(preset: ServingPreset, task: str, request_key: str) -> int:
    """The drawn output length of one request: the same for the same request key, rerun after rerun."""
    # A seed of its own, apart from the answer text's: turning the serving model on leaves texts unchanged.
    return preset.lengths_for(task).draw(random.Random("serving:" + request_key))


@dataclass(eq=False)
class Sequence:
    prompt_tokens: int
    target: int  # tokens it will emit
    arrived: float
    done: asyncio.Future[None]
    emitted: int = 0
    admitted: float | None = None


@dataclass
class StepLog:
    """One row per scheduler step or idle gap: (start, seconds, running, waiting), monotonic clock."""

    rows: list[tuple[float, float, int, int]] = field(default_factory=list)
    finished: int = 0
    last_finish: float | None = None
    last_arrival: float | None = None
    first_full: float | None = None
    limit: int = 2_000_000  # ~1 day of 50 ms steps; beyond it rows are dropped, the summary says so
    dropped: int = 0

    def add(self, start: float, seconds: float, running: int, waiting: int, max_num_seqs: int) -> None:
        if self.first_full is None and running >= max_num_seqs:
            self.first_full = start
        if len(self.rows) < self.limit:
            self.rows.append((start, seconds, running, waiting))
        else:
            self.dropped += 1

    def summary(self, max_num_seqs: int) -> dict[str, Any]:
        """Occupancy from the first full step until the last sequence finished (time-weighted), and until the
        last request arrived (`*_until_last_arrival`: the drain after it has nothing left to admit)."""
        out: dict[str, Any] = {"steps": len(self.rows), "dropped_rows": self.dropped, "finished": self.finished,
                               "first_full_s": None, "window_s": 0.0, "mean_running": None,
                               "occupancy": None, "mean_waiting": None, "max_waiting": 0}
        if not self.rows:
            return out
        # From the first step that ran something: an idle gap logged first may reach back before a reset.
        t0 = next((r[0] for r in self.rows if r[2]), self.rows[0][0])
        out["max_waiting"] = max(r[3] for r in self.rows)
        if self.last_finish is not None:
            out["span_s"] = self.last_finish - t0  # from the first request to the last finish
        if self.first_full is None or self.last_finish is None or self.last_finish <= self.first_full:
            return out
        start, end = self.first_full, self.last_finish
        window = self._window(start, end)
        if window is None:
            return out
        seconds, running_s, waiting_s, max_waiting = window
        out.update(first_full_s=start - t0, window_s=end - start, mean_running=running_s / seconds,
                   occupancy=running_s / seconds / max_num_seqs, mean_waiting=waiting_s / seconds,
                   max_waiting_in_window=max_waiting)
        if self.last_arrival is not None and (arrivals := self._window(start, self.last_arrival)) is not None:
            seconds, running_s, _, _ = arrivals
            out.update(last_arrival_s=self.last_arrival - t0, occupancy_until_last_arrival=running_s / seconds
                       / max_num_seqs)
        return out

    def _window(self, start: float, end: float) -> tuple[float, float, float, int] | None:
        """(seconds, running x seconds, waiting x seconds, max waiting) of the steps within [start, end]."""
        seconds = running_s = waiting_s = 0.0
        max_waiting = 0
        for row_start, row_s, running, waiting in self.rows:
            lo, hi = max(row_start, start), min(row_start + row_s, end)
            if hi <= lo:
                continue
            seconds += hi - lo
            running_s += running * (hi - lo)
            waiting_s += waiting * (hi - lo)
            max_waiting = max(max_waiting, waiting)
        return (seconds, running_s, waiting_s, max_waiting) if seconds > 0 else None


class ServingModel:
    """One emulated engine: the waiting queue, the running batch, the scheduler loop and its metrics."""

    def __init__(self, preset: ServingPreset, model_name: str) -> None:
        self.preset = preset
        self.model_name = model_name
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.log = StepLog()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self.registry = CollectorRegistry()  # per server: two stand-ins in one process do not share counters
        labels = ["model_name"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=self.registry)

        self.g_running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.g_waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.g_kv = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.g_gpu_kv = gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage "
                              "(the pre-V1 name, kept for dashboards that read it).")
        self.c_prompt = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", labels,
                                registry=self.registry)
        self.c_generation = Counter("vllm:generation_tokens", "Number of generation tokens processed.", labels,
                                    registry=self.registry)
        self.c_success = Counter("vllm:request_success", "Count of successfully processed requests.",
                                 [*labels, "finished_reason"], registry=self.registry)
        buckets = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)
        self.h_queue = Histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase "
                                 "for request.", labels, buckets=buckets, registry=self.registry)
        self.h_e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in "
                               "seconds.", labels, buckets=buckets, registry=self.registry)
        # Label children resolved once: the scheduler loop touches them every step.
        self._prompt = self.c_prompt.labels(model_name)
        self._generation = self.c_generation.labels(model_name)
        self._queue = self.h_queue.labels(model_name)
        self._e2e = self.h_e2e.labels(model_name)

    # -- the HTTP side ---------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/stand-in/serving", self.get_serving)
        app.router.add_post("/stand-in/serving/reset", self.reset_serving)
        app.on_cleanup.append(self._on_cleanup)

    async def _on_cleanup(self, _app: web.Application) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    def kv_usage(self) -> float:
        held = sum(s.prompt_tokens + s.emitted for s in self.running)
        return min(1.0, held / self.preset.kv_cache_tokens)

    async def metrics(self, _request: web.Request) -> web.Response:
        name = self.model_name
        self.g_running.labels(name).set(len(self.running))
        self.g_waiting.labels(name).set(len(self.waiting))
        usage = self.kv_usage()
        self.g_kv.labels(name).set(usage)
        self.g_gpu_kv.labels(name).set(usage)
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def summary(self) -> dict[str, Any]:
        return {"preset": self.preset.to_json(), "running": len(self.running), "waiting": len(self.waiting),
                **self.log.summary(self.preset.max_num_seqs)}

    async def get_serving(self, request: web.Request) -> web.Response:
        body = self.summary()
        if request.query.get("steps"):
            body["step_rows"] = self.log.rows
        return web.json_response(body)

    async def reset_serving(self, _request: web.Request) -> web.Response:
        self.log = StepLog()
        return web.json_response(self.summary())

    # -- the engine ------------------------------------------------------------------------
    async def generate(self, prompt_tokens: int, target: int, finish_reason: str) -> None:
        """Queue one sequence and wait until it has emitted `target` tokens; a cancelled caller aborts it."""
        loop = asyncio.get_running_loop()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = loop.create_task(self._scheduler(), name="standin-serving-scheduler")
        seq = Sequence(prompt_tokens, max(1, target), time.monotonic(), loop.create_future())
        self.log.last_arrival = seq.arrived
        self.waiting.append(seq)
        self._wake.set()
        try:
            await seq.done
        except asyncio.CancelledError:
            # The client hung up (or timed out): vLLM aborts the request and frees its slot.
            if seq in self.running:
                self.running.remove(seq)
            else:
                with contextlib.suppress(ValueError):
                    self.waiting.remove(seq)
            raise
        self.c_success.labels(self.model_name, finish_reason).inc()
        self._e2e.observe(time.monotonic() - seq.arrived)

    async def _scheduler(self) -> None:
        preset = self.preset
        deadline = time.monotonic()
        while True:
            if not self.running and not self.waiting:
                idle_from = time.monotonic()
                self._wake.clear()
                await self._wake.wait()
                now = time.monotonic()
                self.log.add(idle_from, now - idle_from, 0, 0, preset.max_num_seqs)
                deadline = now
            now = time.monotonic()
            prefill = 0
            while self.waiting and len(self.running) < preset.max_num_seqs:
                seq = self.waiting.popleft()
                seq.admitted = now
                prefill += seq.prompt_tokens
                self.running.append(seq)
                self._queue.observe(now - seq.arrived)
            self._prompt.inc(prefill)
            step = preset.step_s(len(self.running), prefill)
            # Steps keep to a schedule: a late wake-up of this busy process is made up on the next
            # step (up to 50 ms of debt), so the emulated GPU's rate does not sag with the host's load.
            deadline = max(deadline + step, now + step - 0.05)
            running_at_start, waiting_at_start = len(self.running), len(self.waiting)
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            end = time.monotonic()
            self.log.add(now, end - now, running_at_start, waiting_at_start, preset.max_num_seqs)
            still: list[Sequence] = []
            for seq in self.running:  # sequences aborted during the step are already gone
                seq.emitted += 1
                if seq.emitted >= seq.target:
                    if not seq.done.done():
                        seq.done.set_result(None)
                    self.log.finished += 1
                    self.log.last_finish = end
                else:
                    still.append(seq)
            self._generation.inc(len(self.running))
            self.running = still
