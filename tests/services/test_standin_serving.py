"""The stand-in's serving model (an emulation of vLLM's continuous batching), run as a subprocess and called over HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import random
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tuwen.local.standin_vlm import DEFAULT_MODEL, StandinProcess
from tuwen.local.standin_vlm.serving import (
    H100_32B,
    TEST_SMALL,
    ServingConfigError,
    StepLog,
    output_length,
    serving_preset,
)
from tuwen.synthesis.vlm_client import ClientStats

CONVERSATION = "Design a conversation between you and a person asking about this photo. Return User: ...\nAssistant: ..."
DETAIL = "Describe the scene in this photo in detail. Include object counts."
MAX = TEST_SMALL.max_num_seqs  # 4


def image_url(seed: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (seed * 37 % 255, 90, 160)).save(buffer, "JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def body(prompt: str, seed: int = 0, **extra: object) -> dict:
    return {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_url(seed)}}, {"type": "text", "text": prompt}]}], **extra}


def metrics(vlm: StandinProcess) -> dict[str, float]:
    """Sample name (with sorted labels but model_name) -> value, parsed with prometheus_client's parser."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(vlm.metrics_text()):
        for sample in family.samples:
            assert sample.labels.get("model_name") == DEFAULT_MODEL, sample
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "model_name")
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


async def post_all(vlm: StandinProcess, bodies: list[dict], timeout: float = 30.0) -> tuple[list[dict], float]:
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=len(bodies))) as client:
        started = time.perf_counter()
        responses = await asyncio.gather(*(client.post(f"{vlm.base_url}/chat/completions", json=b) for b in bodies))
        wall = time.perf_counter() - started
    for r in responses:
        assert r.status_code == 200, r.text
    return [r.json() for r in responses], wall


@pytest.fixture(scope="module")
def server() -> Iterator[StandinProcess]:
    with StandinProcess(serving="test-small") as process:
        # Warm the image-feature cache for the seeds used below: decode time is not what is measured.
        asyncio.run(post_all(process, [body("hello", seed=s) for s in range(12)]))
        yield process


@pytest.fixture
def vlm(server: StandinProcess) -> StandinProcess:
    server.reset_serving()
    return server


# --- the model, without a server ------------------------------------------------------------


def test_h100_32b_preset_makes_about_650_tokens_per_second_at_a_full_batch() -> None:
    assert H100_32B.max_num_seqs == 64
    assert 620 <= H100_32B.full_batch_tokens_per_s <= 680
    # One sequence alone is much faster per sequence and much slower in total: the reason to fill the batch.
    assert H100_32B.step_s(1) < H100_32B.step_s(64) / 3
    scaled = serving_preset("h100-32b", time_scale=20)
    assert scaled.step_s(64) == pytest.approx(H100_32B.step_s(64) / 20)
    assert serving_preset("h100-32b", max_num_seqs=8).max_num_seqs == 8


def test_unknown_presets_and_bad_overrides_are_refused() -> None:
    with pytest.raises(ServingConfigError, match="unknown serving preset"):
        serving_preset("a100")
    with pytest.raises(ServingConfigError):
        serving_preset("test-small", max_num_seqs=0)
    with pytest.raises(ServingConfigError):
        StandinProcess(serving="test-small", serving_time_scale=0)


def test_output_lengths_are_per_task_and_the_same_for_the_same_request() -> None:
    keys = [f"{i:064x}" for i in range(2000)]
    medians = {task: statistics.median(output_length(H100_32B, task, k) for k in keys)
               for task in ("conversation", "complex_reasoning", "detail")}
    assert medians["conversation"] > medians["complex_reasoning"] > medians["detail"] > 300
    # ~620 tokens per sample over LLaVA's task mix (the seed's 400M tokens / 641,868 samples).
    mix = random.Random(1).choices(["conversation", "complex_reasoning", "detail"], [0.37, 0.49, 0.15], k=2000)
    mean = statistics.fmean(output_length(H100_32B, t, k) for t, k in zip(mix, keys, strict=True))
    assert 560 <= mean <= 700
    assert [output_length(H100_32B, "detail", k) for k in keys[:50]] == [
        output_length(H100_32B, "detail", k) for k in keys[:50]]


def test_occupancy_summary_is_time_weighted_from_the_first_full_step_to_the_last_finish() -> None:
    log = StepLog()
    for start, seconds, running, waiting in [(0.0, 1.0, 2, 0), (1.0, 2.0, 4, 3), (3.0, 1.0, 2, 0), (4.0, 5.0, 0, 0)]:
        log.add(start, seconds, running, waiting, max_num_seqs=4)
    log.last_finish = 4.0
    summary = log.summary(max_num_seqs=4)
    assert summary["first_full_s"] == 1.0 and summary["window_s"] == 3.0
    assert summary["mean_running"] == pytest.approx((4 * 2 + 2 * 1) / 3)
    assert summary["occupancy"] == pytest.approx(10 / 12)
    assert summary["mean_waiting"] == pytest.approx(2.0) and summary["max_waiting"] == 3


