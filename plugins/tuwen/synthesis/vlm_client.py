"""Async client for the OpenAI-compatible VLM endpoint (vLLM serving Qwen2.5-VL).

Generation is where tuwen's money goes, so this client has three jobs:

- keep the server saturated: a pool of `max_in_flight` workers, each pulling the next request
  only when it is free (building a request reads and base64-encodes an image, so the request
  source is consumed lazily), over one HTTP connection pool sized to match; with
  `inflight_control="aimd"` the number of them sending at once follows the server's running and
  waiting requests (`tuwen.synthesis.inflight`), `max_in_flight` staying the ceiling; given the
  lineage database's engine, one controller is shared by every run through the same endpoint (every
  mapped task of every DAG run), each run taking its fair share of its limit;
- never lose an answer: every finished request, ok or failed for good, is handed to `on_result`
  as soon as it finishes, so the caller can commit it before anything else happens;
- never pay twice and never hammer a dead server: this is tuwen's only retry layer (the SDK's own
  retries are off), errors the server will repeat (400, 404) are not retried, and a circuit
  breaker ends the run when the endpoint looks down instead of burning through the backlog.

The endpoint may be several vLLM replicas with no router in front (a comma-separated list of base
URLs): each attempt goes to the healthy replica with the fewest requests in flight, each replica has
its own breaker, a request refused by a replica that went away goes to another one at once, and the
run stops only when every replica's breaker is open.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import logging
import os
import random
import re
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx2
import openai
import pybase64
from openai._httpx2 import request_exceptions, status_exceptions, timeout_exceptions
from sqlalchemy.exc import SQLAlchemyError

from tuwen.synthesis.inflight import AIMDController, Answer, ServerLoad, SharedInflight, parse_vllm_metrics

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from tuwen.config import Settings

log = logging.getLogger(__name__)

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
class ReplicaStats:
    """One replica's share of a run."""

    base_url: str
    sent: int = 0  # HTTP attempts sent to it
    ok: int = 0
    errors: int = 0  # failed attempts, whatever their kind
    breaker: str = "closed"  # "open" once it was judged down (it got no more requests this run)


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
    failovers: int = 0  # attempts refused by a replica and sent straight to another (no retry used)
    replicas: list[ReplicaStats] = field(default_factory=list)  # per base URL, in the order configured


@dataclass(frozen=True)
class Failure:
    """How one failed attempt is handled."""

    error_type: str
    message: str
    retryable: bool
    endpoint_down: bool  # counts toward the circuit breaker
    retry_after_s: float | None = None


# Printable ASCII but the quote and the backslash: the characters JSON writes as they are.
_JSON_VERBATIM = bytes(range(0x20, 0x7F)).replace(b'"', b"").replace(b"\\", b"")
# Image URLs at least this long are copied into the body rather than run through the JSON encoder.
_SPLICE_MIN_CHARS = 4096
_SPLICE_MARK = "tuwen-image-url-"


def _verbatim_json_string(value: str) -> bytes | None:
    """The string's bytes when compact ASCII JSON writes it unescaped (printable ASCII, no quote or
    backslash: a data URL, an http(s) URL); None otherwise."""
    if isinstance(value, _VerbatimURL):
        return value.encode("ascii")
    if not value.isascii():
        return None
    raw = value.encode("ascii")
    return None if raw.translate(None, _JSON_VERBATIM) else raw


class _VerbatimURL(str):
    """A URL known where it is made to be one that JSON writes as it is, so that `request_json` need not
    scan its 300 KB again."""

    __slots__ = ()


def data_url(image_bytes: bytes, mime: str) -> str:
    """An RFC 2397 data URL, the form vLLM accepts for inline images."""
    url = f"data:{mime};base64,{pybase64.b64encode(image_bytes).decode('ascii')}"
    # The base64 alphabet is verbatim JSON, so the MIME type decides.
    return _VerbatimURL(url) if _verbatim_json_string(mime) is not None else url


