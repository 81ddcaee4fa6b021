"""Running the stand-in: as a subprocess for tests and benchmarks (`StandinProcess`), or from the command line."""


from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tuwen.local.standin_vlm.faults import (
    FAULT_KINDS,
    FaultConfig,
    LatencySpec,
    StandinConfigError,
    parse_fault_rates,
)
from tuwen.local.standin_vlm.server import DEFAULT_MODEL, READY_LINE_PREFIX, check_contradiction_rate, serve
from tuwen.local.standin_vlm.serving import PRESETS, ServingPreset, serving_preset

# --------------------------------------------------------------------------------------------
# Subprocess helper for tests and benchmarks
# --------------------------------------------------------------------------------------------


class StandinProcess:
    """Start the stand-in as a subprocess on a free port, wait for /health, stop it on exit.

    with StandinProcess(latency="fixed:0.1", fault_rates="500=0.2", fault_seed=1) as vlm:
        client = openai.OpenAI(base_url=vlm.base_url, api_key="EMPTY")
        ...
        assert vlm.stats()["ok"] == 10
    """

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        latency: str = "fixed:0",
        fault_rates: str | Mapping[str, float] | None = None,
        fault_seed: int | None = None,
        fail_first: int = 0,
        fail_first_kind: str = "503",
        hang_s: float = 30.0,
        retry_after_s: int = 1,
        ocr: bool = False,
        serving: str | None = None,
        max_num_seqs: int | None = None,
        serving_time_scale: float | None = None,
        contradiction_rate: float = 0.0,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 30.0,
    ) -> None:
        rates = parse_fault_rates(fault_rates)  # fail here, in the caller, rather than in the child
        check_contradiction_rate(contradiction_rate)
        self.host = host
        self.model = model
        self.startup_timeout_s = startup_timeout_s
        self.args = [
            sys.executable,
            "-m",
            "tuwen.local.standin_vlm",
            "--host",
            host,
            "--port",
            "0",
            "--model",
            model,
            "--latency",
            str(LatencySpec.parse(latency)),
            "--fail-first",
            str(fail_first),
            "--fail-first-kind",
            fail_first_kind,
            "--hang-s",
            str(hang_s),
            "--retry-after-s",
            str(retry_after_s),
        ]
        if rates:
            self.args += ["--fault-rates", ",".join(f"{k}={v}" for k, v in rates.items())]
        if fault_seed is not None:
            self.args += ["--fault-seed", str(fault_seed)]
        if ocr:
            self.args.append("--ocr")
        if serving is not None:
            # Checked here, in the caller, rather than in the child.
            serving_preset(serving, max_num_seqs=max_num_seqs, time_scale=serving_time_scale)
            self.args += ["--serving", serving]
            if max_num_seqs is not None:
                self.args += ["--max-num-seqs", str(max_num_seqs)]
            if serving_time_scale is not None:
                self.args += ["--serving-time-scale", repr(float(serving_time_scale))]
        if contradiction_rate:
            self.args += ["--contradiction-rate", repr(float(contradiction_rate))]
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def root_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the stand-in is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as base_url."""
        return f"{self.root_url}/v1"

    def log_text(self) -> str:
        if self._log is None:
            return ""
        return Path(self._log.name).read_text(errors="replace")

    def start(self) -> StandinProcess:
        import httpx  # only the helper needs a sync HTTP client

        # Output goes to a file, not a pipe: nobody drains a pipe during a long test, and a full one blocks the server.
        self._log = tempfile.NamedTemporaryFile(prefix="standin-vlm-", suffix=".log", delete=False)  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout_s
        pattern = re.compile(re.escape(READY_LINE_PREFIX) + r" http://[^:]+:(\d+)/v1")
        try:
            while self.port is None:
                if self._process.poll() is not None:
                    raise RuntimeError(f"stand-in exited with {self._process.returncode}:\n{self.log_text()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"stand-in did not start within {self.startup_timeout_s}s:\n{self.log_text()}"
                    )
                if match := pattern.search(self.log_text()):
                    self.port = int(match.group(1))
                else:
                    time.sleep(0.05)
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.root_url}/health", timeout=2.0).status_code == 200:
                        return self
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"stand-in /health did not answer within {self.startup_timeout_s}s:\n{self.log_text()}"
                    )
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._process = None
        if self._log is not None:
            self._log.close()
            with contextlib.suppress(OSError):
                os.unlink(self._log.name)
            self._log = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> StandinProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- stand-in control endpoints --------------------------------------------------------
    def set_faults(self, **config: Any) -> dict[str, Any]:
        """POST /stand-in/faults: replaces the whole fault config (keys as in FaultConfig.to_json)."""
        import httpx

        response = httpx.post(f"{self.root_url}/stand-in/faults", json=config, timeout=10)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        import httpx

        return httpx.get(f"{self.root_url}/stand-in/stats", timeout=10).raise_for_status().json()

    def reset_stats(self) -> dict[str, Any]:
        import httpx

        return httpx.post(f"{self.root_url}/stand-in/stats/reset", timeout=10).raise_for_status().json()

    def serving(self) -> dict[str, Any]:
        """GET /stand-in/serving (serving model only): the preset and the occupancy summary."""
        import httpx

        return httpx.get(f"{self.root_url}/stand-in/serving", timeout=10).raise_for_status().json()

    def reset_serving(self) -> dict[str, Any]:
        import httpx

        return httpx.post(f"{self.root_url}/stand-in/serving/reset", timeout=10).raise_for_status().json()

    def metrics_text(self) -> str:
        """GET /metrics (serving model only): Prometheus text with vLLM's metric names."""
        import httpx

        return httpx.get(f"{self.root_url}/metrics", timeout=10).raise_for_status().text

    def injections(self) -> list[dict[str, Any]]:
        """GET /stand-in/injections: the contradictions put into answers ({"statement", "kind", "task",
        "language", "image_sha256"}, newest last, the last 10,000) — test-only ground truth."""
        import httpx

        response = httpx.get(f"{self.root_url}/stand-in/injections", timeout=10).raise_for_status()
        return list(response.json()["injections"])

    def reset_injections(self) -> None:
        import httpx

        httpx.post(f"{self.root_url}/stand-in/injections/reset", timeout=10).raise_for_status()

    def set_contradiction_rate(self, rate: float) -> None:
        """POST /stand-in/contradictions: change --contradiction-rate on the running server."""
        import httpx

        httpx.post(f"{self.root_url}/stand-in/contradictions", json={"rate": rate}, timeout=10).raise_for_status()


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tuwen.local.standin_vlm",
        description=(
            "A STAND-IN for vLLM's OpenAI-compatible server (GET /health, GET /v1/models, POST /v1/chat/completions), "
            "for testing and demoing tuwen without a GPU. It is NOT a model: answers are templates about image size, "
            "colours and brightness, deterministic per (image, prompt). Stand-in-only endpoints: GET/POST /stand-in/faults, "
            "GET /stand-in/stats, POST /stand-in/stats/reset, GET /stand-in/injections (test-only), "
            "POST /stand-in/contradictions. A faithfulness-judge request is answered by rules that compare each "
            "statement with the same measurements: it tests the judge's plumbing, not a model's judgement."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to bind; 0 picks a free one (default 8000)"
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"served model name (default {DEFAULT_MODEL})")
    parser.add_argument(
        "--latency", default="fixed:0", help="'fixed:SECONDS' or 'lognormal:MEDIAN,P99' (default fixed:0)"
    )
    parser.add_argument(
        "--fault-rates", default="", help=f"comma-separated KIND=PROBABILITY, kinds: {', '.join(FAULT_KINDS)}"
    )
    parser.add_argument(
        "--fault-seed", type=int, default=None, help="make fault choice and latency deterministic per request"
    )
    parser.add_argument(
        "--fail-first", type=int, default=0, help="fail the first N chat requests with --fail-first-kind"
    )
    parser.add_argument(
        "--fail-first-kind", default="503", choices=FAULT_KINDS, help="fault for --fail-first (default 503)"
    )
    parser.add_argument(
        "--hang-s", type=float, default=30.0, help="how long the 'timeout' fault hangs before answering"
    )
    parser.add_argument("--retry-after-s", type=int, default=1, help="Retry-After header sent with 429s")
    parser.add_argument(
        "--ocr",
        action="store_true",
        help="quote text read by rapidocr_onnxruntime in answers (slow; off by default)",
    )
    parser.add_argument(
        "--serving",
        default=None,
        choices=sorted(PRESETS),
        help=(
            "answer through an EMULATION of vLLM's continuous batching (max_num_seqs, a waiting queue, a step time "
            "growing with the batch, per-task output lengths) with Prometheus GET /metrics under vLLM's names; "
            "--latency is then unused. Presets: h100-32b (~650 output tokens/s at 64 sequences), test-small"
        ),
    )
    parser.add_argument(
        "--max-num-seqs", type=int, default=None, help="override the serving preset's max_num_seqs"
    )
    parser.add_argument(
        "--serving-time-scale",
        type=float,
        default=None,
        help="divide every emulated duration by this (e.g. 20: the same batching shape, 20x faster)",
    )
    parser.add_argument(
        "--contradiction-rate",
        type=float,
        default=0.0,
        help=(
            "share of answers that carry one known false statement (a wrong colour, a wrong pixel size, or a "
            "quoted text the image does not hold), chosen per (image, prompt); listed by GET /stand-in/injections "
            "for tests (default 0)"
        ),
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        faults = FaultConfig(
            latency=LatencySpec.parse(args.latency),
            rates=parse_fault_rates(args.fault_rates),
            seed=args.fault_seed,
            fail_first=args.fail_first,
            fail_first_kind=args.fail_first_kind,
            hang_s=args.hang_s,
            retry_after_s=args.retry_after_s,
        )
        check_contradiction_rate(args.contradiction_rate)
    except StandinConfigError as exc:
        parser.error(str(exc))
    serving: ServingPreset | None = None
    if args.serving is not None:
        try:
            serving = serving_preset(args.serving, max_num_seqs=args.max_num_seqs, time_scale=args.serving_time_scale)
        except StandinConfigError as exc:
            parser.error(str(exc))
    serve(args.host, args.port, args.model, faults, args.ocr, args.contradiction_rate, serving=serving)
