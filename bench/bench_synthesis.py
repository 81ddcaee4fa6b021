"""Synthesis throughput against the stand-in at a fixed latency: is the client the bottleneck?

3,000 images are in the store (model-ready copies in S3, rows in PostgreSQL). One batch runs them
end to end — read the image from S3, base64-encode, call the stand-in, parse, write generation and
sample — with 128 requests in flight. By Little's law the ideal is 128 in flight / 1.0 s latency =
128 samples/s; the score is the achieved fraction (target >= 0.85) and the client process's CPU
milliseconds per sample (target <= 5 ms). Repeated with log-normal latency (median 1 s, p99 10 s).

`--judge` (python -m bench.bench_synthesis --judge): the faithfulness judge's cost at the same
settings. The 3,000 images are synthesized (fixed 1.0 s latency, 128 in flight), then every sample is
judged the same way; it reports the judge's extra prompt and completion tokens per sample, its
completion tokens as a share of synthesis's (target <= 20 %), and its wall time as a share of
synthesis's, and records them in docs/BENCHMARKS.md. `--contradiction-rate R` has the stand-in put a
false sentence into a share R of its answers (default 0: every verdict clean), which the judge then
quotes back. Against the stand-in this measures plumbing: its tokens are characters (one token per
character, images by Qwen2.5-VL's patch count), its judge answers in the shape the default judge
prompt asks for (v2: the contradicted statements only, `{"contradicted": []}` for a clean sample; v1
quoted every sentence back), and its latency does not grow with the output, so the wall-time share
says nothing about a real model's.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import text

from bench.common import bench_settings, machine, record_result, seed_images
from tuwen.domain import Partition
from tuwen.judge.keys import JudgeRunParams
from tuwen.judge.planning import plan_judging
from tuwen.judge.prompts import get_judge_prompt
from tuwen.judge.runner import run_judge_batch
from tuwen.resources import Resources
from tuwen.synthesis.keys import RunParams
from tuwen.synthesis.planning import plan_partition
from tuwen.synthesis.runner import run_batch

IN_FLIGHT = 128
N_IMAGES = 3000
DAY = Partition(dt.date(2026, 11, 19), dt.date(2026, 11, 20))


def _run(settings, standin_root: str, latency: str, label: str) -> dict:
    httpx.post(f"{standin_root}/stand-in/faults", json={"latency": latency}).raise_for_status()
    httpx.post(f"{standin_root}/stand-in/stats/reset").raise_for_status()
    resources = Resources.from_settings(settings)
    with resources.engine.begin() as conn:
        conn.execute(text("TRUNCATE sample, generation RESTART IDENTITY CASCADE"))
    plan = plan_partition(resources, DAY, RunParams())
    ids = [i for batch in plan.batches for i in batch["image_ids"]]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = run_batch(resources, ids, RunParams())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    done = result.succeeded + result.unparseable
    rate = done / wall
    stats = httpx.get(f"{standin_root}/stand-in/stats").json()
    row = {"label": label, "samples": done, "failed": result.failed, "wall_s": wall, "samples_per_s": rate,
           "fraction_of_ideal": rate / (IN_FLIGHT / 1.0), "cpu_ms_per_sample": 1000 * cpu / max(done, 1),
           "max_in_flight_seen": stats.get("max_in_flight")}
    print(f"{label}: {done} samples in {wall:.1f}s = {rate:.1f}/s = {row['fraction_of_ideal']:.3f} of ideal "
          f"128/s; client CPU {row['cpu_ms_per_sample']:.2f} ms/sample; max in flight at server "
          f"{row['max_in_flight_seen']}")
    return row


def judge_cost(contradiction_rate: float = 0.0) -> dict:
    """Synthesis, then the judge over every sample, at the benchmark's settings (module doc); with a
    contradiction rate the stand-in puts one false sentence into that share of its answers, which the
    judge then quotes back (what a contradicted verdict costs)."""
    from tuwen.local.standin_vlm import StandinProcess

    print(f"== faithfulness judge cost ({machine()}): {N_IMAGES} images, {IN_FLIGHT} in flight, fixed 1.0 s, "
          f"contradiction rate {contradiction_rate} ==")
    with tempfile.TemporaryDirectory() as tmp, bench_settings(Path(tmp)) as settings, \
            StandinProcess(latency="fixed:1.0", contradiction_rate=contradiction_rate) as vlm:
        settings = dataclasses.replace(settings, vlm_base_url=vlm.base_url, vlm_model=vlm.model,
                                       vlm_max_in_flight=IN_FLIGHT, vlm_timeout_s=60.0, judge_enabled=True)
        seed_images(settings, N_IMAGES, DAY.start)
        resources = Resources.from_settings(settings)
        plan = plan_partition(resources, DAY, RunParams())
        wall0 = time.perf_counter()
        synthesis = run_batch(resources, [i for b in plan.batches for i in b["image_ids"]], RunParams())
        synthesis_wall = time.perf_counter() - wall0
        samples = synthesis.succeeded
        judge_plan = plan_judging(resources, DAY, JudgeRunParams(enabled=True))
        wall0 = time.perf_counter()
        judged = run_judge_batch(resources, [s for b in judge_plan.batches for s in b["sample_ids"]],
                                 JudgeRunParams(enabled=True))
        judge_wall = time.perf_counter() - wall0
        # Which judge prompt was measured: the verdict's shape, and so the cost, is per version.
        judge_prompt = get_judge_prompt("zh", settings.judge_prompt_version, settings.prompts_dir).id
    row = {
        "samples": samples, "contradiction_rate": contradiction_rate, "judged": judged.succeeded, "unparseable": judged.unparseable, "failed": judged.failed,
        "synthesis_prompt_tokens": synthesis.prompt_tokens / samples,
        "synthesis_completion_tokens": synthesis.completion_tokens / samples,
        "judge_prompt_tokens": judged.prompt_tokens / samples,
        "judge_completion_tokens": judged.completion_tokens / samples,
        "synthesis_wall_s": synthesis_wall, "judge_wall_s": judge_wall,
    }
    row["extra_completion_share"] = row["judge_completion_tokens"] / row["synthesis_completion_tokens"]
    row["extra_prompt_share"] = row["judge_prompt_tokens"] / row["synthesis_prompt_tokens"]
    row["extra_wall_share"] = judge_wall / synthesis_wall
    print(f"{samples} samples, {judged.succeeded} judged ({judged.contradicted_samples} with a contradicted statement, "
          f"{judged.unparseable} unparseable, {judged.failed} failed); "
          f"per sample: synthesis {row['synthesis_prompt_tokens']:.0f} prompt + "
          f"{row['synthesis_completion_tokens']:.0f} completion tokens, judge +{row['judge_prompt_tokens']:.0f} "
          f"prompt (+{100 * row['extra_prompt_share']:.0f} %) +{row['judge_completion_tokens']:.0f} completion "
          f"(+{100 * row['extra_completion_share']:.0f} %, target <= 20 %); wall {synthesis_wall:.1f}s + "
          f"{judge_wall:.1f}s judge (+{100 * row['extra_wall_share']:.0f} %)")
    load = os.getloadavg()[0]
    record_result(
        "Faithfulness judge cost",
        f"- {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, `python -m bench.bench_synthesis --judge`, {machine()}, "
        f"load avg {load:.1f} at the end, judge prompt {judge_prompt} (and .en), contradiction rate "
        f"{contradiction_rate}: {samples} samples ({judged.succeeded} judged, {judged.contradicted_samples} with a "
        f"contradicted statement, {judged.unparseable} unparseable, {judged.failed} failed). Per sample, "
        f"synthesis {row['synthesis_prompt_tokens']:.0f} prompt + "
        f"{row['synthesis_completion_tokens']:.0f} completion tokens; the judge +{row['judge_prompt_tokens']:.0f} "
        f"prompt (+{100 * row['extra_prompt_share']:.0f} %) and +{row['judge_completion_tokens']:.0f} completion "
        f"tokens (**+{100 * row['extra_completion_share']:.0f} %**, target <= 20 %); wall {synthesis_wall:.1f} s "
        f"synthesis + {judge_wall:.1f} s judge (+{100 * row['extra_wall_share']:.0f} %).",
        intro=JUDGE_INTRO,
    )
    return row


JUDGE_INTRO = """The faithfulness judge's extra cost per sample at the synthesis benchmark's settings: 3,000 images,
128 requests in flight, the stand-in at a fixed 1.0 s latency; synthesis first, then the judge over
every sample (one request each: the image again, the judge prompt and the sample), `response_format`
(JSON schema) on. Target: <= 20 % extra completion tokens. **Against the stand-in this is plumbing
only**: its tokens are characters (images by Qwen2.5-VL's patch count), its judge answers in the
default prompt version's shape, and its latency does not grow with the output, so the wall-time
share counts requests, not a model's decoding time."""


def main() -> list[dict]:
    from tuwen.local.standin_vlm import StandinProcess

    print(f"== synthesis benchmark ({machine()}): {N_IMAGES} images, {IN_FLIGHT} in flight ==")
    with tempfile.TemporaryDirectory() as tmp, bench_settings(Path(tmp)) as settings, \
            StandinProcess(latency="fixed:1.0") as vlm:
        settings = dataclasses.replace(settings, vlm_base_url=vlm.base_url, vlm_model=vlm.model,
                                       vlm_max_in_flight=IN_FLIGHT, vlm_timeout_s=60.0)
        t0 = time.perf_counter()
        seed_images(settings, N_IMAGES, DAY.start)
        print(f"seeded {N_IMAGES} images into S3 + PostgreSQL in {time.perf_counter() - t0:.1f}s")
        root = vlm.base_url.removesuffix("/v1")
        return [
            _run(settings, root, "fixed:1.0", "fixed 1.0 s latency"),
            _run(settings, root, "lognormal:1.0,10.0", "log-normal latency (median 1 s, p99 10 s)"),
        ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.bench_synthesis", description=__doc__.splitlines()[0])
    parser.add_argument("--judge", action="store_true", help="measure the faithfulness judge's extra cost instead")
    parser.add_argument("--contradiction-rate", type=float, default=0.0, metavar="R",
                        help="with --judge: the stand-in's share of answers with an injected false sentence (0-1)")
    args = parser.parse_args()
    if args.judge:
        judge_cost(args.contradiction_rate)
    else:
        main()
    sys.exit(0)