# --- over HTTP ------------------------------------------------------------------------------


def test_requests_beyond_max_num_seqs_wait_and_metrics_say_so(vlm: StandinProcess) -> None:
    n = 10
    before = metrics(vlm)

    async def scenario() -> tuple[list[dict], list[dict[str, float]]]:
        task = asyncio.create_task(post_all(vlm, [body(CONVERSATION, seed=i) for i in range(n)]))
        deadline = time.monotonic() + 10
        samples: list[dict[str, float]] = []
        # A request that arrives mid-step waits for the next step to be admitted (as in vLLM), so on a busy
        # machine the first reading can be 1 running and 9 waiting: read until the batch is full.
        while time.monotonic() < deadline:
            samples.append(await asyncio.to_thread(metrics, vlm))
            if samples[-1]["vllm:num_requests_running"] == MAX and samples[-1]["vllm:num_requests_waiting"] == n - MAX:
                break
            await asyncio.sleep(0.01)
        answers, _ = await task
        return answers, samples

    answers, samples = asyncio.run(scenario())
    during = samples[-1]
    assert max(s["vllm:num_requests_running"] for s in samples) == MAX  # never more than max_num_seqs at once
    assert during["vllm:num_requests_running"] == MAX
    assert during["vllm:num_requests_waiting"] == n - MAX
    assert 0 < during["vllm:kv_cache_usage_perc"] <= 1
    after = metrics(vlm)
    assert after["vllm:num_requests_running"] == 0 and after["vllm:num_requests_waiting"] == 0
    # The counters add up to what the responses report.
    prompt = sum(a["usage"]["prompt_tokens"] for a in answers)
    completion = sum(a["usage"]["completion_tokens"] for a in answers)
    assert completion == n * TEST_SMALL.output_tokens["conversation"].median
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == prompt
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == completion
    key = "vllm:request_success_total{finished_reason=stop}"
    assert after[key] - before.get(key, 0.0) == n
    assert after["vllm:request_queue_time_seconds_count"] - before["vllm:request_queue_time_seconds_count"] == n
    summary = vlm.serving()
    assert summary["max_waiting"] == n - MAX and summary["finished"] == n
    # Waves of 4, 4 and 2 (a full batch, then a tail at half): the tail is what pulls the mean down.
    assert 0.6 < summary["occupancy"] <= 1.0


def test_step_time_grows_with_the_running_batch(vlm: StandinProcess) -> None:
    length = TEST_SMALL.output_tokens["detail"].median
    _, alone = asyncio.run(post_all(vlm, [body(DETAIL, seed=0)]))
    _, full = asyncio.run(post_all(vlm, [body(DETAIL, seed=i) for i in range(MAX)]))
    _, two_waves = asyncio.run(post_all(vlm, [body(DETAIL, seed=i) for i in range(2 * MAX)]))
    # Designed: 15 steps of 12.5 ms alone, of 20 ms with 4 running; two full waves take twice one.
    assert alone >= length * TEST_SMALL.step_s(1)
    assert full >= length * TEST_SMALL.step_s(MAX)
    assert alone < full < alone * 2.5
    assert 1.6 < two_waves / full < 2.6
    rows = httpx.get(f"{vlm.root_url}/stand-in/serving", params={"steps": "1"}).json()["step_rows"]
    by_running: dict[int, list[float]] = {}
    for _start, seconds, running, _waiting in rows:
        if running:
            by_running.setdefault(running, []).append(seconds)
    # A step lasts its designed time (the first one of a batch also carries its prefill); a late host
    # wake-up is made up on the next step, so the median is the design.
    for running, durations in by_running.items():
        assert statistics.median(durations) == pytest.approx(TEST_SMALL.step_s(running), rel=0.35, abs=0.004)


def test_same_request_gets_the_same_length_and_max_tokens_still_cuts_with_length(vlm: StandinProcess) -> None:
    (first, again), _ = asyncio.run(post_all(vlm, [body(DETAIL, seed=3), body(DETAIL, seed=3)]))
    assert first["usage"] == again["usage"]
    assert first["choices"][0]["message"]["content"] == again["choices"][0]["message"]["content"]
    (cut,), _ = asyncio.run(post_all(vlm, [body(DETAIL, seed=3, max_tokens=7)]))
    assert cut["choices"][0]["finish_reason"] == "length"
    assert len(cut["choices"][0]["message"]["content"]) == 7
    assert cut["usage"]["completion_tokens"] == 7


