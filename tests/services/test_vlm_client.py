"""Tests for tuwen.synthesis.vlm_client: retry policy, error classification, circuit breaker, and runs
against the stand-in VLM server started as a real subprocess."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import random
import re
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import aiohttp
import httpx2
import openai
import pytest
from aiohttp import web
from PIL import Image

from tuwen.config import Settings
from tuwen.local.standin_vlm import StandinProcess
from tuwen.synthesis.vlm_client import (
    CircuitBreaker,
    CircuitOpenError,
    ClientStats,
    VLMClient,
    VLMRequest,
    VLMResult,
    backoff_delay,
    build_messages,
    classify_error,
    data_url,
    parse_retry_after,
    request_json,
)

TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def make_request(key: str, prompt: str = "请详细描述这张图片。") -> VLMRequest:
    return VLMRequest(
        key=key,
        messages=build_messages(prompt, data_url(TINY_PNG, "image/png")),
        max_tokens=64,
        temperature=0.7,
        top_p=0.9,
        seed=1234,
        extra_body={"mm_processor_kwargs": {"max_pixels": 1003520, "min_pixels": 3136}},
    )


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- messages ------------------------------------------------------------------------------------


def test_data_url_round_trips_the_bytes() -> None:
    url = data_url(TINY_PNG, "image/png")
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == TINY_PNG


def test_build_messages_puts_the_image_before_the_instruction() -> None:
    messages = build_messages("描述图片", "data:image/jpeg;base64,AAAA")
    assert messages == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
                {"type": "text", "text": "描述图片"},
            ],
        }
    ]


def plain_json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("ascii")


@pytest.mark.parametrize(
    ("url", "prompt"),
    [
        (data_url(os.urandom(30_000), "image/jpeg"), "请详细描述这张图片。"),  # copied into the body
        ("data:image/jpeg;base64,AAAA", "描述"),  # too short to bother
        ("https://minio:9000/tuwen/model/ab/abc.jpg?X-Amz-Signature=" + "f" * 5000, "描述"),
        (data_url(os.urandom(30_000), "image/jpeg") + "\x01", "描述"),  # a control character: escaped
        (data_url(os.urandom(30_000), "image/jpeg") + '"', "描述"),
        (data_url(os.urandom(30_000), "image/jpeg") + "\\", "描述"),
        (data_url(os.urandom(30_000), "image/jpeg") + "图", "描述"),
        (data_url(os.urandom(30_000), "image/jpeg"), "tuwen-image-url-0"),  # a prompt that is the mark
        (data_url(os.urandom(30_000), "image/jpeg"), '"tuwen-image-url-0"'),
    ],
)
def test_the_request_body_is_the_json_encoders_byte_for_byte(url: str, prompt: str) -> None:
    payload = {"model": "m", "messages": build_messages(prompt, url), "max_tokens": 64, "temperature": 0.7,
               "top_p": 0.9, "seed": 1234, "mm_processor_kwargs": {"max_pixels": 1003520, "min_pixels": 3136}}
    assert request_json(payload) == plain_json(payload)


def test_a_body_with_several_images_and_turns_is_the_json_encoders_byte_for_byte() -> None:
    images = [data_url(os.urandom(20_000 + i), "image/png") for i in range(3)]
    messages = [
        {"role": "system", "content": "你是助手"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": images[0], "detail": "high"}},
                                     {"type": "image_url", "image_url": {"url": images[1]}},
                                     {"type": "text", "text": "比较"}]},
        {"role": "assistant", "content": "好的"},
        {"role": "user", "content": [{"type": "text", "text": images[2]},  # a long text part: encoded as text
                                     {"type": "image_url", "image_url": {"url": images[2]}}]},
    ]
    payload = {"model": "m", "messages": messages, "max_tokens": 8}
    assert request_json(payload) == plain_json(payload)
    assert request_json({"model": "m"}) == plain_json({"model": "m"})


# --- backoff -------------------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    rng = random.Random(7)
    for retry_number, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 30.0)]:
        delays = [backoff_delay(retry_number, base_s=0.5, max_s=30.0, rng=rng) for _ in range(2000)]
        assert min(delays) >= 0.0
        assert max(delays) <= ceiling
        # Full jitter spreads over the whole range, not bunched at the ceiling.
        assert min(delays) < 0.05 * ceiling
        assert max(delays) > 0.95 * ceiling


def test_backoff_is_reproducible_with_a_seed() -> None:
    first = [backoff_delay(n, base_s=0.5, max_s=30.0, rng=random.Random(3)) for n in range(1, 6)]
    second = [backoff_delay(n, base_s=0.5, max_s=30.0, rng=random.Random(3)) for n in range(1, 6)]
    assert first == second


def test_backoff_honours_retry_after_capped_at_the_maximum() -> None:
    rng = random.Random(0)
    assert backoff_delay(1, base_s=0.5, max_s=30.0, rng=rng, retry_after_s=7.0) == 7.0
    assert backoff_delay(1, base_s=0.5, max_s=30.0, rng=rng, retry_after_s=600.0) == 30.0
    assert backoff_delay(3, base_s=0.5, max_s=30.0, rng=rng, retry_after_s=0.0) == 0.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"retry-after": "3"}, 3.0), ({"retry-after": "1.5"}, 1.5), ({}, None), ({"retry-after": "-1"}, None)],
)
def test_parse_retry_after_reads_seconds(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(httpx2.Headers(headers)) == expected


def test_parse_retry_after_ignores_http_dates() -> None:
    assert parse_retry_after(httpx2.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None


# --- error classification ------------------------------------------------------------------------

_REQUEST = httpx2.Request("POST", "http://vlm.test/v1/chat/completions")


def status_error(cls: type[openai.APIStatusError], status: int, message: str, **headers: str):
    response = httpx2.Response(status, request=_REQUEST, headers=headers)
    return cls(message, response=response, body=None)


def test_timeouts_and_connection_errors_retry_and_count_toward_the_breaker() -> None:
    timeout = classify_error(openai.APITimeoutError(request=_REQUEST))
    assert (timeout.error_type, timeout.retryable, timeout.endpoint_down) == ("timeout", True, True)

    try:
        raise openai.APIConnectionError(request=_REQUEST) from httpx2.ConnectError("Connection refused")
    except openai.APIConnectionError as exc:
        connection = classify_error(exc)
    assert (connection.error_type, connection.retryable, connection.endpoint_down) == (
        "connection",
        True,
        True,
    )
    assert "Connection refused" in connection.message


def _chained(*exceptions: BaseException) -> BaseException:
    """Raise each exception from the next, outermost first, as the SDK's aiohttp transport does."""
    for outer, inner in zip(exceptions, exceptions[1:], strict=False):
        outer.__cause__ = inner
    return exceptions[0]