def request_json(payload: dict[str, Any]) -> bytes:
    """`json.dumps(payload, separators=(",", ":")).encode("ascii")`, byte for byte, at a fraction of the CPU.

    The JSON encoder escapes strings character by character, which for a 300 KB base64 data URL is
    most of a request's serialization. Long image URLs that need no escaping are swapped for marks,
    the rest is encoded, and the URLs' bytes are copied in where their marks are. A mark that does
    not occur exactly once in the encoded rest (a prompt that contains it, say) falls back to the
    plain encoder.
    """
    urls: list[bytes] = []
    messages = []
    for message in payload.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            parts = []
            for part in content:
                image = part.get("image_url") if isinstance(part, dict) else None
                url = image.get("url") if isinstance(image, dict) else None
                if isinstance(image, dict) and isinstance(url, str) and len(url) >= _SPLICE_MIN_CHARS and (
                        raw := _verbatim_json_string(url)) is not None:
                    part = {**part, "image_url": {**image, "url": f"{_SPLICE_MARK}{len(urls)}"}}
                    urls.append(raw)
                parts.append(part)
            message = {**message, "content": parts}
        messages.append(message)
    if not urls:
        return json.dumps(payload, separators=(",", ":")).encode("ascii")
    rest = json.dumps({**payload, "messages": messages}, separators=(",", ":")).encode("ascii")
    pieces: list[bytes] = []
    for i, raw in enumerate(urls):
        mark = f'"{_SPLICE_MARK}{i}"'.encode("ascii")
        if rest.count(mark) != 1:
            return json.dumps(payload, separators=(",", ":")).encode("ascii")
        head, _, rest = rest.partition(mark)
        pieces += (head, b'"', raw, b'"')
    pieces.append(rest)
    return b"".join(pieces)


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


def split_base_urls(base_url: str | Sequence[str]) -> list[str]:
    """The replicas' base URLs from one URL, a comma-separated list, or a sequence; duplicates refused
    (a replica listed twice would get twice its share and be judged down twice as fast)."""
    parts = base_url.split(",") if isinstance(base_url, str) else list(base_url)
    urls = [part.strip() for part in parts if part.strip()]
    if not urls:
        raise ValueError("no VLM base URL given")
    seen: set[str] = set()
    for url in urls:
        if url.rstrip("/") in seen:
            raise ValueError(f"base URL {url} is listed twice")
        seen.add(url.rstrip("/"))
    return urls


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


@dataclass
class _Replica:
    """One base URL and its own connection pool."""

    base_url: str
    http: Any
    openai: openai.AsyncOpenAI
    post_template: _PostTemplate | None = None  # set by the first answer (`_post_completion`)


@dataclass(frozen=True)
class _PostTemplate:
    """A chat-completions POST as the SDK built it, less what differs per request: its body, and the
    Content-Length and Host that httpx2 adds to every request (in the same places) and the Cookie it
    adds from the client's jar."""

    method: str
    url: httpx2.URL
    headers: httpx2.Headers
    extensions: dict[str, Any]

    @classmethod
    def of(cls, request: httpx2.Request) -> _PostTemplate:
        headers = request.headers.copy()
        for name in ("Host", "Content-Length", "Cookie"):
            headers.pop(name, None)
        return cls(request.method, request.url, headers, dict(request.extensions))

    def request(self, body: bytes) -> httpx2.Request:
        return httpx2.Request(self.method, self.url, headers=self.headers, content=body, extensions=self.extensions)


async def _post_completion(replica: _Replica, body: bytes) -> httpx2.Response:
    """POST the body to /chat/completions as `AsyncOpenAI.post(..., cast_to=httpx2.Response)` with retries
    off does: the request the SDK built for the replica's first answer is reused with each new body
    instead of walking the SDK's options, headers and URL models again for every request, then sent,
    checked and its errors raised as the SDK's `request` does (its `_prepare_request`, `_send_request`
    and `_make_status_error_from_response`; timeouts, connection and status errors alike). A client
    whose cookie jar holds anything goes the SDK's whole way, so a cookie a server set is sent as it
    would be. tests/services/test_vlm_client.py holds both ways to the same headers and errors.
    """
    sdk, template = replica.openai, replica.post_template
    if template is None or replica.http.cookies:
        response = await sdk.post("/chat/completions", cast_to=httpx2.Response, content=body)
        if template is None:
            replica.post_template = _PostTemplate.of(response.request)
        return response
    request = template.request(body)
    await sdk._prepare_request(request)
    try:
        response = await sdk._send_request(request, stream=False)
    except timeout_exceptions() as err:
        raise openai.APITimeoutError(request=request) from err
    except openai.OpenAIError:
        raise
    except request_exceptions() as err:
        raise openai.APIConnectionError(request=request) from err
    try:
        response.raise_for_status()
    except status_exceptions() as err:
        if not err.response.is_closed:
            await err.response.aread()
        raise sdk._make_status_error_from_response(err.response) from None
    return response


