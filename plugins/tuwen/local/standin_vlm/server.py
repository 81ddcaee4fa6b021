"""The stand-in's HTTP server: vLLM's OpenAI-compatible endpoints plus /stand-in/ controls (see the package doc)."""


from __future__ import annotations

import asyncio
import binascii
import contextlib
import hashlib
import json
import random
import signal
import socket
import struct
import sys
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pybase64
from aiohttp import ClientError, ClientSession, ClientTimeout, web

from tuwen.local.standin_vlm.answers import (
    FEATURE_CACHE_SIZE,
    MAX_MODEL_LEN,
    QWEN_MAX_PIXELS,
    QWEN_MIN_PIXELS,
    REFUSAL,
    ImageFeatures,
    OcrReader,
    analyse_image,
    compose_answer,
    detect_task,
    image_token_count,
)
from tuwen.local.standin_vlm.faults import (
    HOSTILE_FAULTS,
    FaultConfig,
    FaultPlan,
    StandinConfigError,
    hostile_answer,
    malformed,
    truncate_mid_sentence,
)
from tuwen.local.standin_vlm.judging import (
    contradicted_only,
    draw_injection,
    judge_language,
    judge_sample,
    plan_injection,
    render_judgement,
    unlabelled,
)
from tuwen.local.standin_vlm.serving import ServingModel, ServingPreset, output_length

DEFAULT_MODEL = "tuwen-standin-vlm"
OWNED_BY = "tuwen-stand-in"
SYSTEM_FINGERPRINT = "tuwen-stand-in"
READY_LINE_PREFIX = "tuwen stand-in VLM (a test double of vLLM's API, not a model) listening on"

IMAGE_FETCH_TIMEOUT_S = 10.0
MAX_IMAGE_BYTES = 32 * 1024 * 1024
# Injected contradictions remembered for GET /stand-in/injections (a test reads them back): the
# newest this many, so a long demo cannot grow the list without bound.
MAX_INJECTION_RECORDS = 10_000


# --------------------------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------------------------


class RequestError(Exception):
    """Becomes a vLLM-shaped error response."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """vLLM's ErrorResponse: {"error": {"message", "type", "param", "code"}} with code the HTTP status."""
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "Error"),
            "param": param,
            "code": status,
        }
    }


def error_response(
    status: int, message: str, param: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(error_body(status, message, param), status=status, headers=headers)


@dataclass
class StandinStats:
    """Counters behind GET /stand-in/stats."""

    requests: int = 0
    ok: int = 0
    errors: Counter[str] = field(
        default_factory=Counter
    )  # "400", "404", "429", "500", "503", "reset", "cancelled"
    faults_injected: Counter[str] = field(default_factory=Counter)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    by_image: Counter[str] = field(default_factory=Counter)  # sha256 of image bytes -> chat requests
    in_flight: int = 0
    max_in_flight: int = 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("errors", "faults_injected", "finish_reasons", "by_image"):
            data[key] = dict(getattr(self, key))
        return data


@dataclass
class ParsedRequest:
    prompt: str
    image_url: str | None
    max_tokens: int | None
    mm_processor_kwargs: Mapping[str, Any]
    # response_format's type ("json_schema", "json_object", "text") or None: a judge request with a
    # JSON one gets JSON, as vLLM's guided decoding would give; without one, plain text.
    response_format: str | None = None


def parse_chat_request(body: Any, served_model: str) -> ParsedRequest:
    """Validate the parts of a chat completion request the stand-in reads; raises RequestError."""
    if not isinstance(body, dict):
        raise RequestError(400, "Request body must be a JSON object.")
    model = body.get("model")
    if model is not None and model != served_model:
        raise RequestError(404, f"The model `{model}` does not exist.", "model")
    if body.get("stream"):
        raise RequestError(
            400, "The tuwen stand-in does not implement streaming; send stream=false.", "stream"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "`messages` must be a non-empty list.", "messages")
    texts: list[str] = []
    image_urls: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in {
            "system",
            "user",
            "assistant",
            "developer",
        }:
            raise RequestError(
                400, f"messages[{i}] must be an object with a role of system, user or assistant.", "messages"
            )
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list):
            raise RequestError(
                400, f"messages[{i}].content must be a string or a list of content parts.", "messages"
            )
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif (
                kind == "image_url"
                and isinstance(part.get("image_url"), dict)
                and isinstance(part["image_url"].get("url"), str)
            ):
                image_urls.append(part["image_url"]["url"])
            else:
                raise RequestError(
                    400,
                    f"messages[{i}].content[{j}] is not a valid text or image_url content part.",
                    "messages",
                )
    if len(image_urls) > 1:
        raise RequestError(
            400, f"At most 1 image(s) may be provided in one prompt; got {len(image_urls)}.", "messages"
        )
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise RequestError(400, "max_tokens must be a positive integer.", "max_tokens")
    mm_kwargs = body.get("mm_processor_kwargs") or {}
    if not isinstance(mm_kwargs, dict):
        raise RequestError(400, "mm_processor_kwargs must be an object.", "mm_processor_kwargs")
    response_format = body.get("response_format")
    if response_format is not None and not (
        isinstance(response_format, dict) and isinstance(response_format.get("type"), str)
    ):
        raise RequestError(400, "response_format must be an object with a type.", "response_format")
    return ParsedRequest(
        "\n".join(texts),
        image_urls[0] if image_urls else None,
        max_tokens,
        mm_kwargs,
        response_format["type"] if response_format is not None else None,
    )