def test_resets_and_refusals_that_the_aiohttp_transport_calls_timeouts_are_connection_errors() -> None:
    # What the transport raises for a reset connection: APITimeoutError <- ConnectTimeout <- ClientOSError.
    reset = classify_error(_chained(
        openai.APITimeoutError(request=_REQUEST),
        httpx2.ConnectTimeout("[Errno 104] Connection reset by peer"),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        ConnectionResetError(104, "Connection reset by peer"),
    ))
    assert (reset.error_type, reset.retryable, reset.endpoint_down) == ("connection", True, True)
    assert "reset by peer" in reset.message
    refused = classify_error(_chained(
        openai.APITimeoutError(request=_REQUEST),
        httpx2.ConnectTimeout("Cannot connect to host"),
        ConnectionRefusedError(111, "Connect call failed"),
    ))
    assert refused.error_type == "connection"
    # A read that really timed out stays a timeout.
    timed_out = classify_error(_chained(
        openai.APITimeoutError(request=_REQUEST),
        httpx2.ReadTimeout("Timeout on reading data from socket"),
        aiohttp.SocketTimeoutError("Timeout on reading data from socket"),
    ))
    assert timed_out.error_type == "timeout"


def test_rate_limit_retries_after_the_servers_delay_but_is_no_outage() -> None:
    failure = classify_error(status_error(openai.RateLimitError, 429, "slow down", **{"Retry-After": "2"}))
    assert failure.error_type == "rate_limited"
    assert failure.retryable
    assert not failure.endpoint_down
    assert failure.retry_after_s == 2.0


@pytest.mark.parametrize(("status", "endpoint_down"), [(500, False), (502, True), (503, True), (504, True)])
def test_server_errors_retry_and_gateway_errors_count_toward_the_breaker(
    status: int, endpoint_down: bool
) -> None:
    failure = classify_error(status_error(openai.InternalServerError, status, "boom"))
    assert failure.error_type == "server_error"
    assert failure.retryable
    assert failure.endpoint_down is endpoint_down
    assert str(status) in failure.message


@pytest.mark.parametrize(
    ("message", "error_type"),
    [
        (
            "This model's maximum context length is 32768 tokens. However, you requested 40000 tokens.",
            "context_too_long",
        ),
        (
            "The decoder prompt (length 40960) is longer than the maximum model length of 32768.",
            "context_too_long",
        ),
        ("Prompt is too long", "context_too_long"),
        ("cannot identify image file <_io.BytesIO object>", "bad_request"),
    ],
)
def test_bad_requests_are_not_retried(message: str, error_type: str) -> None:
    failure = classify_error(status_error(openai.BadRequestError, 400, message))
    assert failure.error_type == error_type
    assert not failure.retryable
    assert not failure.endpoint_down


