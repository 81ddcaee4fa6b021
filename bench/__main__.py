"""`make bench` / `python -m bench [name ...]`: run tuwen's benchmarks and print their numbers.

Each benchmark starts the services it needs (a throwaway database, an S3 server, the stand-in) and
removes them afterwards. Record results with command, machine and date in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time

from bench.common import machine

# name -> module, or modules run one after another (each in a process of its own)
BENCHMARKS: dict[str, str | tuple[str, ...]] = {
    "crawl": "bench.bench_crawl",  # issue: crawler — images/s into S3 + PostgreSQL, OCR images/s/core
    # issue: synthesis — Little's-law fraction, client CPU ms/sample; then the serving model's occupancy with the
    # pool emulated, and through Airflow itself (issue 19)
    "synthesis": ("bench.bench_synthesis", "bench.bench_synthesis_serving", "bench.bench_synthesis_airflow"),
    "qc": "bench.bench_qc",  # issue: quality gate — 641,868 samples, time and peak memory
    "export": "bench.bench_export",  # issue: releases — 641,868 samples, time, memory, slowest query
    "ocr": "bench.bench_ocr",  # issue 18 — OCR images/s per core and recall, old and new parameters side by side
    "curate": "bench.bench_curate",  # issue 18: curation images/s per core, core-hours at 641,868 images
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmarks {unknown}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    print(f"tuwen benchmarks on {machine()}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    failed = []
    for name in names:
        started = time.perf_counter()
        print(f"\n##### {name} ({BENCHMARKS[name]})", flush=True)
        # A process of its own: memory a benchmark leaves behind (the quality gate's 641,868 samples)
        # would otherwise count in the next one's peak RSS, and its CPU in the next one's CPU time.
        modules = BENCHMARKS[name]
        for module in (modules,) if isinstance(modules, str) else modules:
            if subprocess.run([sys.executable, "-m", module], check=False).returncode:
                failed.append(module)
        print(f"##### {name} took {time.perf_counter() - started:.0f}s", flush=True)
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