class VLMClient:
    """Runs chat-completion requests against one endpoint, or several replicas of it, with bounded
    concurrency (see module doc).

    One client per event loop: its connection pool belongs to the loop that first uses it.
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
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
        engine: Engine | None = None,
    ) -> None:
        if inflight_control not in ("fixed", "aimd"):
            raise ValueError(f"inflight_control must be 'fixed' or 'aimd', got {inflight_control!r}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if max_retries < 0:
            raise ValueError(f"max_retries must not be negative, got {max_retries}")
        self.base_urls = split_base_urls(base_url)
        self.base_url = ",".join(self.base_urls)  # one URL: exactly as given
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
        self.engine = engine  # aimd: the controller is shared through this database (None: one per run)
        self._rng = random.Random(rng_seed)
        # The SDK's aiohttp transport (openai.DefaultAioHttpClient, the SDK's documented choice for
        # high concurrency): httpx2's own pool scans its connections on every request, aiohttp's
        # is a deque (figures in docs/BENCHMARKS.md). The pool is sized to the workers: one
        # kept-alive connection each (no request pays a new handshake) and never more connections
        # than requests in flight.
        # A short connect timeout: a host that does not accept within 10 s is down, not busy.
        # One pool per replica, each sized to all the workers: when the others are down, one
        # replica carries every request.
        self._replicas: list[_Replica] = []
        for url in self.base_urls:
            http = openai.DefaultAioHttpClient(
                limits=httpx2.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight),
                timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            )
            sdk = openai.AsyncOpenAI(
                base_url=url,
                api_key=api_key,
                timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)),
                max_retries=0,  # this client is the only retry layer
                http_client=http,
            )
            self._replicas.append(_Replica(url, http, sdk))
        self._http = self._replicas[0].http
        self._openai = self._replicas[0].openai

    @classmethod
    def from_settings(cls, settings: Settings, endpoint: tuple[str, str, str] | None = None,
                      engine: Engine | None = None) -> VLMClient:
        """A client for the VLM; `endpoint` (base URL, model, API key) points it elsewhere, e.g. at the
        judge (`settings.judge_endpoint`), with the same timeouts, retries and in-flight bound; with the
        lineage database's `engine`, aimd in-flight control is shared by every run through the endpoint."""
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
            engine=engine,
        )

    async def aclose(self) -> None:
        for replica in self._replicas:
            await replica.openai.close()
            await replica.http.aclose()

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
        try:
            await run.execute()
        finally:
            if len(run.routes) > 1:
                log.info("VLM replicas: %s", "; ".join(
                    f"{r.base_url}: {r.sent} sent, {r.ok} ok, {r.errors} errors, breaker {r.breaker}"
                    for r in run.stats.replicas))
        return run.outcome()

    async def _complete(self, request: VLMRequest, run: _Run) -> VLMResult:
        """Send one request with retries; return its final result or raise _Stop when the run stops."""
        body = self._body(request)
        stats, stop = run.stats, run.stop
        attempt = 0
        failovers = 0
        avoid: _Route | None = None
        while True:
            if stop.is_set():
                raise _Stop
            route = run.route(avoid)
            if route is None:  # every replica's breaker is open (the run is stopping)
                raise _Stop
            attempt += 1
            stats.sent += 1
            route.stats.sent += 1
            route.outstanding += 1
            sent_at = time.perf_counter()
            http_response: httpx2.Response | None = None
            try:
                http_response = await _post_completion(route.replica, body)
            except openai.APIError as exc:
                failure = classify_error(exc)
            finally:
                route.outstanding -= 1
            latency_ms = (time.perf_counter() - sent_at) * 1000
            if http_response is not None:
                content = http_response.content
                try:
                    result = self._ok_result(request, json.loads(content), latency_ms, attempt, route.breaker)
                    route.stats.ok += 1
                    if len(run.routes) > 1 and result.response is not None:
                        # Which replica answered, kept with the answer's lineage (one URL: the body
                        # stays exactly as the server sent it).
                        result.response["tuwen_replica"] = route.replica.base_url
                    return result
                except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                    # The server answered 200 with something unreadable. The GPU time is spent and a
                    # retry would spend it again, so it is recorded, not retried.
                    failure = Failure(
                        "invalid_response",
                        f"{type(exc).__name__}: {exc}; body starts {content[:300]!r}",
                        retryable=False,
                        endpoint_down=False,
                    )
            route.stats.errors += 1
            stats.attempt_errors[failure.error_type] = stats.attempt_errors.get(failure.error_type, 0) + 1
            if failure.endpoint_down and route.breaker.record_failure(
                f"{failure.error_type}: {failure.message}", time.monotonic()
            ):
                run.replica_down(route)
            if stop.is_set() and (failure.retryable or failure.endpoint_down):
                # The run is ending: this request is not done, and a rerun will try it again.
                raise _Stop
            # The next attempt goes elsewhere if it can: a replica that just failed is the one with
            # nothing in flight, so least-outstanding routing would otherwise send it straight back.
            avoid = route if failure.endpoint_down else None
            if failure.error_type == "connection" and failovers < len(run.routes) - 1 and run.route(route) not in (
                    None, route):
                # Refused or reset: this replica produced nothing for this request, so nothing was
                # paid; another replica takes it at once, without waiting and without using a retry.
                failovers += 1
                stats.failovers += 1
                continue
            if not failure.retryable or attempt - failovers > self.max_retries:
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

        It is posted the way of the SDK's documented raw-request path (`post(..., cast_to=Response)`,
        see `_post_completion`) rather than chat.completions.create, which walks every message part against its TypedDicts
        and serializes with ensure_ascii=False: a few milliseconds per request, paid once per
        sample of the dataset. ASCII JSON (Chinese text as \\u escapes, which the server decodes the same)
        keeps the 300 KB data URL a one-byte-per-character string, and `request_json` copies that URL
        into the body as it is instead of having the JSON encoder scan it.
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
        return request_json(payload)

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