def decode_data_url(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise RequestError(400, "Image data URLs must look like data:image/<type>;base64,<data>.", "messages")
    try:
        # vLLM decodes a data URL the same way (pybase64, validated): 1.1 ms -> 13 us for a 300 KB image.
        return pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "Image data URL is not valid base64.", "messages") from None


def check_contradiction_rate(rate: float) -> None:
    if not (isinstance(rate, int | float) and 0.0 <= rate <= 1.0):
        raise StandinConfigError(f"contradiction rate must be in [0, 1], got {rate!r}")


def reset_connection(request: web.Request) -> None:
    """Drop the TCP connection with an RST and no HTTP response, as a crashed or overloaded peer would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER on with a zero timeout makes close() send RST instead of FIN.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class StandinServer:
    """The aiohttp application and its state: served model name, fault plan, counters, caches."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        faults: FaultConfig | None = None,
        ocr: bool = False,
        contradiction_rate: float = 0.0,
    ) -> None:
        check_contradiction_rate(contradiction_rate)
        self.model = model
        self.contradiction_rate = contradiction_rate
        # request key -> {"statement", "kind", ...}: what was injected (test-only ground truth).
        self.injections: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.plan = FaultPlan(faults or FaultConfig())
        self.stats = StandinStats()
        self.ocr_enabled = ocr
        self.serving: ServingModel | None = None  # set by enable_serving: see serving.py
        self._ocr: OcrReader | None = None
        self._features: OrderedDict[str, ImageFeatures] = OrderedDict()
        self._http: ClientSession | None = None
        self.started = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_IMAGE_BYTES * 2)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/stand-in/faults", self.get_faults)
        app.router.add_post("/stand-in/faults", self.set_faults)
        app.router.add_get("/stand-in/stats", self.get_stats)
        app.router.add_post("/stand-in/stats/reset", self.reset_stats)
        app.router.add_get("/stand-in/injections", self.get_injections)
        app.router.add_post("/stand-in/injections/reset", self.reset_injections)
        app.router.add_post("/stand-in/contradictions", self.set_contradictions)
        app.on_startup.append(self._on_startup)
        if self.serving is not None:
            self.serving.add_routes(app)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self._http = ClientSession(timeout=ClientTimeout(total=IMAGE_FETCH_TIMEOUT_S))
        if self.ocr_enabled:
            try:
                self._ocr = await asyncio.to_thread(OcrReader)
            except ImportError:
                print(
                    "stand-in: --ocr requested but rapidocr_onnxruntime is not importable; OCR stays off",
                    file=sys.stderr,
                )

    async def _on_cleanup(self, _app: web.Application) -> None:
        if self._http is not None:
            await self._http.close()

    def enable_serving(self, preset: ServingPreset) -> None:
        """Answer through the emulated continuous-batching engine (serving.py) instead of after a fixed latency."""
        self.serving = ServingModel(preset, self.model)

    async def _serve(
        self, task: str, request_key: str, max_tokens: int | None, prompt_tokens: int, finish_reason: str
    ) -> int:
        """Run the request as one sequence of the emulated engine; returns the tokens it emitted."""
        assert self.serving is not None
        if finish_reason == "length" and max_tokens is not None:
            emitted = max_tokens  # the text was cut at max_tokens: the engine ran to the limit
        else:
            emitted = output_length(self.serving.preset, task, request_key)
            if max_tokens is not None:
                emitted = min(emitted, max_tokens)
        await self.serving.generate(prompt_tokens, emitted, finish_reason)
        return emitted

    # -- plain endpoints -------------------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(self, _request: web.Request) -> web.Response:
        card = {
            "id": self.model,
            "object": "model",
            "created": self.started,
            "owned_by": OWNED_BY,
            "root": self.model,
            "parent": None,
            "max_model_len": MAX_MODEL_LEN,
            "permission": [],
        }
        return web.json_response({"object": "list", "data": [card]})

    async def get_faults(self, _request: web.Request) -> web.Response:
        return web.json_response(self.plan.config.to_json())

    async def set_faults(self, request: web.Request) -> web.Response:
        try:
            config = FaultConfig.from_json(await request.json())
        except (json.JSONDecodeError, StandinConfigError) as exc:
            return error_response(400, str(exc))
        self.plan = FaultPlan(config)
        return web.json_response(config.to_json())

    async def get_stats(self, _request: web.Request) -> web.Response:
        return web.json_response(self.stats.to_json())

    async def reset_stats(self, _request: web.Request) -> web.Response:
        in_flight = self.stats.in_flight
        self.stats = StandinStats(in_flight=in_flight, max_in_flight=in_flight)
        return web.json_response(self.stats.to_json())

    # -- injected contradictions (test-only ground truth) ----------------------------------
    async def get_injections(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"contradiction_rate": self.contradiction_rate, "injections": list(self.injections.values())}
        )

    async def reset_injections(self, _request: web.Request) -> web.Response:
        self.injections.clear()
        return web.json_response({"contradiction_rate": self.contradiction_rate, "injections": []})

    async def set_contradictions(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            rate = body["rate"] if isinstance(body, dict) else None
            if not isinstance(rate, int | float) or isinstance(rate, bool):
                raise StandinConfigError(f"rate must be a number, got {rate!r}")
            check_contradiction_rate(float(rate))
        except (json.JSONDecodeError, KeyError, StandinConfigError) as exc:
            return error_response(400, f"expected {{\"rate\": R}} with 0 <= R <= 1: {exc}")
        self.contradiction_rate = float(rate)
        return web.json_response({"contradiction_rate": self.contradiction_rate})

    def _record_injection(self, request_key: str, record: dict[str, Any]) -> None:
        self.injections[request_key] = record
        self.injections.move_to_end(request_key)
        if len(self.injections) > MAX_INJECTION_RECORDS:
            self.injections.popitem(last=False)

    # -- chat completions ------------------------------------------------------------------
    async def load_image(self, url: str) -> bytes:
        if url.startswith("data:"):
            return decode_data_url(url)
        if not url.startswith(("http://", "https://")):
            raise RequestError(
                400, "Image URLs must be data:image/...;base64 URLs or http(s) URLs.", "messages"
            )
        assert self._http is not None
        try:
            async with self._http.get(url) as response:
                if response.status != 200:
                    raise RequestError(
                        400, f"Failed to fetch image from {url}: HTTP {response.status}.", "messages"
                    )
                data = await response.content.read(MAX_IMAGE_BYTES + 1)
        except (ClientError, TimeoutError) as exc:
            raise RequestError(400, f"Failed to fetch image from {url}: {exc!r}.", "messages") from None
        if len(data) > MAX_IMAGE_BYTES:
            raise RequestError(400, f"Image at {url} is larger than {MAX_IMAGE_BYTES} bytes.", "messages")
        return data

    async def features_of(self, data: bytes, sha256: str) -> ImageFeatures:
        cached = self._features.get(sha256)
        if cached is None:
            try:
                # In a worker thread: a PNG has no draft mode and takes tens of ms to decode, which would
                # stall every other request's timers if it ran on the event loop.
                cached = await asyncio.to_thread(analyse_image, data, sha256)
            except ValueError as exc:
                raise RequestError(400, f"Failed to load image: {exc}", "messages") from None
            if self._ocr is not None:
                text = await self._ocr.read(data, sha256)
                cached = ImageFeatures(**{**asdict(cached), "text": text})
            self._features[sha256] = cached
            if len(self._features) > FEATURE_CACHE_SIZE:
                self._features.popitem(last=False)
        else:
            self._features.move_to_end(sha256)
        return cached

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            return await self._chat_completion(request, stats, arrived=time.monotonic())
        except RequestError as exc:
            stats.errors[str(exc.status)] += 1
            return error_response(exc.status, exc.message, exc.param)
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the client hangs up (e.g. a client timeout during a hang).
            stats.errors["cancelled"] += 1
            raise
        finally:
            stats.in_flight -= 1

    async def _chat_completion(
        self, request: web.Request, stats: StandinStats, arrived: float
    ) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(400, "Request body is not valid JSON.") from None
        parsed = parse_chat_request(body, self.model)
        image_bytes = b""
        image_sha: str | None = None
        features: ImageFeatures | None = None
        if parsed.image_url is not None:
            image_bytes = await self.load_image(parsed.image_url)
            image_sha = hashlib.sha256(image_bytes).hexdigest()
            features = await self.features_of(image_bytes, image_sha)
            stats.by_image[image_sha] += 1
        request_key = hashlib.sha256(image_bytes + b"\0" + parsed.prompt.encode()).hexdigest()
        fault, latency = self.plan.choose(request_key, image_sha)
        config = self.plan.config
        if fault is not None:
            stats.faults_injected[fault] += 1
        # An overloaded server sheds load at once, before doing any work.
        if fault in {"429", "503"}:
            stats.errors[fault] += 1
            headers = {"Retry-After": str(config.retry_after_s)} if fault == "429" else None
            message = (
                "Too many requests (stand-in fault injection)."
                if fault == "429"
                else "Service unavailable (stand-in fault injection)."
            )
            return error_response(int(fault), message, headers=headers)
        # Latency counts from arrival, so decoding time is part of it, as it is on a real server.
        # With the serving model on, it decides the timing instead (after the answer is written, below).
        if self.serving is None and (remaining := latency - (time.monotonic() - arrived)) > 0:
            await asyncio.sleep(remaining)
        if fault == "timeout":
            await asyncio.sleep(config.hang_s)
        if fault == "500":
            stats.errors["500"] += 1
            return error_response(500, "Internal server error (stand-in fault injection).")
        if fault == "reset":
            stats.errors["reset"] += 1
            reset_connection(request)
            # The handler must still return something; aiohttp discards it because the transport is gone.
            return web.Response(status=500)

        rng = random.Random(request_key)
        injection = None
        if (judged_in := judge_language(parsed.prompt)) is not None:
            # A faithfulness-judge request: labels from re-measuring the image, never from the record
            # of what was injected (see judging.py: this exercises the judge's plumbing only).
            task, language = "judge", judged_in
            if features is None:
                content = compose_answer(task, language, None, rng)
            else:
                as_json = parsed.response_format in {"json_schema", "json_object"}
                content = render_judgement(judge_sample(parsed.prompt, language, features), language, as_json,
                                           contradicted_only(parsed.prompt))
        else:
            task, language = detect_task(parsed.prompt)
            extra_rng = draw_injection(request_key, self.contradiction_rate) if features is not None else None
            if extra_rng is not None and features is not None:
                injection = plan_injection(features, language, extra_rng)
            content = compose_answer(
                task, language, features, rng, injection.statement if injection else None, extra_rng
            )
        finish_reason = "stop"
        if fault == "refusal":
            content = REFUSAL[language]
        elif fault == "malformed":
            content = unlabelled(content) if task == "judge" else malformed(content, task)
        elif fault == "truncated":
            content, finish_reason = truncate_mid_sentence(content, rng), "length"
        # One token per character: the stand-in's cheap, documented stand-in for a tokenizer.
        if parsed.max_tokens is not None and len(content) > parsed.max_tokens:
            content, finish_reason = content[: parsed.max_tokens], "length"
        if fault in HOSTILE_FAULTS:
            content = hostile_answer(fault, content)  # a misbehaving server ignores max_tokens too
        if injection is not None and injection.statement in content:
            # Only what the client really received counts: a refusal or a cut may have dropped it.
            self._record_injection(
                request_key,
                {"statement": injection.statement, "kind": injection.kind, "task": task,
                 "language": language, "image_sha256": image_sha},
            )
        image_tokens = 0
        if features is not None:
            kwargs = parsed.mm_processor_kwargs
            image_tokens = image_token_count(
                features.width,
                features.height,
                int(kwargs.get("min_pixels", QWEN_MIN_PIXELS)),
                int(kwargs.get("max_pixels", QWEN_MAX_PIXELS)),
            )
        prompt_tokens = len(parsed.prompt) + image_tokens
        completion_tokens = len(content)
        if self.serving is not None:
            completion_tokens = await self._serve(
                task, request_key, parsed.max_tokens, prompt_tokens, finish_reason
            )
        stats.ok += 1
        stats.finish_reasons[finish_reason] += 1
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "tool_calls": []},
                        "logprobs": None,
                        "finish_reason": finish_reason,
                        "stop_reason": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    "prompt_tokens_details": None,
                },
            },
            # A lone surrogate has no UTF-8 form: a server sends it as a \\u escape, valid JSON.
            dumps=lambda obj: json.dumps(obj, ensure_ascii=fault == "surrogate"),
        )


