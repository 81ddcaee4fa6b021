"""`python -m bench.bench_s3_server`: what keeping objects on disk costs the local S3 server per PUT.

PUTs of crawled-photo-sized objects (190 KB) through the minio client from 8 threads, as the crawler
sends them, against the server in memory only and with `--data-dir`, alternated so that the machine's
drifting speed falls on both alike. Reports the server's CPU per PUT, the client's, the wall time per
PUT, and how long a restart takes to load what was written.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from minio import Minio

from tuwen.local.services import BackgroundService, free_port, s3_data_dir, s3_service

OBJECT_BYTES = 190_000


def _server(run_dir: Path, on_disk: bool) -> BackgroundService:
    return s3_service(free_port(), run_dir, on_disk=on_disk)


def _put_round(service: BackgroundService, puts: int, threads: int) -> dict[str, float]:
    endpoint = service.health_url.split("//", 1)[1].split("/", 1)[0]
    client = Minio(endpoint, access_key="bench", secret_key="bench", secure=False)
    client.make_bucket("bench")
    payload = os.urandom(OBJECT_BYTES)

    def put(i: int) -> None:
        client.put_object("bench", f"raw/{i % 256:02x}/{i:08d}.jpg", io.BytesIO(payload), OBJECT_BYTES,
                          content_type="image/jpeg")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(50)))  # warm: connections, moto's first-call imports
    server = psutil.Process(int(service.pid_file.read_text()))
    server_before, client_before = sum(server.cpu_times()[:2]), time.process_time()
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(50, 50 + puts)))
    wall = time.perf_counter() - started
    return {"server_cpu_ms": 1000 * (sum(server.cpu_times()[:2]) - server_before) / puts,
            "client_cpu_ms": 1000 * (time.process_time() - client_before) / puts,
            "wall_ms": 1000 * wall / puts}


def _restart_s(service: BackgroundService) -> float:
    service.stop()
    started = time.perf_counter()
    service.start()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--puts", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {"memory": [], "disk": []}
    restarts = []
    for _ in range(args.rounds):
        for mode in ("memory", "disk"):
            with tempfile.TemporaryDirectory() as tmp:
                service = _server(Path(tmp), mode == "disk")
                service.start()
                try:
                    results[mode].append(_put_round(service, args.puts, args.threads))
                    if mode == "disk":
                        restarts.append(_restart_s(service))
                        stored = sum(1 for _ in s3_data_dir(Path(tmp)).glob("bench/objects/*/*"))
                        assert stored == 50 + args.puts, f"{stored} objects on disk"
                finally:
                    service.stop()
    print(f"{args.puts} PUTs of {OBJECT_BYTES // 1000} KB from {args.threads} threads, "
          f"{args.rounds} alternated rounds (median, min-max):")
    for mode, rounds in results.items():
        cells = []
        for metric in ("server_cpu_ms", "client_cpu_ms", "wall_ms"):
            values = [r[metric] for r in rounds]
            cells.append(f"{metric} {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"  {mode:6s}: " + ", ".join(cells))
    print(f"  restart loading {50 + args.puts} objects: " + ", ".join(f"{s:.1f}s" for s in restarts))


if __name__ == "__main__":
    main()