@dataclass
class _Route:
    """One replica within one run: its breaker (a rerun starts with fresh ones) and requests in flight."""

    replica: _Replica
    breaker: CircuitBreaker
    stats: ReplicaStats
    outstanding: int = 0


class _Run:
    """One `VLMClient.run`: `max_in_flight` workers pulling from one source until it ends or the run stops.

    A worker pulls a request, completes it (with retries), hands the result to a delivery task and
    pulls the next. Answers that arrive together (a server finishing a batch) wait for the caller's
    one database thread, and a worker that waited with them would leave its request slot idle for the
    whole queue of commits; at most `max_in_flight` results wait for delivery, beyond that the workers
    wait for them. The run stops when the breaker opens, when `on_result` or the source raises, or when
    the source is exhausted; stopping cancels requests in flight, never a delivery: every result paid
    for is delivered before `run` returns.
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
        self.routes = [
            _Route(replica, CircuitBreaker(client.breaker_failures, client.breaker_window_s), ReplicaStats(replica.base_url))
            for replica in client._replicas
        ]
        self.stats.replicas = [route.stats for route in self.routes]
        self._next = 0  # where the round-robin among equally loaded replicas resumes
        self.source = _as_async_iterator(requests)
        self.pull_lock = asyncio.Lock()  # an async generator cannot be advanced by two tasks at once
        self.stop = asyncio.Event()
        self.errors: list[BaseException] = []
        self.deliveries: set[asyncio.Task[None]] = set()  # results handed to on_result, not yet delivered
        self.delivered = asyncio.Event()
        self.exhausted = False
        # In-flight control: workers beyond the limit wait for a slot (see inflight.py). Without an engine
        # the run has a controller of its own; with one it is a member of the endpoint's shared flow.
        self.controller: AIMDController | None = None
        self.flow: SharedInflight | None = None
        self.limit: int | None = None  # None: no control, every worker sends
        if client.inflight_control == "aimd" and client.engine is not None:
            endpoint = f"{client.model} @ " + ",".join(sorted(url.rstrip("/") for url in client.base_urls))
            member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            self.flow = SharedInflight(client.engine, endpoint, member, client.max_in_flight, client.metrics_poll_s)
            self.limit = self.flow.limit
        elif client.inflight_control == "aimd":
            self.controller = AIMDController(ceiling=client.max_in_flight)
            self.limit = self.controller.limit
        self.answers: list[Answer] = []  # a member following latency: finished since its last tick
        self.workers: list[asyncio.Task[None]] = []
        self.active = 0  # requests sent and not yet answered (retries and their back-off included)
        self.slot_freed = asyncio.Event()
        self.metrics_ok: bool | None = None  # None until the first /metrics read says which signal to use

    async def execute(self) -> None:
        started = time.perf_counter()
        self.workers = workers = [asyncio.create_task(self._worker(), name=f"vlm-worker-{i}")
                                  for i in range(self.client.max_in_flight)]
        stop_waiter = asyncio.create_task(self.stop.wait())
        # The flow's database calls run on a thread of their own, one at a time: a tick still running
        # when the watcher is cancelled finishes before the run leaves, rather than re-adding its row after.
        flow_thread = (concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuwen-flow")
                       if self.flow is not None else None)
        watcher = asyncio.create_task(self._watch_server(flow_thread)) if self.limit is not None else None
        try:
            await self._supervise(workers, stop_waiter)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                self.stats.inflight_limit = self.limit
                if self.metrics_ok is not None:
                    self.stats.inflight_source = "metrics" if self.metrics_ok else "latency"
            if self.flow is not None and flow_thread is not None:
                try:
                    await asyncio.get_running_loop().run_in_executor(flow_thread, self.flow.leave)
                except SQLAlchemyError as exc:  # its row goes stale and the other members drop it
                    log.warning("could not leave the shared in-flight flow: %s", exc)
                flow_thread.shutdown(wait=False)
            for task in workers:
                task.cancel()
            stop_waiter.cancel()
            await asyncio.gather(*workers, stop_waiter, return_exceptions=True)
            while self.deliveries:  # paid for: delivered even when the run stops or is cancelled
                await asyncio.gather(*self.deliveries, return_exceptions=True)
            await self.source.aclose()
            self.stats.elapsed_s = time.perf_counter() - started
            self.stats.circuit_open = self.all_down

    @property
    def all_down(self) -> bool:
        return all(route.breaker.is_open for route in self.routes)

    def route(self, avoid: _Route | None = None) -> _Route | None:
        """The healthy replica with the fewest requests in flight (ties in turn), not `avoid` unless it
        is the only one left; None when every breaker is open."""
        healthy = [r for r in self.routes if not r.breaker.is_open]
        if avoid is not None and len(healthy) > 1:
            healthy = [r for r in healthy if r is not avoid]
        if not healthy:
            return None
        if len(self.routes) == 1:
            return healthy[0]
        fewest = min(r.outstanding for r in healthy)
        n = len(self.routes)
        for step in range(n):
            candidate = self.routes[(self._next + step) % n]
            if candidate in healthy and candidate.outstanding == fewest:
                self._next = (self._next + step + 1) % n
                return candidate
        raise AssertionError("unreachable: a healthy replica has the fewest in flight")

    def replica_down(self, route: _Route) -> None:
        """A replica's breaker opened: it gets no more requests; the run stops when it was the last."""
        route.stats.breaker = "open"
        if self.all_down:
            self.stop.set()
        else:
            log.warning("VLM replica %s looks down (last error: %s); the other replicas carry on",
                        route.replica.base_url, route.breaker.last_error)

    async def _supervise(self, workers: list[asyncio.Task[None]], stop_waiter: asyncio.Task[Any]) -> None:
        """Wait for the workers to finish, or for the stop signal (then cancel them); then for the deliveries."""
        pending: set[asyncio.Task[Any]] = set(workers)
        while pending and not self.stop.is_set():
            done, pending = await asyncio.wait(pending | {stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(stop_waiter)
            for task in done - {stop_waiter}:
                if not task.cancelled() and (exc := task.exception()) is not None:
                    self.errors.append(exc)  # the request source raised (or a bug here)
                    self.stop.set()
        if self.stop.is_set():
            # In-flight HTTP calls, backoff sleeps and pulls are abandoned; deliveries (their own tasks) finish.
            for task in workers:
                task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        while self.deliveries:
            await asyncio.gather(*self.deliveries, return_exceptions=True)

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
        while not self.stop.is_set():
            await self._delivery_room()
            await self._admit()
            try:
                request = await self._pull()
                if request is None:
                    return
                try:
                    result = await self.client._complete(request, self)
                except _Stop:
                    self.stats.abandoned += 1
                    return
                except asyncio.CancelledError:
                    self.stats.abandoned += 1
                    raise
            finally:
                self._release()
            if self.controller is not None and self.metrics_ok is False:
                self.limit = self.controller.on_latency(time.monotonic(), result.latency_ms / 1000,
                                                        result.completion_tokens, self.active,
                                                        timed_out=result.error_type == "timeout")
                self.slot_freed.set()
            elif self.flow is not None and self.metrics_ok is False:
                self.answers.append(Answer(result.latency_ms / 1000, result.completion_tokens,
                                           result.error_type == "timeout"))
            # Paid for: handed over with no await since the answer came, so a cancel cannot drop it.
            delivery = asyncio.create_task(self._deliver_or_stop(result))
            self.deliveries.add(delivery)
            delivery.add_done_callback(self._delivery_done)

    async def _deliver_or_stop(self, result: VLMResult) -> None:
        try:
            await self._deliver(result)
        except Exception as exc:
            self.errors.append(exc)
            self.stop.set()

    def _delivery_done(self, delivery: asyncio.Task[None]) -> None:
        self.deliveries.discard(delivery)
        self.delivered.set()

    async def _delivery_room(self) -> None:
        """Wait while `max_in_flight` results wait for delivery: a caller slower than the server slows the run
        instead of holding ever more answers in memory."""
        while len(self.deliveries) >= self.client.max_in_flight and not self.stop.is_set():
            self.delivered.clear()
            await self.delivered.wait()

    async def _admit(self) -> None:
        """Wait until the in-flight controller's limit has room (at once without a controller)."""
        while self.limit is not None and self.active >= self.limit and not self.stop.is_set():
            self.slot_freed.clear()
            await self.slot_freed.wait()
        self.active += 1

    def _release(self) -> None:
        self.active -= 1
        self.slot_freed.set()

    async def _watch_server(self, flow_thread: concurrent.futures.Executor | None) -> None:
        """Every `metrics_poll_s`, feed the controller vLLM's running and waiting requests from /metrics.

        Without them (an answer that is not vLLM's metrics, or three failed reads in a row: a busy
        host can miss one) the workers' answers feed it latency instead, and /metrics is tried again
        every 10 s. With several replicas each healthy one's /metrics is read and their requests
        added up: the controller bounds the requests over all of them, as the workers do. A member
        of a shared flow ticks every interval whatever it read (`SharedInflight.tick`), on
        `flow_thread`; a tick the database refuses leaves its limit as it was until the next one.
        """
        timeout = aiohttp.ClientTimeout(total=max(2.0, 5 * self.client.metrics_poll_s))
        failures = 0
        next_read = 0.0  # monotonic time of the next /metrics read

        async def read(session: aiohttp.ClientSession, base_url: str) -> tuple[ServerLoad | None, bool]:
            url = base_url.rstrip("/").removesuffix("/v1") + "/metrics"
            try:
                async with session.get(url) as response:
                    answered = response.status in (200, 404)  # "no metrics here", not a blip
                    if response.status == 200:
                        return parse_vllm_metrics(await response.text(), self.client.model), answered
                    return None, answered
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return None, False

        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                load = None
                if time.monotonic() >= next_read:
                    reads = await asyncio.gather(*(read(session, r.replica.base_url) for r in self.routes
                                                   if not r.breaker.is_open))
                    loads = [load for load, _ in reads if load is not None]
                    answered = any(ok for _, ok in reads)
                    load = (ServerLoad(sum(x.running for x in loads), sum(x.waiting for x in loads))
                            if loads else None)
                    failures = 0 if load is not None else failures + 1
                    if load is not None:
                        self.metrics_ok = True
                    elif answered or failures >= 3:
                        self.metrics_ok = False
                        next_read = time.monotonic() + 10.0
                if self.flow is not None:
                    answers, self.answers = self.answers, []
                    demand = sum(not worker.done() for worker in self.workers)
                    try:
                        self.limit = await asyncio.get_running_loop().run_in_executor(
                            flow_thread, self.flow.tick, load, answers, self.active, demand)
                    except SQLAlchemyError as exc:
                        log.warning("shared in-flight control: tick failed, limit stays %s: %s", self.limit, exc)
                elif self.controller is not None and load is not None:
                    self.limit = self.controller.on_server_load(time.monotonic(), load, self.active)
                self.slot_freed.set()
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
        if self.all_down:
            stats = self.stats
            if len(self.routes) == 1:
                breaker = self.routes[0].breaker
                down = (
                    f"VLM endpoint {self.client.base_url} looks down: {breaker.consecutive_failures} "
                    f"connection-level failures in a row with no success (threshold {breaker.threshold} "
                    f"within {breaker.window_s:g}s); last error: {breaker.last_error}."
                )
            else:
                threshold, window_s = self.routes[0].breaker.threshold, self.routes[0].breaker.window_s
                down = (
                    f"every VLM replica looks down ({threshold} connection-level failures in a row with no "
                    f"success within {window_s:g}s at each): " + "; ".join(
                        f"{r.replica.base_url} last error: {r.breaker.last_error}" for r in self.routes) + "."
                )
            raise CircuitOpenError(
                f"{down} Stopped after "
                f"{stats.ok} ok and {stats.failed} failed results; {stats.abandoned} in-flight "
                f"requests were abandoned and, like the rest, are left for a rerun."
            )
        return self.stats