async def run_server(
    host: str = "127.0.0.1",
    port: int = 8000,
    model: str = DEFAULT_MODEL,
    faults: FaultConfig | None = None,
    ocr: bool = False,
    stop: asyncio.Event | None = None,
    serving: ServingPreset | None = None,
    contradiction_rate: float = 0.0,
) -> None:
    """Serve until `stop` is set (or SIGINT/SIGTERM); prints one line saying where it listens."""
    server = StandinServer(model=model, faults=faults, ocr=ocr, contradiction_rate=contradiction_rate)
    if serving is not None:
        server.enable_serving(serving)
    # handler_cancellation: a client that gives up on a hung request frees its handler at once.
    runner = web.AppRunner(server.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    # 1024-deep backlog: a benchmark opens 128+ connections in the same instant.
    site = web.TCPSite(runner, host, port, backlog=1024, shutdown_timeout=1.0)
    await site.start()
    bound_port = runner.addresses[0][1]
    print(
        f"{READY_LINE_PREFIX} http://{host}:{bound_port}/v1 (model {model!r}, faults {json.dumps(server.plan.config.to_json())}, "
        f"contradiction rate {server.contradiction_rate:g})",
        flush=True,
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    model: str = DEFAULT_MODEL,
    faults: FaultConfig | None = None,
    ocr: bool = False,
    contradiction_rate: float = 0.0,
    serving: ServingPreset | None = None,
) -> None:
    """Run the stand-in in the foreground (blocking) until SIGINT/SIGTERM. Port 0 picks a free port."""
    try:
        import uvloop  # optional: a faster event loop when installed (it is, via uvicorn)

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run_server(host, port, model, faults, ocr, contradiction_rate=contradiction_rate, serving=serving))