def test_not_found_is_not_retried() -> None:
    failure = classify_error(status_error(openai.NotFoundError, 404, "The model `x` does not exist."))
    assert (failure.error_type, failure.retryable, failure.endpoint_down) == ("not_found", False, False)


def test_a_rejected_key_is_not_retried_but_stops_the_run() -> None:
    failure = classify_error(status_error(openai.AuthenticationError, 401, "bad key"))
    assert (failure.error_type, failure.retryable, failure.endpoint_down) == ("auth", False, True)


# --- circuit breaker -----------------------------------------------------------------------------


def test_breaker_opens_after_the_threshold_of_failures_in_a_row() -> None:
    breaker = CircuitBreaker(failures=3, window_s=30.0)
    assert breaker.record_failure("connection: refused", now=0.0) is False
    assert breaker.record_failure("connection: refused", now=0.1) is False
    assert not breaker.is_open
    assert breaker.record_failure("timeout", now=0.2) is True
    assert breaker.is_open
    assert breaker.last_error == "timeout"
    # Stays open, and only the opening failure reports the transition.
    assert breaker.record_failure("connection: reset", now=0.3) is False
    assert breaker.is_open
    assert breaker.last_error == "timeout"


def test_a_success_resets_the_breaker() -> None:
    breaker = CircuitBreaker(failures=3, window_s=30.0)
    breaker.record_failure("x", now=0.0)
    breaker.record_failure("x", now=0.1)
    breaker.record_success()
    assert breaker.consecutive_failures == 0
    breaker.record_failure("x", now=0.2)
    breaker.record_failure("x", now=0.3)
    assert not breaker.is_open


def test_failures_older_than_the_window_drop_out() -> None:
    breaker = CircuitBreaker(failures=3, window_s=10.0)
    breaker.record_failure("x", now=0.0)
    breaker.record_failure("x", now=5.0)
    assert breaker.record_failure("x", now=20.0) is False  # the first two are more than 10 s old
    assert breaker.consecutive_failures == 1
    breaker.record_failure("x", now=21.0)
    assert breaker.record_failure("x", now=22.0) is True


def test_breaker_needs_a_positive_threshold() -> None:
    with pytest.raises(ValueError, match="breaker_failures"):
        CircuitBreaker(failures=0, window_s=1.0)


# --- construction --------------------------------------------------------------------------------


def test_from_settings_takes_the_endpoint_and_limits_from_settings() -> None:
    settings = Settings(
        vlm_base_url="http://vlm.internal:8000/v1",
        vlm_model="Qwen/Qwen2.5-VL-32B-Instruct",
        vlm_timeout_s=90.0,
        vlm_max_retries=3,
        vlm_max_in_flight=48,
    )
    client = VLMClient.from_settings(settings)
    try:
        assert client.base_url == "http://vlm.internal:8000/v1"
        assert client.model == "Qwen/Qwen2.5-VL-32B-Instruct"
        assert (client.timeout_s, client.max_retries, client.max_in_flight) == (90.0, 3, 48)
        # A hung server's timeouts arrive over one timeout's span; the breaker window covers it.
        assert client.breaker_window_s >= 90.0
        assert client._openai.max_retries == 0  # the SDK must not add a second retry layer
    finally:
        asyncio.run(client.aclose())