def test_a_client_that_hangs_up_frees_its_slot(vlm: StandinProcess) -> None:
    before = metrics(vlm)
    with openai.OpenAI(base_url=vlm.base_url, api_key="EMPTY", max_retries=0, timeout=0.2) as client, \
            pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=DEFAULT_MODEL, messages=body(CONVERSATION, seed=5)["messages"])
    deadline = time.monotonic() + 5
    while (now := metrics(vlm))["vllm:num_requests_running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert now["vllm:num_requests_running"] == 0 and now["vllm:num_requests_waiting"] == 0
    generated = now["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    assert 0 < generated < TEST_SMALL.output_tokens["conversation"].median  # aborted part-way


def test_without_the_serving_model_there_is_no_metrics_endpoint_and_latency_rules() -> None:
    with StandinProcess(latency="fixed:0.2") as plain:
        assert httpx.get(f"{plain.root_url}/metrics").status_code == 404
        assert httpx.get(f"{plain.root_url}/stand-in/serving").status_code == 404
        (answer,), wall = asyncio.run(post_all(plain, [body(DETAIL, seed=1)]))
        assert wall >= 0.2
        # One token per character, as always without the serving model.
        assert answer["usage"]["completion_tokens"] == len(answer["choices"][0]["message"]["content"])


# --- the client's in-flight control against the serving model ---------------------------------


def run_client(vlm: StandinProcess, n: int, **kwargs: Any) -> ClientStats:
    from tuwen.synthesis.vlm_client import VLMClient, VLMRequest

    async def go() -> ClientStats:
        requests = [VLMRequest(key=f"k{i}", messages=body(DETAIL, seed=i % 12)["messages"], max_tokens=2000,
                               temperature=0.7, top_p=0.9, seed=None, extra_body={}) for i in range(n)]
        async with VLMClient(vlm.base_url, "EMPTY", DEFAULT_MODEL, timeout_s=30, max_retries=0, **kwargs) as client:
            return await client.run(requests, lambda _result: None)

    return asyncio.run(go())


def test_aimd_keeps_the_batch_full_and_the_queue_short_where_a_fixed_limit_queues(vlm: StandinProcess) -> None:
    fixed = run_client(vlm, 60, max_in_flight=16)
    fixed_summary = vlm.serving()
    vlm.reset_serving()
    assert fixed.ok == 60 and fixed.inflight_source is None
    assert fixed_summary["max_waiting"] == 16 - MAX  # every request over max_num_seqs waits at the server

    adaptive = run_client(vlm, 60, max_in_flight=16, inflight_control="aimd", metrics_poll_s=0.05)
    summary = vlm.serving()
    assert adaptive.ok == 60 and adaptive.inflight_source == "metrics"
    assert adaptive.inflight_limit is not None and adaptive.inflight_limit < 16
    assert summary["occupancy"] > 0.8
    assert summary["mean_waiting"] < fixed_summary["mean_waiting"] / 2


def test_without_metrics_aimd_follows_latency() -> None:
    with StandinProcess(latency="fixed:0.05") as plain:
        stats = run_client(plain, 40, max_in_flight=8, inflight_control="aimd", metrics_poll_s=0.05)
    assert stats.ok == 40 and stats.inflight_source == "latency"


def test_aimd_over_two_replicas_reads_both_and_keeps_both_queues_short() -> None:
    from tuwen.synthesis.vlm_client import VLMClient, VLMRequest

    with StandinProcess(serving="test-small") as first, StandinProcess(serving="test-small") as second:
        async def go() -> ClientStats:
            requests = [VLMRequest(key=f"k{i}", messages=body(DETAIL, seed=i % 12)["messages"], max_tokens=2000,
                                   temperature=0.7, top_p=0.9, seed=None, extra_body={}) for i in range(80)]
            async with VLMClient([first.base_url, second.base_url], "EMPTY", DEFAULT_MODEL, timeout_s=30,
                                 max_retries=0, max_in_flight=4 * MAX, inflight_control="aimd",
                                 metrics_poll_s=0.05) as client:
                return await client.run(requests, lambda _result: None)

        stats = asyncio.run(go())
        summaries = [first.serving(), second.serving()]
    assert stats.ok == 80 and stats.inflight_source == "metrics"
    assert all(r.ok > 0 and r.breaker == "closed" for r in stats.replicas)
    # The limit grows past one replica's batch, since two carry the work, and neither queues much: the
    # fixed limit (4 x MAX over two replicas of MAX sequences) would keep MAX requests waiting at each;
    # AIMD aims at 2 to 6 waiting in all (a busy machine's late readings can push a replica's mean near 2).
    assert stats.inflight_limit is not None and stats.inflight_limit > MAX
    assert all(s["mean_waiting"] < 0.75 * MAX for s in summaries), summaries
