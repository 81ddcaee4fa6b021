"""Async client for the OpenAI-compatible VLM endpoint (vLLM serving Qwen2.5-VL).

Generation is where tuwen's money goes, so this client has three jobs:

- keep the server saturated: a pool of `max_in_flight` workers, each pulling the next request
  only when it is free (building a request reads and base64-encodes an image, so the request
  source is consumed lazily), over one HTTP connection pool sized to match; with
  `inflight_control="aimd"` the number of them sending at once follows the server's running and
  waiting requests (`tuwen.synthesis.inflight`), `max_in_flight` staying the ceiling;
- never lose an answer: every finished request, ok or failed for good, is handed to `on_result`
  as soon as it finishes, so the caller can commit it before anything else happens;
- never pay twice and never hammer a dead server: this is tuwen's only retry layer (the SDK's own
  retries are off), errors the server will repeat (400, 404) are not retried, and a circuit
  breaker ends the run when the endpoint looks down instead of burning through the backlog.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import random
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx2
import openai

from tuwen.synthesis.inflight import AIMDController, parse_vllm_metrics

if TYPE_CHECKING:
    from tuwen.config import Settings

# Where this module is at its most specific, vLLM's wording for a prompt that does not fit:
# "This model's maximum context length is 32768 tokens ...", "The decoder prompt (length N) is
# longer than the maximum model length of M", "... is too long".
_CONTEXT_TOO_LONG = re.compile(r"maximum context length|maximum model length|max_model_len|too long", re.I)

# Gateway statuses: something in front of the model answered because the model did not.
_GATEWAY_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class VLMRequest:
    key: str  # deterministic request key (the generation's unique key)
    messages: list[dict]  # OpenAI chat messages (user content: image_url part, then text part)
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    extra_body: dict  # e.g. {"mm_processor_kwargs": {"max_pixels": ..., "min_pixels": ...}}


@dataclass
class VLMResult:
    key: str
    ok: bool
    text: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float  # of the successful (or last) attempt
    attempts: int
    error_type: str | None
    error: str | None
    response: dict | None  # the response body as the server sent it, for lineage


class CircuitOpenError(RuntimeError):
    """The endpoint looks down; the run stopped. Requests not finished get no result and stay to do."""


@dataclass
class ClientStats:
    requests: int = 0  # pulled from the request source
    sent: int = 0  # HTTP attempts, retries included
    ok: int = 0
    failed: int = 0  # final failures, delivered to on_result
    retries: int = 0
    by_error_type: dict[str, int] = field(default_factory=dict)  # final failures
    attempt_errors: dict[str, int] = field(default_factory=dict)  # every failed attempt
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    abandoned: int = 0  # pulled but not finished when the run stopped early (no result delivered)
    circuit_open: bool = False
    inflight_limit: int | None = None  # with in-flight control: the limit it ended at
    inflight_source: str | None = None  # "metrics" (the server's /metrics) or "latency"


@dataclass(frozen=True)
class Failure:
    """How one failed attempt is handled."""

    error_type: str
    message: str
    retryable: bool
    endpoint_down: bool  # counts toward the circuit breaker
    retry_after_s: float | None = None


def data_url(image_bytes: bytes, mime: str) -> str:
    """An RFC 2397 data URL, the form vLLM accepts for inline images."""
    return f"data:{mime};base64,{base64.b64encode(image_bytes).decode('ascii')}"


def build_messages(prompt_text: str, image_url: str) -> list[dict]:
    """One user turn, image first then instruction: the order Qwen2.5-VL was trained on."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": prompt_text},
            ],
        }
    ]


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from a Retry-After header; None when absent or an HTTP date (vLLM sends seconds)."""
    raw = headers.get("retry-after") if headers is not None else None
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _connection_failure_under(exc: BaseException) -> BaseException | None:
    """A refused or reset connection underneath an SDK timeout error, if that is what it really was.

    The SDK's aiohttp transport reports every aiohttp connection error as httpx2.ConnectTimeout, so a
    refused or reset connection arrives as APITimeoutError; the exception chain still says which.
    """
    cause = exc.__cause__ or exc.__context__
    found = None
    while cause is not None:
        if isinstance(cause, TimeoutError):  # builtin and aiohttp timeouts: it did time out
            return None
        if isinstance(cause, (ConnectionError, aiohttp.ClientConnectionError)):
            found = cause
        cause = cause.__cause__ or cause.__context__
    return found


def classify_error(exc: BaseException) -> Failure:
    """Decide retry and breaker treatment for one failed attempt from the SDK's exception."""
    # APITimeoutError subclasses APIConnectionError, so it is tested first.
    if isinstance(exc, openai.APITimeoutError):
        refused_or_reset = _connection_failure_under(exc)
        if refused_or_reset is None:
            return Failure("timeout", "request timed out", retryable=True, endpoint_down=True)
        detail = f"{type(refused_or_reset).__name__}: {refused_or_reset}"
        return Failure("connection", f"Connection error: {detail}", retryable=True, endpoint_down=True)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f"{exc.message}: {type(cause).__name__}: {cause}" if cause else exc.message
        return Failure("connection", detail, retryable=True, endpoint_down=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = f"HTTP {status}: {exc.message}"
        if status == 429:
            # The server is alive and asking us to slow down: retry, but it is no sign of an outage.
            return Failure(
                "rate_limited",
                message,
                retryable=True,
                endpoint_down=False,
                retry_after_s=parse_retry_after(exc.response.headers),
            )
        if status >= 500:
            return Failure(
                "server_error",
                message,
                retryable=True,
                endpoint_down=status in _GATEWAY_STATUSES,
                retry_after_s=parse_retry_after(exc.response.headers),
            )
        if status == 400:
            # A bad image or a prompt that does not fit fails the same way every time: no retry.
            kind = "context_too_long" if _CONTEXT_TOO_LONG.search(exc.message) else "bad_request"
            return Failure(kind, message, retryable=False, endpoint_down=False)
        if status == 404:
            # Usually the model name; every request would fail the same way, but nothing is spent.
            return Failure("not_found", message, retryable=False, endpoint_down=False)
        if status in (401, 403):
            # Wrong key: every request will be refused, so it counts toward stopping the run.
            return Failure("auth", message, retryable=False, endpoint_down=True)
        if status in (413, 422):
            return Failure("bad_request", message, retryable=False, endpoint_down=False)
        return Failure("client_error", message, retryable=False, endpoint_down=False)
    return Failure("invalid_response", f"{type(exc).__name__}: {exc}", retryable=False, endpoint_down=False)


def backoff_delay(
    retry_number: int,
    *,
    base_s: float,
    max_s: float,
    rng: random.Random,
    retry_after_s: float | None = None,
) -> float:
    """Seconds to wait before retry number `retry_number` (1-based).

    Full jitter (uniform in [0, min(max, base * 2**(n-1))]) so that many workers failing together
    do not come back together. A server's Retry-After is honoured as given, capped at max_s.
    """
    if retry_after_s is not None:
        return min(retry_after_s, max_s)
    ceiling = min(max_s, base_s * (2 ** (retry_number - 1)))
    return rng.uniform(0.0, ceiling)


class CircuitBreaker:
    """Opens after `failures` endpoint-down failures in a row within `window_s`, with no success between.

    Only failures that say the endpoint is unreachable or refusing everything count (connection
    refused or reset, timeouts, 502/503/504, 401/403); a success resets the count. Other outcomes
    (400, 404, 429, 500) neither count nor reset: they say nothing about whether work gets done.
    Failures older than the window drop out, so sporadic blips spread over a long run never add up.
    Once open it stays open: the run ends, and a rerun starts with a fresh breaker.
    """

    def __init__(self, failures: int, window_s: float) -> None:
        if failures < 1:
            raise ValueError(f"breaker_failures must be at least 1, got {failures}")
        self.threshold = failures
        self.window_s = window_s
        self._failure_times: deque[float] = deque()
        self.last_error: str | None = None
        self.is_open = False

    @property
    def consecutive_failures(self) -> int:
        return len(self._failure_times)

    def record_success(self) -> None:
        self._failure_times.clear()

    def record_failure(self, error: str, now: float) -> bool:
        """Count one endpoint-down failure; True when this one opened the breaker."""
        if self.is_open:
            return False  # requests still in flight when it opened say nothing new
        self.last_error = error
        while self._failure_times and now - self._failure_times[0] > self.window_s:
            self._failure_times.popleft()
        self._failure_times.append(now)
        if len(self._failure_times) >= self.threshold:
            self.is_open = True
            return True
        return False


class _Stop(Exception):
    """Raised inside a worker when the run has been told to stop."""


async def _as_async_iterator(
    requests: Iterable[VLMRequest] | AsyncIterable[VLMRequest],
) -> AsyncGenerator[VLMRequest]:
    """One async iterator over either kind of source; closing it closes the source's generator."""
    if isinstance(requests, AsyncIterable):
        async_iterator = aiter(requests)
        try:
            async for request in async_iterator:
                yield request
        finally:
            aclose = getattr(async_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
    else:
        iterator = iter(requests)
        try:
            for request in iterator:
                yield request
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()


class VLMClient:
    """Runs chat-completion requests against one endpoint with bounded concurrency (see module doc).

    One client per event loop: its connection pool belongs to the loop that first uses it.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        *,
        timeout_s: float,
        max_retries: int,
        max_in_flight: int,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        breaker_failures: int = 8,
        breaker_window_s: float = 30.0,
        rng_seed: int | None = None,
        inflight_control: str = "fixed",
        metrics_poll_s: float = 1.0,
    ) -> None:
        if inflight_control not in ("fixed", "aimd"):
            raise ValueError(f"inflight_control must be 'fixed' or 'aimd', got {inflight_control!r}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if max_retries < 0:
            raise ValueError(f"max_retries must not be negative, got {max_retries}")
        self.base_url = base_url
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_in_flight = max_in_flight
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.breaker_failures = breaker_failures
        self.breaker_window_s = breaker_window_s
        self.inflight_control = inflight_control
        self.metrics_poll_s = metrics_poll_s
        self._rng = random.Random(rng_seed)
        # The SDK's aiohttp transport (openai.DefaultAioHttpClient, the SDK's documented choice for
        # high concurrency): httpx2's own pool scans its connections on every request, aiohttp's
        # is a deque (figures in docs/BENCHMARKS.md). The pool is sized to the workers: one
        # kept-alive connection each (no request pays a new handshake) and never more connections
        # than requests in flight.
        # A short connect timeout: a host that does not accept within 10 s is down, not busy.
        self._http = openai.DefaultAioHttpClient(
            limits=httpx2.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight),
            timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)),
        )
        self._openai = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key,
            timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            max_retries=0,  # this client is the only retry layer
            http_client=self._http,
        )

    @classmethod
    def from_settings(cls, settings: Settings, endpoint: tuple[str, str, str] | None = None) -> VLMClient:
        """A client for the VLM; `endpoint` (base URL, model, API key) points it elsewhere, e.g. at the
        judge (`settings.judge_endpoint`), with the same timeouts, retries and in-flight bound."""
        base_url, model, api_key = endpoint or (settings.vlm_base_url, settings.vlm_model, settings.vlm_api_key)
        return cls(
            base_url,
            api_key,
            model,
            timeout_s=settings.vlm_timeout_s,
            max_retries=settings.vlm_max_retries,
            max_in_flight=settings.vlm_max_in_flight,
            # A hung server is only noticed one timeout after each request starts, so its
            # failures arrive spread over about one timeout; the window must cover that.
            breaker_window_s=max(30.0, 2 * settings.vlm_timeout_s),
            inflight_control=settings.vlm_inflight_control,
            metrics_poll_s=settings.vlm_metrics_poll_s,
        )

    async def aclose(self) -> None:
        await self._openai.close()
        await self._http.aclose()

    async def __aenter__(self) -> VLMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def run(
        self,
        requests: Iterable[VLMRequest] | AsyncIterable[VLMRequest],
        on_result: Callable[[VLMResult], Awaitable[None] | None],
    ) -> ClientStats:
        """Send every request, calling `on_result` as each finishes; return the run's counts.

        Raises CircuitOpenError when the endpoint looks down, and re-raises whatever `on_result`
        raises; either way results already delivered stay delivered, results being delivered at
        that moment finish, and requests not finished get no result (a rerun picks them up).
        """
        run = _Run(self, requests, on_result)
        await run.execute()
        return run.outcome()

    async def _complete(
        self, request: VLMRequest, stats: ClientStats, breaker: CircuitBreaker, stop: asyncio.Event
    ) -> VLMResult:
        """Send one request with retries; return its final result or raise _Stop when the run stops."""
        body = self._body(request)
        attempt = 0
        while True:
            if stop.is_set():
                raise _Stop
            attempt += 1
            stats.sent += 1
            sent_at = time.perf_counter()
            try:
                http_response = await self._openai.post(
                    "/chat/completions", cast_to=httpx2.Response, content=body
                )
            except openai.APIError as exc:
                latency_ms = (time.perf_counter() - sent_at) * 1000
                failure = classify_error(exc)
            else:
                latency_ms = (time.perf_counter() - sent_at) * 1000
                content = http_response.content
                try:
                    return self._ok_result(request, json.loads(content), latency_ms, attempt, breaker)
                except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                    # The server answered 200 with something unreadable. The GPU time is spent and a
                    # retry would spend it again, so it is recorded, not retried.
                    failure = Failure(
                        "invalid_response",
                        f"{type(exc).__name__}: {exc}; body starts {content[:300]!r}",
                        retryable=False,
                        endpoint_down=False,
                    )
            stats.attempt_errors[failure.error_type] = stats.attempt_errors.get(failure.error_type, 0) + 1
            if failure.endpoint_down and breaker.record_failure(
                f"{failure.error_type}: {failure.message}", time.monotonic()
            ):
                stop.set()
            if stop.is_set() and (failure.retryable or failure.endpoint_down):
                # The run is ending: this request is not done, and a rerun will try it again.
                raise _Stop
            if not failure.retryable or attempt > self.max_retries:
                return VLMResult(
                    key=request.key,
                    ok=False,
                    text=None,
                    finish_reason=None,
                    prompt_tokens=None,
                    completion_tokens=None,
                    latency_ms=latency_ms,
                    attempts=attempt,
                    error_type=failure.error_type,
                    error=failure.message,
                    response=None,
                )
            stats.retries += 1
            await asyncio.sleep(
                backoff_delay(
                    attempt,
                    base_s=self.backoff_base_s,
                    max_s=self.backoff_max_s,
                    rng=self._rng,
                    retry_after_s=failure.retry_after_s,
                )
            )

    def _body(self, request: VLMRequest) -> bytes:
        """The request body, serialized here to keep the per-request CPU low.

        It is posted through the SDK's documented raw-request path (`post(..., cast_to=Response)`)
        rather than chat.completions.create, which walks every message part against its TypedDicts
        and serializes with ensure_ascii=False: a few milliseconds per request, paid once per
        sample of the dataset. ASCII JSON (Chinese text as \\u escapes, which the server decodes the same)
        keeps the 300 KB data URL a one-byte-per-character string, half the cost to encode.
        Transport, auth headers, timeouts and the SDK's status-code exceptions are unchanged.
        """
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.seed is not None:
            payload["seed"] = request.seed
        payload.update(request.extra_body)  # vLLM's extra fields sit at the top level, as extra_body does
        return json.dumps(payload, separators=(",", ":")).encode("ascii")

    @staticmethod
    def _ok_result(
        request: VLMRequest, body: dict, latency_ms: float, attempts: int, breaker: CircuitBreaker
    ) -> VLMResult:
        # Read the body as sent rather than through the SDK's models: it is what lineage stores,
        # and it skips building pydantic objects on the hot path.
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        breaker.record_success()
        return VLMResult(
            key=request.key,
            ok=True,
            text=choice["message"].get("content"),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            latency_ms=latency_ms,
            attempts=attempts,
            error_type=None,
            error=None,
            response=body,
        )


class _Run:
    """One `VLMClient.run`: `max_in_flight` workers pulling from one source until it ends or the run stops.

    A worker pulls a request, completes it (with retries) and delivers the result before pulling
    the next. The run stops when the breaker opens, when `on_result` or the source raises, or when
    the source is exhausted; stopping cancels requests in flight, never a delivery under way.
    """

    def __init__(
        self,
        client: VLMClient,
        requests: Iterable[VLMRequest] | AsyncIterable[VLMRequest],
        on_result: Callable[[VLMResult], Awaitable[None] | None],
    ) -> None:
        self.client = client
        self.on_result = on_result
        self.stats = ClientStats()
        self.breaker = CircuitBreaker(client.breaker_failures, client.breaker_window_s)
        self.source = _as_async_iterator(requests)
        self.pull_lock = asyncio.Lock()  # an async generator cannot be advanced by two tasks at once
        self.stop = asyncio.Event()
        self.errors: list[BaseException] = []
        self.delivering: set[asyncio.Task[None]] = set()
        self.exhausted = False
        # In-flight control: workers beyond the controller's limit wait for a slot (see inflight.py).
        self.controller = AIMDController(ceiling=client.max_in_flight) if client.inflight_control == "aimd" else None
        self.active = 0  # requests sent and not yet answered (retries and their back-off included)
        self.slot_freed = asyncio.Event()
        self.metrics_ok: bool | None = None  # None until the first /metrics read says which signal to use

    async def execute(self) -> None:
        started = time.perf_counter()
        workers = [asyncio.create_task(self._worker(), name=f"vlm-worker-{i}")
                   for i in range(self.client.max_in_flight)]
        stop_waiter = asyncio.create_task(self.stop.wait())
        watcher = asyncio.create_task(self._watch_server()) if self.controller is not None else None
        try:
            await self._supervise(workers, stop_waiter)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                self.stats.inflight_limit = self.controller.limit if self.controller else None
                if self.metrics_ok is not None:
                    self.stats.inflight_source = "metrics" if self.metrics_ok else "latency"
            for task in workers:
                task.cancel()
            stop_waiter.cancel()
            await asyncio.gather(*workers, stop_waiter, return_exceptions=True)
            await self.source.aclose()
            self.stats.elapsed_s = time.perf_counter() - started
            self.stats.circuit_open = self.breaker.is_open

    async def _supervise(self, workers: list[asyncio.Task[None]], stop_waiter: asyncio.Task[Any]) -> None:
        """Wait for the workers to finish, or for the stop signal; then cancel all but deliveries."""
        pending: set[asyncio.Task[Any]] = set(workers)
        while pending and not self.stop.is_set():
            done, pending = await asyncio.wait(pending | {stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(stop_waiter)
            for task in done - {stop_waiter}:
                if not task.cancelled() and (exc := task.exception()) is not None:
                    self.errors.append(exc)  # the request source raised (or a bug here)
                    self.stop.set()
        if self.stop.is_set():
            # In-flight HTTP calls, backoff sleeps and pulls are abandoned; deliveries finish.
            for task in workers:
                if task not in self.delivering:
                    task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def _pull(self) -> VLMRequest | None:
        """The next request, or None when the source is exhausted or the run is stopping."""
        async with self.pull_lock:
            if self.exhausted or self.stop.is_set():
                return None
            try:
                request = await anext(self.source)
            except StopAsyncIteration:
                self.exhausted = True
                return None
        self.stats.requests += 1
        return request

    async def _worker(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while not self.stop.is_set():
            await self._admit()
            try:
                request = await self._pull()
                if request is None:
                    return
                try:
                    result = await self.client._complete(request, self.stats, self.breaker, self.stop)
                except _Stop:
                    self.stats.abandoned += 1
                    return
                except asyncio.CancelledError:
                    self.stats.abandoned += 1
                    raise
            finally:
                self._release()
            if self.controller is not None and self.metrics_ok is False:
                self.controller.on_latency(time.monotonic(), result.latency_ms / 1000, result.completion_tokens,
                                           self.active, timed_out=result.error_type == "timeout")
                self.slot_freed.set()
            # Paid for: the caller gets it even if the run is stopping meanwhile.
            self.delivering.add(task)
            try:
                await self._deliver(result)
            except Exception as exc:
                self.errors.append(exc)
                self.stop.set()
                return
            finally:
                self.delivering.discard(task)

    async def _admit(self) -> None:
        """Wait until the in-flight controller's limit has room (at once without a controller)."""
        if self.controller is not None:
            while self.active >= self.controller.limit and not self.stop.is_set():
                self.slot_freed.clear()
                await self.slot_freed.wait()
        self.active += 1

    def _release(self) -> None:
        self.active -= 1
        self.slot_freed.set()

    async def _watch_server(self) -> None:
        """Feed the controller vLLM's running and waiting requests from /metrics every `metrics_poll_s`.

        Without them (an answer that is not vLLM's metrics, or three failed reads in a row: a busy
        host can miss one) the workers feed it latency instead, and /metrics is tried again every 10 s.
        """
        assert self.controller is not None
        url = self.client.base_url.rstrip("/").removesuffix("/v1") + "/metrics"
        timeout = aiohttp.ClientTimeout(total=max(2.0, 5 * self.client.metrics_poll_s))
        failures = 0
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                load, answered = None, False
                try:
                    async with session.get(url) as response:
                        answered = response.status in (200, 404)  # "no metrics here", not a blip
                        if response.status == 200:
                            load = parse_vllm_metrics(await response.text(), self.client.model)
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    answered = False
                if load is not None:
                    failures = 0
                    self.metrics_ok = True
                    self.controller.on_server_load(time.monotonic(), load, self.active)
                    self.slot_freed.set()
                    await asyncio.sleep(self.client.metrics_poll_s)
                    continue
                failures += 1
                if answered or failures >= 3:
                    self.metrics_ok = False
                    await asyncio.sleep(10.0)
                else:
                    await asyncio.sleep(self.client.metrics_poll_s)

    async def _deliver(self, result: VLMResult) -> None:
        stats = self.stats
        if result.ok:
            stats.ok += 1
            stats.prompt_tokens += result.prompt_tokens or 0
            stats.completion_tokens += result.completion_tokens or 0
        else:
            stats.failed += 1
            assert result.error_type is not None
            stats.by_error_type[result.error_type] = stats.by_error_type.get(result.error_type, 0) + 1
        outcome = self.on_result(result)
        if inspect.isawaitable(outcome):
            await outcome

    def outcome(self) -> ClientStats:
        """The run's counts, or the reason it stopped early."""
        if self.errors:
            raise self.errors[0]  # on_result's (or the request source's) own exception comes first
        if self.breaker.is_open:
            stats, breaker = self.stats, self.breaker
            raise CircuitOpenError(
                f"VLM endpoint {self.client.base_url} looks down: {breaker.consecutive_failures} "
                f"connection-level failures in a row with no success (threshold {breaker.threshold} "
                f"within {breaker.window_s:g}s); last error: {breaker.last_error}. Stopped after "
                f"{stats.ok} ok and {stats.failed} failed results; {stats.abandoned} in-flight "
                f"requests were abandoned and, like the rest, are left for a rerun."
            )
        return self.stats