# --- the SDK's request, reused ----------------------------------------------------------------------

ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "好"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def test_requests_after_the_first_answer_go_out_as_the_sdk_sent_the_first() -> None:
    """From the first answer on, the SDK's request is reused: same headers in the same order, same body."""
    seen: list[tuple[list[tuple[bytes, bytes]], bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((list(request.raw_headers), await request.read()))
        if len(seen) == 3:
            return web.json_response({"error": {"message": "no such image"}}, status=400)
        return web.json_response(ANSWER)

    async def scenario() -> list[VLMResult]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = unused_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        client = VLMClient(f"http://127.0.0.1:{port}/v1", "sk-test", "m", timeout_s=10.0, max_retries=0,
                           max_in_flight=1)
        results: list[VLMResult] = []
        try:
            await client.run([make_request("same") for _ in range(4)], results.append)
            assert client._replicas[0].post_template is not None
        finally:
            await client.aclose()
            await runner.cleanup()
        return results

    results = asyncio.run(scenario())

    assert [(r.ok, r.error_type) for r in results] == [(True, None), (True, None), (False, "bad_request"), (True, None)]
    assert results[2].error == "HTTP 400: Error code: 400 - no such image"
    assert len(seen) == 4
    headers, body = seen[0]
    named = [(name.lower(), value) for name, value in headers]
    assert named[0][0] == b"host" and (b"authorization", b"Bearer sk-test") in named
    assert body == plain_json({"model": "m", "messages": make_request("same").messages, "max_tokens": 64,
                               "temperature": 0.7, "top_p": 0.9, "seed": 1234,
                               "mm_processor_kwargs": {"max_pixels": 1003520, "min_pixels": 3136}})
    assert all(later == seen[0] for later in seen[1:])


# --- an endpoint that is down --------------------------------------------------------------------


def test_run_stops_quickly_when_nothing_listens() -> None:
    pulled = 0

    async def requests() -> AsyncIterator[VLMRequest]:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield make_request(f"k{i}")

    delivered: list[VLMResult] = []

    async def scenario() -> None:
        client = VLMClient(
            f"http://127.0.0.1:{unused_port()}/v1",
            "EMPTY",
            "tuwen-standin-vlm",
            timeout_s=5.0,
            max_retries=4,
            max_in_flight=16,
            rng_seed=1,
        )
        try:
            await client.run(requests(), delivered.append)
        finally:
            await client.aclose()

    started = time.perf_counter()
    with pytest.raises(CircuitOpenError) as raised:
        asyncio.run(scenario())
    elapsed = time.perf_counter() - started

    assert elapsed < 5.0, f"took {elapsed:.1f}s to notice the endpoint is down"
    message = str(raised.value)
    assert "127.0.0.1" in message
    assert "looks down" in message
    assert "8 connection-level failures" in message
    assert "last error: connection:" in message  # refused, not mistaken for a timeout
    # Nothing was finished, so nothing is reported; the unpulled rest is simply left to do.
    assert delivered == []
    assert pulled <= 16 + 1


# --- against the stand-in VLM server (a real subprocess) -----------------------------------------


@pytest.fixture(scope="module")
def standin() -> Iterator[StandinProcess]:
    with StandinProcess() as process:
        yield process


@pytest.fixture
def vlm(standin: StandinProcess) -> StandinProcess:
    """The shared stand-in with no faults and fresh counters; tests set the faults they need."""
    standin.set_faults()
    standin.reset_stats()
    return standin


def photo_bytes() -> bytes:
    image = Image.new("RGB", (64, 48), (200, 60, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def photo_request(i: int) -> VLMRequest:
    # Distinct prompts make distinct requests for the stand-in, whose faults are drawn per request.
    return VLMRequest(
        key=f"gen-{i:04d}",
        messages=build_messages(f"请详细描述这张图片。（{i}）", data_url(photo_bytes(), "image/jpeg")),
        max_tokens=256,
        temperature=0.7,
        top_p=0.9,
        seed=1234,
        extra_body={"mm_processor_kwargs": {"max_pixels": 1003520, "min_pixels": 3136}},
    )


def client_for(vlm: StandinProcess, **overrides: Any) -> VLMClient:
    options: dict[str, Any] = {
        "timeout_s": 10.0,
        "max_retries": 4,
        "max_in_flight": 8,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.2,
        "rng_seed": 1,
    }
    options.update(overrides)
    model = options.pop("model", vlm.model)
    return VLMClient(vlm.base_url, "EMPTY", model, **options)


def run_client(
    client: VLMClient,
    requests: Iterable[VLMRequest] | AsyncIterable[VLMRequest],
    on_result: Callable[[VLMResult], Any],
) -> ClientStats:
    async def scenario() -> ClientStats:
        try:
            return await client.run(requests, on_result)
        finally:
            await client.aclose()

    return asyncio.run(scenario())


def test_every_request_gets_an_answer_and_tokens_add_up(vlm: StandinProcess) -> None:
    results: dict[str, VLMResult] = {}

    async def commit(result: VLMResult) -> None:  # a coroutine on_result is awaited
        await asyncio.sleep(0)
        results[result.key] = result

    requests = [photo_request(i) for i in range(30)]
    stats = run_client(client_for(vlm), requests, commit)

    assert sorted(results) == [r.key for r in requests]
    assert all(r.ok and r.attempts == 1 and r.error_type is None for r in results.values())
    assert all(r.text and r.finish_reason in {"stop", "length"} for r in results.values())
    # The Chinese prompt arrived intact (the body is ASCII JSON with \u escapes): the answer is Chinese.
    assert all(re.search(r"[\u4e00-\u9fff]", r.text or "") for r in results.values())
    assert all(
        r.response is not None and r.response["system_fingerprint"] == "tuwen-stand-in"
        for r in results.values()
    )
    assert (stats.requests, stats.sent, stats.ok, stats.failed, stats.retries) == (30, 30, 30, 0, 0)
    assert stats.prompt_tokens == sum(r.response["usage"]["prompt_tokens"] for r in results.values())
    assert stats.completion_tokens == sum(r.response["usage"]["completion_tokens"] for r in results.values())
    assert stats.prompt_tokens > 0 and stats.completion_tokens > 0
    server = vlm.stats()
    assert server["requests"] == 30
    assert server["ok"] == 30


def test_500_503_and_429_are_retried_until_they_succeed(vlm: StandinProcess) -> None:
    vlm.set_faults(fault_rates={"500": 0.15, "503": 0.15, "429": 0.15}, fault_seed=11, retry_after_s=0)
    results: list[VLMResult] = []

    stats = run_client(client_for(vlm, max_retries=12), [photo_request(i) for i in range(40)], results.append)

    assert len(results) == 40
    assert all(r.ok for r in results)
    assert any(r.attempts > 1 for r in results)
    server = vlm.stats()
    assert {"500", "503", "429"} <= set(server["errors"])
    # One HTTP request per attempt: nothing below this client retried on its own.
    assert server["requests"] == stats.sent == 40 + stats.retries
    assert stats.retries == sum(server["errors"].values())
    assert stats.attempt_errors == {
        "server_error": server["errors"].get("500", 0) + server["errors"].get("503", 0),
        "rate_limited": server["errors"]["429"],
    }


def test_retry_after_is_honoured(vlm: StandinProcess) -> None:
    vlm.set_faults(fail_first=2, fail_first_kind="429", retry_after_s=1)
    results: list[VLMResult] = []

    # The backoff alone would wait at most 20 ms; the server asked for a second each time.
    client = client_for(vlm, max_in_flight=1, backoff_base_s=0.01, backoff_max_s=5.0)
    stats = run_client(client, [photo_request(0)], results.append)

    assert [(r.ok, r.attempts) for r in results] == [(True, 3)]
    assert 2.0 <= stats.elapsed_s < 4.0
    assert stats.attempt_errors == {"rate_limited": 2}


def test_server_errors_that_outlast_the_retries_are_reported_without_tripping_the_breaker(
    vlm: StandinProcess,
) -> None:
    vlm.set_faults(fault_rates={"500": 1.0})
    results: list[VLMResult] = []

    stats = run_client(client_for(vlm, max_retries=2), [photo_request(i) for i in range(4)], results.append)

    assert sorted(r.key for r in results) == [f"gen-{i:04d}" for i in range(4)]
    assert all(not r.ok and r.error_type == "server_error" and r.attempts == 3 for r in results)
    assert all("500" in (r.error or "") for r in results)
    assert stats.by_error_type == {"server_error": 4}
    assert vlm.stats()["requests"] == 12  # 500 says the server is up: 12 failures, breaker still closed


def test_a_timeout_is_retried(vlm: StandinProcess) -> None:
    vlm.set_faults(fail_first=1, fail_first_kind="timeout", hang_s=5.0)
    results: list[VLMResult] = []

    stats = run_client(client_for(vlm, timeout_s=0.5, max_in_flight=1), [photo_request(0)], results.append)

    assert [(r.ok, r.attempts) for r in results] == [(True, 2)]
    assert stats.attempt_errors == {"timeout": 1}


def test_a_bad_request_is_recorded_once_and_not_retried(vlm: StandinProcess) -> None:
    broken = VLMRequest(
        key="broken-image",
        messages=build_messages("描述图片", "data:image/jpeg;base64,not-base64!!"),
        max_tokens=64,
        temperature=0.7,
        top_p=0.9,
        seed=None,
        extra_body={},
    )
    results: list[VLMResult] = []

    stats = run_client(client_for(vlm), [broken, photo_request(1)], results.append)

    by_key = {r.key: r for r in results}
    assert by_key["broken-image"].ok is False
    assert by_key["broken-image"].error_type == "bad_request"
    assert by_key["broken-image"].attempts == 1
    assert "base64" in (by_key["broken-image"].error or "")
    assert by_key["gen-0001"].ok
    assert stats.by_error_type == {"bad_request": 1}
    assert stats.retries == 0
    server = vlm.stats()
    assert server["requests"] == 2
    assert server["errors"] == {"400": 1}


def test_an_unknown_model_is_not_found_and_not_retried(vlm: StandinProcess) -> None:
    results: list[VLMResult] = []

    stats = run_client(
        client_for(vlm, model="Qwen/Qwen2.5-VL-72B-Instruct"),
        [photo_request(i) for i in range(3)],
        results.append,
    )

    assert all(r.error_type == "not_found" and r.attempts == 1 for r in results)
    assert len(results) == 3
    assert stats.by_error_type == {"not_found": 3}
    assert vlm.stats()["requests"] == 3


def test_no_more_than_max_in_flight_requests_are_outstanding(vlm: StandinProcess) -> None:
    vlm.set_faults(latency="fixed:0.5")
    results: list[VLMResult] = []

    stats = run_client(
        client_for(vlm, max_in_flight=5), [photo_request(i) for i in range(20)], results.append
    )

    assert len(results) == 20 and all(r.ok for r in results)
    # 20 requests, 5 at a time, 0.5 s each: four waves.
    assert 1.9 <= stats.elapsed_s < 3.0, stats.elapsed_s
    assert vlm.stats()["max_in_flight"] == 5


def test_requests_are_pulled_only_when_a_slot_frees(vlm: StandinProcess) -> None:
    vlm.set_faults(latency="fixed:0.05")
    max_in_flight = 4
    pulled = 0
    delivered = 0
    most_in_hand = 0

    async def requests() -> AsyncIterator[VLMRequest]:
        nonlocal pulled, most_in_hand
        for i in range(40):
            # Building a request is what costs (an S3 read and a base64 encode in production).
            pulled += 1
            most_in_hand = max(most_in_hand, pulled - delivered)
            yield photo_request(i)

    def count(_result: VLMResult) -> None:
        nonlocal delivered
        delivered += 1

    run_client(client_for(vlm, max_in_flight=max_in_flight), requests(), count)

    assert (pulled, delivered) == (40, 40)
    # In hand: the requests in flight, plus results handed over and not yet delivered (a loop turn here).
    assert max_in_flight <= most_in_hand <= 2 * max_in_flight


def test_a_slow_delivery_does_not_hold_the_request_slot_and_waits_are_bounded(vlm: StandinProcess) -> None:
    """Answers that arrive together queue for the caller's one database thread; the next requests go out
    meanwhile, and no more than max_in_flight results wait for delivery."""
    vlm.set_faults(latency="fixed:0.05")
    max_in_flight = 4
    pulled = 0
    delivered = 0
    most_in_hand = 0
    lock = asyncio.Lock()  # one writer, like the stage's database thread

    async def requests() -> AsyncIterator[VLMRequest]:
        nonlocal pulled
        for i in range(24):
            pulled += 1
            yield photo_request(i)

    async def store(_result: VLMResult) -> None:
        nonlocal delivered, most_in_hand
        async with lock:
            most_in_hand = max(most_in_hand, pulled - delivered)
            await asyncio.sleep(0.05)  # a commit slower than the server's answers come
            delivered += 1

    stats = run_client(client_for(vlm, max_in_flight=max_in_flight), requests(), store)

    assert (pulled, delivered, stats.ok) == (24, 24, 24)
    # The next wave was sent while the first one waited for its commits (a worker that delivered itself
    # would hold at most max_in_flight), and the waiting results never exceeded max_in_flight.
    assert max_in_flight < most_in_hand <= 2 * max_in_flight
    assert vlm.stats()["max_in_flight"] <= max_in_flight


def test_an_error_in_on_result_stops_the_run(vlm: StandinProcess) -> None:
    vlm.set_faults(latency="fixed:0.05")
    delivered: list[str] = []

    def commit(result: VLMResult) -> None:
        if len(delivered) == 5:
            raise RuntimeError("database went away")
        delivered.append(result.key)

    with pytest.raises(RuntimeError, match="database went away"):
        run_client(client_for(vlm, max_in_flight=4), [photo_request(i) for i in range(100)], commit)

    assert len(delivered) == 5
    assert vlm.stats()["requests"] < 20


def test_failures_after_the_first_answer_are_classified_as_through_the_sdk(vlm: StandinProcess) -> None:
    """A client that has answered (and so reuses the SDK's request) reports each failure exactly as a
    fresh client, whose requests the SDK builds, does."""

    async def outcomes(warm: bool) -> dict[str, tuple[str | None, str | None]]:
        found: dict[str, tuple[str | None, str | None]] = {}
        client = client_for(vlm, timeout_s=0.5, max_retries=0, max_in_flight=1)
        try:
            if warm:
                vlm.set_faults()
                answered: list[VLMResult] = []
                await client.run([photo_request(0)], answered.append)
                assert answered[0].ok and client._replicas[0].post_template is not None
            for kind in ("500", "503", "429", "timeout", "reset"):
                vlm.set_faults(fault_rates={kind: 1.0}, hang_s=3.0, retry_after_s=0)
                results: list[VLMResult] = []
                await client.run([photo_request(1)], results.append)
                found[kind] = (results[0].error_type, results[0].error)
        finally:
            vlm.set_faults()
            await client.aclose()
        return found

    cold = asyncio.run(outcomes(warm=False))
    warm = asyncio.run(outcomes(warm=True))

    assert warm == cold
    assert {kind: error_type for kind, (error_type, _) in warm.items()} == {
        "500": "server_error", "503": "server_error", "429": "rate_limited", "timeout": "timeout", "reset": "connection"}


def test_the_breaker_trips_when_every_connection_is_reset(vlm: StandinProcess) -> None:
    vlm.set_faults(fault_rates={"reset": 1.0})
    delivered: list[VLMResult] = []

    started = time.perf_counter()
    with pytest.raises(CircuitOpenError) as raised:
        run_client(
            client_for(vlm, max_in_flight=8, max_retries=4, backoff_base_s=0.5, backoff_max_s=30.0),
            [photo_request(i) for i in range(200)],
            delivered.append,
        )
    elapsed = time.perf_counter() - started

    assert elapsed < 5.0
    assert vlm.base_url in str(raised.value)
    assert "last error: connection:" in str(raised.value)  # a reset, not mistaken for a timeout
    assert delivered == []
    server = vlm.stats()
    # It stopped after about breaker_failures attempts, not 200 requests x 5 attempts.
    assert server["errors"]["reset"] == server["requests"] < 30


def test_the_breaker_trips_when_the_server_hangs(vlm: StandinProcess) -> None:
    vlm.set_faults(fault_rates={"timeout": 1.0}, hang_s=10.0)
    delivered: list[VLMResult] = []

    with pytest.raises(CircuitOpenError, match="timeout"):
        run_client(
            client_for(vlm, timeout_s=0.3, max_in_flight=4, max_retries=4),
            [photo_request(i) for i in range(100)],
            delivered.append,
        )

    assert delivered == []
    assert vlm.stats()["requests"] < 20


def test_deliveries_under_way_when_the_breaker_opens_are_finished(vlm: StandinProcess) -> None:
    started: list[str] = []
    finished: list[str] = []

    async def slow_commit(result: VLMResult) -> None:
        started.append(result.key)
        if len(started) == 1:
            vlm.set_faults(fault_rates={"reset": 1.0})  # the server "dies" while we commit
        await asyncio.sleep(0.5)
        finished.append(result.key)

    with pytest.raises(CircuitOpenError):
        run_client(client_for(vlm, max_in_flight=2), [photo_request(i) for i in range(50)], slow_commit)

    # The breaker opened during the commit (8 resets take far less than 0.5 s), and the answer
    # already paid for was still handed over in full.
    assert started and finished == started


# --- several replicas with no router -------------------------------------------------------------


def test_a_base_url_list_makes_one_sdk_client_per_replica_and_refuses_duplicates() -> None:
    client = VLMClient("http://gpu1:8000/v1, http://gpu2:8000/v1", "EMPTY", "m",
                       timeout_s=5.0, max_retries=0, max_in_flight=4)
    try:
        assert client.base_urls == ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]
        assert [str(r.openai.base_url) for r in client._replicas] == ["http://gpu1:8000/v1/", "http://gpu2:8000/v1/"]
        assert all(r.openai.max_retries == 0 for r in client._replicas)
    finally:
        asyncio.run(client.aclose())
    with pytest.raises(ValueError, match="listed twice"):
        VLMClient(["http://gpu1:8000/v1", "http://gpu1:8000/v1/"], "EMPTY", "m",
                  timeout_s=5.0, max_retries=0, max_in_flight=4)


def test_routing_picks_the_fewest_outstanding_and_takes_turns_on_ties() -> None:
    from tuwen.synthesis.vlm_client import _Run

    client = VLMClient("http://a:1/v1,http://b:1/v1,http://c:1/v1", "EMPTY", "m",
                       timeout_s=5.0, max_retries=0, max_in_flight=4)

    async def scenario() -> None:
        run = _Run(client, [], lambda result: None)
        a, b, c = run.routes
        # All idle: each in turn.
        assert [run.route() for _ in range(4)] == [a, b, c, a]
        a.outstanding, b.outstanding, c.outstanding = 3, 1, 2
        assert run.route() is b
        assert run.route(avoid=b) is c  # the replica that just failed is passed over while others are up
        b.breaker.is_open = True  # a replica whose breaker opened gets nothing
        assert run.route() is c
        c.breaker.is_open = True
        assert run.route(avoid=a) is a  # the last one up is used even if it just failed
        a.breaker.is_open = True
        assert run.route() is None
        await client.aclose()

    asyncio.run(scenario())


@pytest.fixture
def two_standins() -> Iterator[tuple[StandinProcess, StandinProcess]]:
    with StandinProcess() as first, StandinProcess() as second:
        yield first, second


def test_the_slow_replica_gets_fewer_requests(two_standins: tuple[StandinProcess, StandinProcess]) -> None:
    fast, slow = two_standins
    slow.set_faults(latency="fixed:0.3")
    results: list[VLMResult] = []
    client = VLMClient([fast.base_url, slow.base_url], "EMPTY", fast.model, timeout_s=10.0, max_retries=2,
                       max_in_flight=4, rng_seed=1)
    stats = run_client(client, [photo_request(i) for i in range(60)], results.append)

    assert len(results) == 60 and all(r.ok for r in results)
    on_fast, on_slow = fast.stats()["requests"], slow.stats()["requests"]
    assert on_fast + on_slow == 60
    # Round-robin would split 30/30; least-outstanding sends work where it gets done.
    assert on_fast > 3 * on_slow, (on_fast, on_slow)
    assert [(r.base_url, r.sent, r.ok, r.errors, r.breaker) for r in stats.replicas] == [
        (fast.base_url, on_fast, on_fast, 0, "closed"), (slow.base_url, on_slow, on_slow, 0, "closed")]
    # Each answer says which replica gave it.
    assert Counter(r.response["tuwen_replica"] for r in results if r.response) == {
        fast.base_url: on_fast, slow.base_url: on_slow}


def test_a_replica_killed_mid_run_leaves_the_work_to_the_other(
    two_standins: tuple[StandinProcess, StandinProcess],
) -> None:
    doomed, survivor = two_standins
    for vlm in (doomed, survivor):
        vlm.set_faults(latency="fixed:0.05")
    delivered: list[VLMResult] = []
    killed_after: list[int] = []

    def on_result(result: VLMResult) -> None:
        delivered.append(result)
        if len(delivered) == 20 and doomed.pid is not None:
            killed_after.append(doomed.stats()["requests"])
            os.kill(doomed.pid, signal.SIGKILL)

    client = VLMClient([doomed.base_url, survivor.base_url], "EMPTY", doomed.model, timeout_s=10.0,
                       max_retries=4, max_in_flight=8, backoff_base_s=0.01, backoff_max_s=0.2, rng_seed=1)
    stats = run_client(client, [photo_request(i) for i in range(100)], on_result)

    keys = [r.key for r in delivered]
    assert len(keys) == 100 and len(set(keys)) == 100  # every request answered, each once
    assert all(r.ok for r in delivered)
    by_replica = Counter(r.response["tuwen_replica"] for r in delivered if r.response)
    # The survivor was asked only for what it answered: nothing it did was thrown away or paid twice.
    assert survivor.stats()["requests"] == by_replica[survivor.base_url]
    # The dead one answered some before it died and nothing after.
    assert 0 < by_replica[doomed.base_url] <= killed_after[0]
    assert by_replica[doomed.base_url] + by_replica[survivor.base_url] == 100
    dead, alive = stats.replicas
    assert dead.errors > 0 and alive.errors == 0
    assert stats.failovers > 0 and not stats.circuit_open


def test_the_run_stops_only_when_every_replica_is_down(two_standins: tuple[StandinProcess, StandinProcess]) -> None:
    first, second = two_standins
    for vlm in (first, second):
        vlm.set_faults(fault_rates={"reset": 1.0})
    delivered: list[VLMResult] = []
    client = VLMClient([first.base_url, second.base_url], "EMPTY", first.model, timeout_s=10.0, max_retries=4,
                       max_in_flight=8, backoff_base_s=0.5, backoff_max_s=30.0, rng_seed=1)

    started = time.perf_counter()
    with pytest.raises(CircuitOpenError) as raised:
        run_client(client, [photo_request(i) for i in range(200)], delivered.append)

    assert time.perf_counter() - started < 10.0
    message = str(raised.value)
    assert "every VLM replica looks down" in message
    assert f"{first.base_url} last error: connection:" in message
    assert f"{second.base_url} last error: connection:" in message
    assert delivered == []
    # Each replica was tried until its own breaker opened, not once per request.
    assert 8 <= first.stats()["requests"] < 30 and 8 <= second.stats()["requests"] < 30
