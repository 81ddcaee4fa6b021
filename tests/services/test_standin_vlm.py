"""The stand-in VLM server, run as a real subprocess and called over HTTP like vLLM would be."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import matplotlib
import openai
import pytest
from PIL import Image, ImageDraw, ImageFont

from tuwen.local.standin_vlm import (
    DEFAULT_MODEL,
    HOSTILE_FAULTS,
    REFUSAL,
    FaultConfig,
    LatencySpec,
    StandinConfigError,
    StandinProcess,
    image_token_count,
    parse_fault_rates,
)

CONVERSATION_ZH = (
    "设计一个你和一个询问这张照片的人之间的对话。答案应该是视觉AI助手看到图像并回答问题的语气。\n"
    "以 用户:...\\n\\n助手:...\\n\\n用户:...\\n\\n助手:...\\n\\n 的格式返回。"
)
REASONING_ZH = "设计一个关于这张照片的问题,并提供详细的答案。必须是除了描述场景以外的复杂问题。\n以 问题:...\\n\\n回答:...\\n\\n 的格式返回。"
DETAIL_ZH = "详细描述这张照片的场景。包括对象计数、对象位置、对象之间的相对位置等详细信息。"
CONVERSATION_EN = "Design a conversation between you and a person asking about this photo. Return in the format: User: ...\nAssistant: ..."
REASONING_EN = "Design a question about this photo and provide a detailed answer. Return in the format: Question: ...\nAnswer: ..."
DETAIL_EN = "Describe the scene in this photo in detail. Include detailed information such as object counts."


def make_image(
    top: tuple[int, int, int],
    bottom: tuple[int, int, int],
    size: tuple[int, int] = (640, 480),
    fmt: str = "JPEG",
) -> bytes:
    image = Image.new("RGB", size, bottom)
    ImageDraw.Draw(image).rectangle([0, 0, size[0], size[1] // 2], fill=top)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


SKY_OVER_RED = make_image((70, 130, 230), (200, 30, 30))
GRASS_UNDER_WHITE = make_image((250, 250, 250), (40, 160, 60), size=(480, 800), fmt="PNG")


def data_url(image: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


def user_message(prompt: str, *image_urls: str) -> list[dict]:
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    parts.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": parts}]


def chat(client: openai.OpenAI, prompt: str, image: bytes = SKY_OVER_RED, **kwargs):
    return client.chat.completions.create(
        model=DEFAULT_MODEL, messages=user_message(prompt, data_url(image)), **kwargs
    )


def raw_chat(vlm: StandinProcess, body: object, timeout: float = 10.0) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{vlm.base_url}/chat/completions",
        content=content,
        headers={"Content-Type": "application/json"},
        timeout=timeout,
    )


def assert_vllm_error(response: httpx.Response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == error_type
    assert body["error"]["code"] == status
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture(scope="module")
def vlm() -> Iterator[StandinProcess]:
    with StandinProcess() as process:
        yield process


@pytest.fixture(scope="module")
def client(vlm: StandinProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=vlm.base_url, api_key="EMPTY", max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def faulty_server() -> Iterator[StandinProcess]:
    with StandinProcess() as process:
        yield process


@pytest.fixture
def faulty(faulty_server: StandinProcess) -> Iterator[StandinProcess]:
    """A server whose faults each test sets; stats start at zero and faults are cleared afterwards."""
    faulty_server.reset_stats()
    yield faulty_server
    faulty_server.set_faults()


@pytest.fixture
def faulty_client(faulty: StandinProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=faulty.base_url, api_key="EMPTY", max_retries=0, timeout=30) as c:
        yield c


# --- plain API ------------------------------------------------------------------------------


def test_health_is_200_with_an_empty_body(vlm: StandinProcess) -> None:
    response = httpx.get(f"{vlm.root_url}/health")
    assert response.status_code == 200
    assert response.content == b""


def test_models_lists_the_served_name_owned_by_the_stand_in(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [DEFAULT_MODEL]
    assert models[0].owned_by == "tuwen-stand-in"


def test_served_model_name_is_settable() -> None:
    with StandinProcess(model="Qwen/Qwen2.5-VL-32B-Instruct") as process:
        body = httpx.get(f"{process.base_url}/models").json()
        assert [m["id"] for m in body["data"]] == ["Qwen/Qwen2.5-VL-32B-Instruct"]
        # Even under a real model's name it says what it is.
        assert body["data"][0]["owned_by"] == "tuwen-stand-in"


def test_cli_help_says_it_is_a_stand_in_not_a_model() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tuwen.local.standin_vlm", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "STAND-IN for vLLM's OpenAI-compatible server" in result.stdout
    assert "NOT a model" in result.stdout
    for flag in ("--latency", "--fault-rates", "--fault-seed", "--ocr", "--model", "--port"):
        assert flag in result.stdout


def test_stand_in_process_stops_its_server() -> None:
    process = StandinProcess().start()
    url = process.root_url
    process.stop()
    assert process.pid is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)


# --- answers ----------------------------------------------------------------------------------


def conversation_rounds(content: str, user: str, assistant: str) -> list[tuple[str, str]]:
    blocks = content.split("\n\n")
    assert len(blocks) % 2 == 0, content
    rounds = []
    for question, answer in zip(blocks[::2], blocks[1::2], strict=True):
        assert question.startswith(user), content
        assert answer.startswith(assistant), content
        rounds.append((question.removeprefix(user), answer.removeprefix(assistant)))
    return rounds


@pytest.mark.parametrize(
    ("prompt", "user", "assistant"),
    [(CONVERSATION_ZH, "用户:", "助手:"), (CONVERSATION_EN, "User: ", "Assistant: ")],
)
def test_conversation_prompt_gets_3_to_5_rounds_without_repeated_questions(
    client: openai.OpenAI, prompt: str, user: str, assistant: str
) -> None:
    for image in (SKY_OVER_RED, GRASS_UNDER_WHITE, make_image((20, 20, 20), (230, 200, 40))):
        response = chat(client, prompt, image)
        rounds = conversation_rounds(response.choices[0].message.content, user, assistant)
        assert 3 <= len(rounds) <= 5
        questions = [q for q, _ in rounds]
        assert len(set(questions)) == len(questions)
        assert all(q.strip() and a.strip() for q, a in rounds)
        assert response.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("prompt", "question", "answer"),
    [(REASONING_ZH, "问题:", "回答:"), (REASONING_EN, "Question: ", "Answer: ")],
)
def test_reasoning_prompt_gets_one_question_and_answer(
    client: openai.OpenAI, prompt: str, question: str, answer: str
) -> None:
    content = chat(client, prompt).choices[0].message.content
    match = re.fullmatch(rf"{re.escape(question)}(.+?)\n\n{re.escape(answer)}(.+)", content, flags=re.S)
    assert match, content
    assert len(match.group(2)) > 80  # a detailed answer, not a one-liner
    assert question not in match.group(2)


def test_detail_prompt_gets_a_multi_sentence_chinese_description(client: openai.OpenAI) -> None:
    content = chat(client, DETAIL_ZH).choices[0].message.content
    assert content.count("。") >= 4
    assert not re.search(r"用户:|助手:|问题:|回答:", content)
    # Grounded in what can be measured: size, the blue top half and the red bottom half.
    assert "640×480" in content
    assert "蓝色" in content
    assert "红色" in content


def test_detail_prompt_in_english_gets_an_english_description(client: openai.OpenAI) -> None:
    content = chat(client, DETAIL_EN, GRASS_UNDER_WHITE).choices[0].message.content
    assert not re.search(r"[\u4e00-\u9fff]", content)
    assert re.search(r"480(×| by )800", content)
    assert "portrait" in content
    assert "green" in content
    assert content.count(". ") >= 4


def test_same_image_and_prompt_give_the_same_text(client: openai.OpenAI) -> None:
    first = chat(client, CONVERSATION_ZH).choices[0].message.content
    second = chat(client, CONVERSATION_ZH, temperature=1.0, seed=99).choices[0].message.content
    assert first == second


def test_different_images_give_different_text(client: openai.OpenAI) -> None:
    rng = random.Random(5)
    images = [
        make_image(tuple(rng.randrange(256) for _ in range(3)), tuple(rng.randrange(256) for _ in range(3)))
        for _ in range(6)
    ]
    for prompt in (CONVERSATION_ZH, REASONING_ZH, DETAIL_ZH):
        answers = {chat(client, prompt, image).choices[0].message.content for image in images}
        assert len(answers) == len(images), prompt


def test_response_has_the_openai_shape_and_usage(client: openai.OpenAI, vlm: StandinProcess) -> None:
    response = chat(client, DETAIL_ZH)
    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    assert response.model == DEFAULT_MODEL
    assert response.system_fingerprint == "tuwen-stand-in"
    assert response.choices[0].message.role == "assistant"
    content = response.choices[0].message.content
    # 640x480 -> Qwen2.5-VL's 644x476 grid -> 23 x 17 patches.
    assert image_token_count(640, 480) == 23 * 17
    assert response.usage.prompt_tokens == len(DETAIL_ZH) + 23 * 17
    assert response.usage.completion_tokens == len(content)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_extra_vllm_fields_are_accepted_and_mm_processor_kwargs_set_the_image_budget(
    client: openai.OpenAI,
) -> None:
    big = make_image((10, 10, 10), (240, 240, 240), size=(2000, 1500))
    default = chat(client, DETAIL_ZH, big)
    budget = 256 * 28 * 28
    capped = chat(
        client,
        DETAIL_ZH,
        big,
        top_p=0.9,
        temperature=0.7,
        seed=1234,
        max_tokens=4096,
        extra_body={"mm_processor_kwargs": {"max_pixels": budget, "min_pixels": 3136}, "top_k": 20},
    )
    assert default.usage.prompt_tokens - len(DETAIL_ZH) == image_token_count(2000, 1500)
    assert capped.usage.prompt_tokens - len(DETAIL_ZH) == image_token_count(2000, 1500, 3136, budget)
    assert capped.usage.prompt_tokens - len(DETAIL_ZH) <= 256
    assert capped.choices[0].message.content == default.choices[0].message.content


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client: openai.OpenAI) -> None:
    full = chat(client, CONVERSATION_ZH).choices[0].message.content
    cut = chat(client, CONVERSATION_ZH, max_tokens=40)
    assert cut.choices[0].finish_reason == "length"
    assert cut.choices[0].message.content == full[:40]
    assert cut.usage.completion_tokens == 40


class _ImageHandler(BaseHTTPRequestHandler):
    images: dict[str, bytes] = {}

    def do_GET(self) -> None:
        image = self.images.get(self.path)
        self.send_response(200 if image else 404)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(image or b"")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def image_site() -> Iterator[str]:
    _ImageHandler.images = {"/grass.png": GRASS_UNDER_WHITE}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_image_urls_are_fetched(client: openai.OpenAI, vlm: StandinProcess, image_site: str) -> None:
    by_url = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=user_message(DETAIL_ZH, f"{image_site}/grass.png")
    )
    by_data = chat(client, DETAIL_ZH, GRASS_UNDER_WHITE)
    assert by_url.choices[0].message.content == by_data.choices[0].message.content
    missing = raw_chat(vlm, {"messages": user_message(DETAIL_ZH, f"{image_site}/missing.png")})
    assert "HTTP 404" in assert_vllm_error(missing, 400, "BadRequestError")["message"]


# --- request errors ---------------------------------------------------------------------------


def test_unknown_model_is_a_404_with_vllms_error_body(client: openai.OpenAI, vlm: StandinProcess) -> None:
    response = raw_chat(vlm, {"model": "gpt-4o", "messages": user_message(DETAIL_ZH, data_url(SKY_OVER_RED))})
    error = assert_vllm_error(response, 404, "NotFoundError")
    assert error["message"] == "The model `gpt-4o` does not exist."
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="gpt-4o", messages=user_message(DETAIL_ZH, data_url(SKY_OVER_RED))
        )


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="bad-json"),
        pytest.param({"model": DEFAULT_MODEL}, id="no-messages"),
        pytest.param({"messages": []}, id="empty-messages"),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "video", "video": "x"}]}]}, id="bad-part"
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
            id="bad-image-part",
        ),
        pytest.param(
            {"messages": user_message(DETAIL_ZH, data_url(SKY_OVER_RED), data_url(GRASS_UNDER_WHITE))},
            id="two-images",
        ),
        pytest.param(
            {"messages": user_message(DETAIL_ZH, data_url(b"this is not an image"))}, id="undecodable-image"
        ),
        pytest.param(
            {"messages": user_message(DETAIL_ZH, data_url(SKY_OVER_RED[:200]))}, id="truncated-image"
        ),
        pytest.param({"messages": user_message(DETAIL_ZH, "data:image/jpeg;base64,@@@@")}, id="bad-base64"),
        pytest.param({"messages": user_message(DETAIL_ZH, "file:///etc/passwd")}, id="file-url"),
        pytest.param({"messages": user_message(DETAIL_ZH), "max_tokens": 0}, id="zero-max-tokens"),
        pytest.param({"messages": user_message(DETAIL_ZH), "stream": True}, id="stream"),
    ],
)
def test_malformed_requests_are_400s_with_vllms_error_body(vlm: StandinProcess, body: object) -> None:
    assert_vllm_error(raw_chat(vlm, body), 400, "BadRequestError")


def test_two_images_error_names_the_per_prompt_limit(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match=r"At most 1 image\(s\)"):
        client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=user_message(DETAIL_ZH, data_url(SKY_OVER_RED), data_url(GRASS_UNDER_WHITE)),
        )


# --- faults -----------------------------------------------------------------------------------


def test_http_500_fault(faulty: StandinProcess, faulty_client: openai.OpenAI) -> None:
    faulty.set_faults(fault_rates={"500": 1.0})
    with pytest.raises(openai.InternalServerError) as raised:
        chat(faulty_client, DETAIL_ZH)
    assert raised.value.status_code == 500
    assert raised.value.body["code"] == 500  # the openai client unwraps {"error": ...}
    stats = faulty.stats()
    assert stats["errors"] == {"500": 1}
    assert stats["faults_injected"] == {"500": 1}
    assert stats["ok"] == 0


def test_http_503_fault(faulty: StandinProcess, faulty_client: openai.OpenAI) -> None:
    faulty.set_faults(fault_rates={"503": 1.0})
    with pytest.raises(openai.APIStatusError) as raised:
        chat(faulty_client, DETAIL_ZH)
    assert raised.value.status_code == 503
    assert faulty.stats()["errors"] == {"503": 1}


def test_http_429_fault_carries_retry_after(faulty: StandinProcess, faulty_client: openai.OpenAI) -> None:
    faulty.set_faults(fault_rates={"429": 1.0}, retry_after_s=7)
    with pytest.raises(openai.RateLimitError) as raised:
        chat(faulty_client, DETAIL_ZH)
    assert raised.value.response.headers["retry-after"] == "7"
    assert faulty.stats()["errors"] == {"429": 1}


def test_connection_reset_fault_sends_rst_and_no_response(
    faulty: StandinProcess, faulty_client: openai.OpenAI
) -> None:
    faulty.set_faults(fault_rates={"reset": 1.0})
    with pytest.raises(openai.APIConnectionError):
        chat(faulty_client, DETAIL_ZH)
    body = json.dumps({"messages": user_message(DETAIL_ZH, data_url(SKY_OVER_RED))}).encode()
    with socket.create_connection(("127.0.0.1", faulty.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: stand-in\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        # An RST, not an orderly close: recv raises instead of returning b"".
        with pytest.raises(ConnectionResetError):
            sock.recv(1024)
    assert faulty.stats()["errors"] == {"reset": 2}


def test_timeout_fault_hangs_until_the_client_gives_up(faulty: StandinProcess) -> None:
    faulty.set_faults(fault_rates={"timeout": 1.0}, hang_s=20)
    with openai.OpenAI(base_url=faulty.base_url, api_key="EMPTY", max_retries=0, timeout=0.5) as impatient:
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            chat(impatient, DETAIL_ZH)
        assert time.monotonic() - started < 5
    # The server notices the hang-up and frees the handler instead of sleeping on.
    deadline = time.monotonic() + 5
    while faulty.stats()["errors"].get("cancelled") != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = faulty.stats()
    assert stats["errors"] == {"cancelled": 1}
    assert stats["in_flight"] == 0


def test_timeout_fault_answers_after_the_hang(faulty: StandinProcess, faulty_client: openai.OpenAI) -> None:
    faulty.set_faults(fault_rates={"timeout": 1.0}, hang_s=1.0)
    started = time.monotonic()
    response = chat(faulty_client, DETAIL_ZH)
    assert time.monotonic() - started >= 1.0
    assert response.choices[0].finish_reason == "stop"


def test_truncated_fault_cuts_mid_sentence(faulty: StandinProcess, faulty_client: openai.OpenAI) -> None:
    full = chat(faulty_client, DETAIL_ZH).choices[0].message.content
    faulty.set_faults(fault_rates={"truncated": 1.0})
    response = chat(faulty_client, DETAIL_ZH)
    content = response.choices[0].message.content
    assert response.choices[0].finish_reason == "length"
    assert full.startswith(content)
    assert 0 < len(content) < len(full)
    assert content[-1] not in "。！？.!?"


def test_malformed_fault_drops_the_markers(faulty: StandinProcess, faulty_client: openai.OpenAI) -> None:
    faulty.set_faults(fault_rates={"malformed": 1.0})
    conversation = chat(faulty_client, CONVERSATION_ZH).choices[0].message.content
    assert conversation
    assert not re.search(r"用户[:：]|助手[:：]", conversation)
    reasoning = chat(faulty_client, REASONING_EN).choices[0].message.content
    assert not re.search(r"Question:|Answer:", reasoning)
    description = chat(faulty_client, DETAIL_ZH).choices[0].message.content
    assert set(json.loads(description)) == {"description"}
    assert faulty.stats()["faults_injected"] == {"malformed": 3}


def test_refusal_fault(faulty: StandinProcess, faulty_client: openai.OpenAI) -> None:
    faulty.set_faults(fault_rates={"refusal": 1.0})
    assert chat(faulty_client, CONVERSATION_ZH).choices[0].message.content == "抱歉，我无法查看这张图片。"
    assert chat(faulty_client, DETAIL_EN).choices[0].message.content == REFUSAL["en"]


def test_hostile_faults_send_what_a_misbehaving_server_sends(faulty: StandinProcess,
                                                             faulty_client: openai.OpenAI) -> None:
    answers = {}
    for kind in HOSTILE_FAULTS:
        faulty.set_faults(fault_rates={kind: 1.0})
        answers[kind] = chat(faulty_client, DETAIL_ZH, max_tokens=64).choices[0].message.content
    assert "\x00" in answers["nul"]
    assert "\udc80" in answers["surrogate"]  # sent as a JSON \\u escape, read back as a lone surrogate
    assert " " * 8000 + "x" in answers["blank_run"]
    assert len(answers["enormous"]) > 100_000  # max_tokens (64) ignored, as a misbehaving server does
    assert faulty.stats()["faults_injected"] == dict.fromkeys(HOSTILE_FAULTS, 1)


def test_a_fault_pinned_to_an_image_hits_that_image_only(faulty: StandinProcess,
                                                         faulty_client: openai.OpenAI) -> None:
    pinned = hashlib.sha256(SKY_OVER_RED).hexdigest()
    faulty.set_faults(image_faults={pinned: "refusal"})
    assert chat(faulty_client, DETAIL_ZH).choices[0].message.content == REFUSAL["zh"]
    assert chat(faulty_client, DETAIL_ZH, image=GRASS_UNDER_WHITE).choices[0].message.content != REFUSAL["zh"]
    with pytest.raises(httpx.HTTPStatusError):
        faulty.set_faults(image_faults={pinned: "gremlins"})


def test_fixed_latency(faulty: StandinProcess, faulty_client: openai.OpenAI) -> None:
    faulty.set_faults(latency="fixed:0.6")
    started = time.monotonic()
    chat(faulty_client, DETAIL_ZH)
    assert 0.6 <= time.monotonic() - started < 3.0


def test_fail_first_n_then_succeed(faulty: StandinProcess, faulty_client: openai.OpenAI) -> None:
    faulty.set_faults(fail_first=3, fail_first_kind="500")
    outcomes = []
    for _ in range(5):
        try:
            chat(faulty_client, DETAIL_ZH)
            outcomes.append("ok")
        except openai.InternalServerError:
            outcomes.append("500")
    assert outcomes == ["500", "500", "500", "ok", "ok"]
    stats = faulty.stats()
    assert (stats["requests"], stats["ok"], stats["errors"]) == (5, 2, {"500": 3})


def test_seeded_faults_repeat_exactly(faulty: StandinProcess, faulty_client: openai.OpenAI) -> None:
    images = [make_image((i * 20, 90, 200 - i * 15), (30, 30, i * 20)) for i in range(10)]

    def run() -> list[str]:
        faulty.set_faults(fault_rates={"500": 0.4, "truncated": 0.3}, fault_seed=7)
        outcomes = []
        for image in images * 2:  # each image twice: retries of a key draw afresh
            try:
                outcomes.append(chat(faulty_client, DETAIL_ZH, image).choices[0].finish_reason)
            except openai.InternalServerError:
                outcomes.append("500")
        return outcomes

    first, second = run(), run()
    assert first == second
    assert {"500", "length", "stop"} <= set(first)


def test_faults_from_the_command_line() -> None:
    with StandinProcess(fault_rates="503=1.0", latency="fixed:0.2") as process:
        faults = httpx.get(f"{process.root_url}/stand-in/faults").json()
        assert faults["fault_rates"] == {"503": 1.0}
        assert faults["latency"] == "fixed:0.2"
        response = raw_chat(process, {"messages": user_message(DETAIL_ZH, data_url(SKY_OVER_RED))})
        assert_vllm_error(response, 503, "ServiceUnavailableError")


def test_faults_endpoint_rejects_bad_config_and_keeps_the_old_one(faulty: StandinProcess) -> None:
    faulty.set_faults(fault_rates={"500": 0.25})
    for bad in (
        {"fault_rates": {"500": 0.8, "503": 0.5}},
        {"fault_rates": {"teapot": 0.1}},
        {"latency": "gamma:1"},
        {"bogus": 1},
    ):
        response = httpx.post(f"{faulty.root_url}/stand-in/faults", json=bad)
        assert_vllm_error(response, 400, "BadRequestError")
    assert httpx.get(f"{faulty.root_url}/stand-in/faults").json()["fault_rates"] == {"500": 0.25}


# --- stats ------------------------------------------------------------------------------------


def test_stats_count_requests_per_image_hash(faulty: StandinProcess, faulty_client: openai.OpenAI) -> None:
    for _ in range(3):
        chat(faulty_client, DETAIL_ZH, SKY_OVER_RED)
    chat(faulty_client, CONVERSATION_ZH, GRASS_UNDER_WHITE)
    raw_chat(faulty, {"model": "nope", "messages": user_message(DETAIL_ZH, data_url(SKY_OVER_RED))})
    stats = faulty.stats()
    assert stats["requests"] == 5
    assert stats["ok"] == 4
    assert stats["errors"] == {"404": 1}
    assert stats["finish_reasons"] == {"stop": 4}
    assert stats["by_image"] == {
        hashlib.sha256(SKY_OVER_RED).hexdigest(): 3,
        hashlib.sha256(GRASS_UNDER_WHITE).hexdigest(): 1,
    }
    reset = httpx.post(f"{faulty.root_url}/stand-in/stats/reset").json()
    assert (reset["requests"], reset["ok"], reset["by_image"]) == (0, 0, {})


# --- OCR ----------------------------------------------------------------------------------------


def test_ocr_text_is_quoted_in_descriptions() -> None:
    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans-Bold.ttf"), 72)
    image = Image.new("RGB", (640, 240), (255, 255, 255))
    ImageDraw.Draw(image).text((40, 80), "TUWEN 2024", font=font, fill=(0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    with (
        StandinProcess(ocr=True, startup_timeout_s=60) as process,
        openai.OpenAI(base_url=process.base_url, api_key="EMPTY", max_retries=0, timeout=120) as ocr_client,
    ):
        content = chat(ocr_client, DETAIL_ZH, buffer.getvalue()).choices[0].message.content
    assert "「TUWEN 2024」" in content


# --- in-process units -----------------------------------------------------------------------


def test_lognormal_latency_has_the_requested_median_and_p99() -> None:
    spec = LatencySpec.parse("lognormal:1.0,10.0")
    rng = random.Random(3)
    samples = sorted(spec.sample(rng) for _ in range(20_000))
    assert statistics.median(samples) == pytest.approx(1.0, rel=0.08)
    assert samples[int(0.99 * len(samples))] == pytest.approx(10.0, rel=0.2)
    assert str(spec) == "lognormal:1,10"


@pytest.mark.parametrize("spec", ["fixed:-1", "lognormal:2,1", "lognormal:1", "uniform:1", "fixed:abc"])
def test_bad_latency_specs_are_rejected(spec: str) -> None:
    with pytest.raises(StandinConfigError):
        LatencySpec.parse(spec)


def test_fault_rates_parse_and_validate() -> None:
    assert parse_fault_rates("500=0.1, 429=0.05,reset=0") == {"500": 0.1, "429": 0.05}
    with pytest.raises(StandinConfigError):
        parse_fault_rates("500=0.7,503=0.7")
    with pytest.raises(StandinConfigError):
        parse_fault_rates("500")
    config = FaultConfig.from_json({"latency": "fixed:1", "fault_rates": {"timeout": 0.5}, "fault_seed": 3})
    assert FaultConfig.from_json(config.to_json()) == config


# --- injected contradictions and judge requests (the faithfulness judge's plumbing, not a model's judgement) ---

JUDGE_PROMPTS = Path(__file__).resolve().parents[2] / "prompts" / "judge"
SYNTHESIS_PROMPTS = {
    "zh": {"conversation": CONVERSATION_ZH, "complex_reasoning": REASONING_ZH, "detail": DETAIL_ZH},
    "en": {"conversation": CONVERSATION_EN, "complex_reasoning": REASONING_EN, "detail": DETAIL_EN},
}
JUDGE_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "judgement", "schema": {"type": "object", "properties": {"statements": {"type": "array"}}}},
}


def judge_request_text(conversations: list[dict[str, str]], language: str) -> str:
    """The contract with tuwen.judge: the judge prompt with {sample} replaced by the rounds, 问：…\\n答：… (zh)
    or Q: …\\nA: … (en), one blank line between rounds."""
    from tuwen.synthesis.prompts import read_prompt_text

    q, a = ("问：", "答：") if language == "zh" else ("Q: ", "A: ")
    rounds = [f"{q}{human['value'].replace('<image>', '').strip()}\n{a}{gpt['value']}"
              for human, gpt in zip(conversations[::2], conversations[1::2], strict=True)]
    text = read_prompt_text(JUDGE_PROMPTS / f"faithfulness.{language}.v1.txt")[1]
    return text.replace("{sample}", "\n\n".join(rounds))


def fixture_images(n: int) -> list[bytes]:
    rng = random.Random(41)
    images = []
    for _ in range(n):
        image = Image.new("RGB", (rng.randint(240, 900), rng.randint(240, 900)),
                          tuple(rng.randrange(256) for _ in range(3)))
        for _ in range(4):
            x, y = rng.randrange(image.width), rng.randrange(image.height)
            image.paste(tuple(rng.randrange(256) for _ in range(3)),
                        (x, y, x + rng.randint(40, 300), y + rng.randint(40, 300)))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG")
        images.append(buffer.getvalue())
    return images


def synthesize_and_judge(client: openai.OpenAI, images: list[bytes], *, as_json: bool = True) -> list[dict]:
    """Each image × task × language: a synthesis request, parsed as tuwen parses it, then a judge request."""
    from tuwen.synthesis.parsing import parse_answer
    from tuwen.synthesis.prompts import description_instruction

    results = []
    for image in images:
        for language, prompts in SYNTHESIS_PROMPTS.items():
            for task, prompt in prompts.items():
                text = chat(client, prompt, image).choices[0].message.content
                sha = hashlib.sha256(image).hexdigest()
                instruction = description_instruction(sha, language) if task == "detail" else ""
                parsed = parse_answer(task, language, text, instruction)
                assert parsed.ok, (parsed.error, text)
                extra = {"response_format": JUDGE_SCHEMA} if as_json else {}
                response = chat(client, judge_request_text(parsed.conversations, language), image, **extra)
                results.append({"image_sha256": sha, "language": language, "task": task, "response": response})
    return results


def judged_statements(response, language: str, as_json: bool) -> list[dict[str, str]]:
    content = response.choices[0].message.content
    if as_json:
        return json.loads(content)["statements"]
    labels = {"支持": "supported", "矛盾": "contradicted", "无法确认": "unverifiable"} if language == "zh" else {
        label: label for label in ("supported", "contradicted", "unverifiable")}
    statements = []
    for line in content.splitlines():
        label, _, statement = line.partition("：" if language == "zh" else ": ")
        statements.append({"text": statement, "label": labels[label]})
    return statements


@pytest.mark.parametrize("as_json", [True, False], ids=["json_schema", "plain_text"])
def test_the_judge_labels_every_injected_contradiction_and_passes_clean_samples(as_json: bool) -> None:
    with (
        StandinProcess(contradiction_rate=0.3) as process,
        openai.OpenAI(base_url=process.base_url, api_key="EMPTY", max_retries=0, timeout=30) as judge_client,
    ):
        results = synthesize_and_judge(judge_client, fixture_images(12), as_json=as_json)
        injections = process.injections()
    injected = {(i["image_sha256"], i["language"], i["task"]): i for i in injections}
    assert {i["kind"] for i in injections} == {"colour", "count", "quote"}
    assert 0.15 < len(injected) / len(results) < 0.45, len(injected)
    caught = clean = clean_flagged = 0
    for result in results:
        statements = judged_statements(result["response"], result["language"], as_json)
        assert statements and all(s["label"] in {"supported", "contradicted", "unverifiable"} for s in statements)
        contradicted = {s["text"] for s in statements if s["label"] == "contradicted"}
        usage = result["response"].usage
        assert usage.completion_tokens == len(result["response"].choices[0].message.content)
        assert usage.prompt_tokens > usage.completion_tokens  # the image and the sample are in the prompt
        injection = injected.get((result["image_sha256"], result["language"], result["task"]))
        if injection is None:
            clean += 1
            clean_flagged += bool(contradicted)
        else:
            caught += injection["statement"] in contradicted
    assert caught / len(injected) >= 0.9, (caught, len(injected))  # the stand-in gets 1.0
    assert clean_flagged / clean <= 0.05, (clean_flagged, clean)  # and 0.0


def test_rate_zero_injects_nothing(client: openai.OpenAI, vlm: StandinProcess) -> None:
    vlm.reset_injections()
    results = synthesize_and_judge(client, fixture_images(3))
    assert vlm.injections() == []
    for result in results:
        assert all(s["label"] != "contradicted" for s in judged_statements(result["response"], result["language"], True))


def test_the_contradiction_rate_can_be_changed_on_a_running_server_and_is_validated(vlm: StandinProcess) -> None:
    try:
        vlm.set_contradiction_rate(1.0)
        vlm.reset_injections()
        chat_client = openai.OpenAI(base_url=vlm.base_url, api_key="EMPTY", max_retries=0)
        content = chat(chat_client, DETAIL_EN, GRASS_UNDER_WHITE).choices[0].message.content
        [injection] = vlm.injections()
        assert injection["statement"] in content and injection["task"] == "detail"
        for bad in ({"rate": 1.5}, {"rate": "high"}, {}):
            response = httpx.post(f"{vlm.root_url}/stand-in/contradictions", json=bad, timeout=10)
            assert_vllm_error(response, 400, "BadRequestError")
    finally:
        vlm.set_contradiction_rate(0.0)
        vlm.reset_injections()
    with pytest.raises(StandinConfigError):
        StandinProcess(contradiction_rate=-0.1)


def test_faults_apply_to_judge_requests(faulty: StandinProcess, faulty_client: openai.OpenAI) -> None:
    prompt = judge_request_text([{"from": "human", "value": "<image>\n颜色？"}, {"from": "gpt", "value": "画面以蓝色为主。"}], "zh")
    faulty.set_faults(image_faults={hashlib.sha256(SKY_OVER_RED).hexdigest(): "malformed"})
    content = chat(faulty_client, prompt, SKY_OVER_RED, response_format=JUDGE_SCHEMA).choices[0].message.content
    assert content == "画面以蓝色为主。"  # the labels are gone: the judge's parser must reject it
    plain = chat(faulty_client, prompt, GRASS_UNDER_WHITE).choices[0].message.content
    assert plain.startswith(("支持：", "矛盾：", "无法确认："))
    faulty.set_faults(fault_rates="500=1.0")
    with pytest.raises(openai.InternalServerError):
        chat(faulty_client, prompt, SKY_OVER_RED, response_format=JUDGE_SCHEMA)


def test_a_bad_response_format_is_a_400(vlm: StandinProcess) -> None:
    body = {"model": DEFAULT_MODEL, "messages": user_message("hi"), "response_format": "json"}
    assert_vllm_error(raw_chat(vlm, body), 400, "BadRequestError")
