"""Faults survived with nothing lost and nothing duplicated.

- A synthesis task process SIGKILLed mid-batch on a Celery worker: Airflow retries it; every image
  ends with exactly one generation and the answers stored before the kill are not paid again.
- PostgreSQL (a throwaway instance of its own, never the machine's cluster) stopped and started
  mid-batch: the batch fails loudly, the retry completes it, counts are exact.
- The S3 endpoint unreachable during a crawl and during an export (a TCP proxy in front of the S3
  server is cut, so the server keeps its data): the crawl fails clearly and its rerun records every
  image once; the export fails, presents no release (no manifest, no local folder, row 'failed'),
  and its rerun publishes it.
- The VLM endpoint down for a whole run: the circuit breaker ends the run within seconds with a clear
  message and nothing is marked done.
- The release folder's disk full: the export fails clearly and leaves no partial release.

Only the SIGKILL case needs a running Airflow; the others call the library as the tasks do, which is
where the behaviour lives, and keep the suite fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import STANDIN_MODEL, write_sites_file
from tuwen.config import Settings
from tuwen.db.migrate import upgrade
from tuwen.db.session import get_engine
from tuwen.domain import Partition
from tuwen.local.fixture_site import SiteManifest
from tuwen.local.services import ensure_database, free_port, standin_vlm_service
from tuwen.resources import Resources
from tuwen.storage import ObjectStore
from tuwen.synthesis.runner import RunParams, plan_partition, run_batch

if TYPE_CHECKING:
    from tests.ops.live_airflow import LiveAirflow

pytest_plugins = ["tests.ops.live_airflow"]

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _seed(settings: Settings, day: dt.date, n: int) -> list[int]:
    from tests.ops.live_airflow import seed_small_images

    return seed_small_images(settings, day, n)


def _counts(database_url: str, day: dt.date) -> dict[str, int]:
    with get_engine(database_url).connect() as conn:
        row = conn.execute(text("""
            SELECT count(DISTINCT i.id) AS images, count(g.id) AS generations,
                   count(*) FILTER (WHERE g.status = 'succeeded') AS succeeded,
                   count(*) FILTER (WHERE g.status IN ('succeeded', 'unparseable')) AS done,
                   count(s.id) AS samples,
                   coalesce(max(per.n), 0) AS max_per_image
            FROM image i LEFT JOIN generation g ON g.image_id = i.id LEFT JOIN sample s ON s.generation_id = g.id
            LEFT JOIN (SELECT image_id, count(*) AS n FROM generation GROUP BY 1) per ON per.image_id = i.id
            WHERE i.crawl_date = :day AND i.status = 'accepted'"""), {"day": day}).one()
    return dict(row._mapping)


@pytest.fixture(scope="module")
def slow_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A stand-in of this module's own (0.3 s per answer), so its counters and latency are ours alone."""
    port = free_port()
    service = standin_vlm_service(port, STANDIN_MODEL, tmp_path_factory.mktemp("faults-standin"),
                                  extra_args=["--latency", "fixed:0.3"])
    service.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        service.stop()


def _requests(standin: str) -> int:
    return httpx.get(f"{standin}/stand-in/stats", timeout=5).json()["requests"]


# --- SIGKILL of a task process on a Celery worker --------------------------------------------


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        chain.append(pid)
    return chain


def test_sigkilled_task_is_retried_and_nothing_is_lost_or_paid_twice(live_airflow: LiveAirflow) -> None:
    live = live_airflow
    day = dt.date(2026, 11, 12)
    n = 12  # three batches of four
    started = time.monotonic()
    live.seed(day, n)
    live.set_standin_faults(latency="fixed:1.5")  # a batch takes ~3 s: time to kill it mid-way
    requests_before = live.standin_requests()
    worker_pids = {int((live.run_dir / f"airflow-celery-worker-{w}.pid").read_text()) for w in ("w1", "w2")}
    run_id = live.trigger(live.synth, {"date_from": day.isoformat()})
    victim: dict[str, Any] | None = None
    deadline = time.monotonic() + 180
    while victim is None and time.monotonic() < deadline:
        for ti in live.task_instances(live.synth, run_id, task_id="synthesize"):
            if ti["state"] == "running" and ti.get("pid"):
                victim = ti
                break
        time.sleep(0.3)
    assert victim is not None, "no synthesize task started"
    stored_sql = """SELECT count(*) FROM generation WHERE run_id = :run AND map_index = :m
                    AND status IN ('succeeded', 'unparseable')"""
    while live.scalar(stored_sql, run=run_id, m=victim["map_index"]) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)  # kill only once some answers of the batch are stored and others are in flight
    stored_before_kill = live.scalar(stored_sql, run=run_id, m=victim["map_index"])
    assert 0 < stored_before_kill < 4
    pid = int(victim["pid"])
    # Only ever a process of this test's own worker.
    assert worker_pids & set(_ancestors(pid)), f"pid {pid} is not a task of this stack's workers"
    os.kill(pid, signal.SIGKILL)
    run = live.wait_run(live.synth, run_id, timeout_s=300)
    live.set_standin_faults(latency="fixed:0.3")
    assert run["state"] == "success"
    retried = [ti for ti in live.task_instances(live.synth, run_id, task_id="synthesize")
               if ti["map_index"] == victim["map_index"]][0]
    assert retried["try_number"] >= 2 and retried["state"] == "success"
    counts = _counts(live.settings.database_url, day)
    assert counts["images"] == counts["generations"] == counts["done"] == n
    assert counts["max_per_image"] == 1 and counts["samples"] == counts["succeeded"]
    # Answers stored before the kill were not requested again; at most the in-flight ones were repaid.
    repaid = live.standin_requests() - requests_before - n
    assert 0 <= repaid <= live.settings.vlm_max_in_flight
    print(f"SIGKILL test: {time.monotonic() - started:.0f}s, {stored_before_kill} answers stored before the "
          f"kill, repaid {repaid}")


# --- PostgreSQL restarted mid-batch (a throwaway instance) ----------------------------------------


@contextlib.contextmanager
def throwaway_postgres(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A private PostgreSQL 15 on a free port, run as the postgres user (initdb refuses root)."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"{PG_BIN}/initdb missing: install postgresql-15")
    base = Path(f"/tmp/tuwen-pg-{uuid.uuid4().hex[:8]}")  # the postgres user must reach it: not under /root
    data, sockets = base / "data", base / "sock"
    sockets.mkdir(parents=True)
    shutil.chown(base, "postgres")
    shutil.chown(sockets, "postgres")
    port = free_port()

    def pg(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    def ctl(action: str) -> None:
        opts = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "pg.log"), "-w", "-o", opts, action)

    pg(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    ctl("start")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/tuwen_pg_fault", ctl
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def test_postgres_restart_mid_batch_loses_and_duplicates_nothing(
        s3_endpoint: str, slow_standin: str, tmp_path: Path) -> None:
    started = time.monotonic()
    day, n = dt.date(2026, 10, 1), 16
    with throwaway_postgres(tmp_path) as (url, ctl):
        ensure_database(url)
        upgrade(url)
        settings = dataclasses.replace(
            Settings(), database_url=url, s3_endpoint=s3_endpoint, s3_bucket=f"tuwen-pg-{uuid.uuid4().hex[:8]}",
            vlm_base_url=f"{slow_standin}/v1", vlm_model=STANDIN_MODEL, vlm_max_in_flight=2, batch_size=n,
            ocr_enabled=False)
        ObjectStore(settings).ensure_bucket()
        _seed(settings, day, n)
        plan = plan_partition(Resources.from_settings(settings), Partition(day, day + dt.timedelta(days=1)), RunParams())
        [batch] = plan.batches
        before = _requests(slow_standin)
        outcome: dict[str, Any] = {}

        def first_attempt() -> None:
            try:
                outcome["result"] = run_batch(Resources.from_settings(settings), batch["image_ids"], RunParams())
            except Exception as exc:  # what Airflow would record before retrying
                outcome["error"] = exc

        worker = threading.Thread(target=first_attempt)
        worker.start()
        deadline = time.monotonic() + 60
        while _counts(url, day)["done"] < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        get_engine(url).dispose()
        ctl("stop")  # PostgreSQL goes away mid-batch (fast shutdown: open connections are cut) ...
        time.sleep(3)
        ctl("start")  # ... and comes back
        worker.join(timeout=120)
        assert not worker.is_alive()
        first = _counts(url, day)
        assert "error" in outcome, f"the outage went unnoticed: {outcome}"
        assert first["done"] < n
        # Airflow's retry: the same batch again. It pays only for what was not stored.
        result = run_batch(Resources.from_settings(settings), batch["image_ids"], RunParams())
        after = _counts(url, day)
        assert after["images"] == after["generations"] == after["done"] == n
        assert after["max_per_image"] == 1 and after["samples"] == after["succeeded"]
        assert result.skipped_done == first["done"]
        paid = _requests(slow_standin) - before
        # Lost answers are bounded by what was in flight or arrived while the database was away.
        assert n <= paid <= n + 2 * settings.vlm_max_in_flight + 1, paid
        print(f"PostgreSQL restart: first attempt failed with {type(outcome['error']).__name__}: "
              f"{str(outcome['error'])[:200]}; paid {paid} for {n}; {time.monotonic() - started:.0f}s")
        get_engine(url).dispose()
        create_engine(url).dispose()


# --- S3 unreachable: a TCP proxy in front of the S3 server ------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:port to an upstream; `cut()` refuses and drops connections, `restore()` heals.

    Stopping moto's server itself would lose its in-memory buckets; an outage in the network path is
    what a client sees either way.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self.lock:
            if self.listener is not None:
                self.listener.close()
                self.listener = None
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
            self.connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()


@pytest.fixture
def s3_proxy(s3_endpoint: str) -> Iterator[TcpProxy]:
    host, port = s3_endpoint.split(":")
    proxy = TcpProxy((host, int(port)))
    try:
        yield proxy
    finally:
        proxy.cut()


def test_s3_outage_during_crawl_fails_clearly_and_the_rerun_records_every_image_once(
        settings: Settings, s3_proxy: TcpProxy, fixture_site: tuple[str, Path], tmp_path: Path) -> None:
    from tuwen.crawl.run import CrawlError, run_crawl

    started = time.monotonic()
    site_url, site_dir = fixture_site
    expected = SiteManifest.load(site_dir).expected_counts["by_outcome"]["accepted"]
    settings = dataclasses.replace(settings, s3_endpoint=f"127.0.0.1:{s3_proxy.port}",
                                   sites_file=write_sites_file(tmp_path / "sites.yaml", site_url))
    ObjectStore(settings).ensure_bucket()
    day = dt.date(2026, 10, 2)
    uploads_seen = threading.Event()

    def cut_after_some_uploads() -> None:
        engine = get_engine(settings.database_url)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(text("SELECT count(*) FROM image WHERE status = 'accepted'")).scalar() >= 5:
                    break
            time.sleep(0.05)
        s3_proxy.cut()
        uploads_seen.set()

    cutter = threading.Thread(target=cut_after_some_uploads, daemon=True)
    cutter.start()
    t0 = time.monotonic()
    with pytest.raises(CrawlError) as failure:
        run_crawl(Resources.from_settings(settings), "fixture", day, timeout_s=90)
    first_run_s = time.monotonic() - t0
    cutter.join(timeout=10)
    assert uploads_seen.is_set()
    message = str(failure.value)
    assert "failed" in message and ("object store" in message or "pipeline_error" in message), message[:2000]
    engine = get_engine(settings.database_url)
    with engine.connect() as conn:
        first_accepted = conn.execute(text("SELECT count(*) FROM image WHERE status = 'accepted'")).scalar()
        assert conn.execute(text("SELECT status FROM crawl_run ORDER BY id DESC LIMIT 1")).scalar() == "failed"
    assert 5 <= first_accepted < expected

    s3_proxy.restore()
    summary = run_crawl(Resources.from_settings(settings), "fixture", day, timeout_s=300)  # Airflow's retry of the task
    assert summary.status == "succeeded"
    store = ObjectStore(settings)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT sha256, model_key FROM image WHERE status = 'accepted'")).all()
        assert conn.execute(text("SELECT count(*) - count(DISTINCT sha256) FROM image")).scalar() == 0
    assert len(rows) == expected
    assert all(store.exists(r.model_key) for r in rows)  # every recorded image has its object
    print(f"S3 outage during crawl: first run stored {first_accepted}/{expected} and ended after "
          f"{first_run_s:.0f}s; {time.monotonic() - started:.0f}s")
    # The crawl stops by itself once the store fails, instead of hanging in "Closing spider".
    assert "timed out" not in message and first_run_s < 80, message[-1500:]


def _export_fixture(settings: Settings, day: dt.date, n: int) -> None:
    _seed(settings, day, n)
    plan = plan_partition(Resources.from_settings(settings), Partition(day, day + dt.timedelta(days=1)), RunParams())
    for batch in plan.batches:
        run_batch(Resources.from_settings(settings), batch["image_ids"], RunParams())


def _release_state(settings: Settings, name: str) -> tuple[str | None, bool, bool]:
    with get_engine(settings.database_url).connect() as conn:
        status = conn.execute(text("SELECT status FROM export WHERE name = :n"), {"n": name}).scalar()
    manifest = ObjectStore(settings).exists(f"exports/{name}/manifest.json")
    return status, manifest, (settings.release_dir / name).exists()


def test_s3_outage_during_export_presents_no_release_and_the_rerun_publishes(
        settings: Settings, s3_proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuwen.release import export as export_module
    from tuwen.release.export import ExportError, ReleaseParams, write_release

    started = time.monotonic()
    settings = dataclasses.replace(settings, s3_endpoint=f"127.0.0.1:{s3_proxy.port}")
    ObjectStore(settings).ensure_bucket()
    _export_fixture(settings, dt.date(2026, 10, 3), 12)
    params = ReleaseParams(name="s3-outage", qc_statuses=("pending", "passed"))
    uploads = {"n": 0}
    real_put_file = export_module.ObjectStore.put_file

    def put_file_then_cut(self: ObjectStore, key: str, path: Path, content_type: str = "") -> None:
        uploads["n"] += 1
        if uploads["n"] == 4:
            s3_proxy.cut()  # the endpoint goes away in the middle of publishing
        real_put_file(self, key, path, content_type)

    monkeypatch.setattr(export_module.ObjectStore, "put_file", put_file_then_cut)
    t0 = time.monotonic()
    with pytest.raises(ExportError, match="not published"):
        write_release(Resources.from_settings(settings), params)
    assert time.monotonic() - t0 < 60  # bounded retries, not a hang
    s3_proxy.restore()
    monkeypatch.setattr(export_module.ObjectStore, "put_file", real_put_file)
    assert _release_state(settings, params.name) == ("failed", False, False)
    assert not list(settings.release_dir.glob(".tmp-*"))  # the staging folder is gone too

    result = write_release(Resources.from_settings(settings), params)
    assert _release_state(settings, params.name) == ("published", True, True)
    assert result.n_samples > 0
    print(f"S3 outage during export: {time.monotonic() - started:.0f}s")


# --- VLM endpoint down for the whole run -------------------------------------------------------


def test_vlm_down_for_the_whole_run_ends_quickly_and_marks_nothing_done(settings: Settings) -> None:
    from tuwen.synthesis.vlm_client import CircuitOpenError

    day, n = dt.date(2026, 10, 4), 40
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    down = dataclasses.replace(settings, vlm_base_url=dead, batch_size=n)
    ObjectStore(settings).ensure_bucket()
    _seed(down, day, n)
    plan = plan_partition(Resources.from_settings(down), Partition(day, day + dt.timedelta(days=1)), RunParams())
    [batch] = plan.batches
    t0 = time.monotonic()
    with pytest.raises(CircuitOpenError) as failure:
        run_batch(Resources.from_settings(down), batch["image_ids"], RunParams())
    elapsed = time.monotonic() - t0
    assert elapsed < 60, f"the breaker took {elapsed:.0f}s"
    assert "looks down" in str(failure.value) and dead in str(failure.value)
    counts = _counts(settings.database_url, day)
    assert counts["done"] == 0 and counts["samples"] == 0
    # With the endpoint back, the same batch completes: nothing was lost by the outage.
    run_batch(Resources.from_settings(settings), batch["image_ids"], RunParams())
    counts = _counts(settings.database_url, day)
    assert counts["done"] == counts["generations"] == n and counts["max_per_image"] == 1
    print(f"VLM down: breaker opened after {elapsed:.1f}s: {str(failure.value)[:300]}")


# --- the release folder's disk fills up -----------------------------------------------------------


@contextlib.contextmanager
def tiny_disk(path: Path, size: str = "256k") -> Iterator[str]:
    """A 256 KiB tmpfs at `path` (we run as root); without mount rights, a file-size limit instead."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, check=False).returncode == 0
    if mounted:
        try:
            yield "tmpfs"
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))
    try:
        yield "RLIMIT_FSIZE"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_release_disk_full_fails_clearly_and_leaves_no_partial_release(settings: Settings,
                                                                     tmp_path: Path) -> None:
    from tuwen.release.export import ExportError, ReleaseParams, write_release

    releases = tmp_path / "full-disk"
    settings = dataclasses.replace(settings, release_dir=releases)
    ObjectStore(settings).ensure_bucket()
    _export_fixture(settings, dt.date(2026, 10, 5), 12)  # ~12 x 15 KB of images: more than the disk
    params = ReleaseParams(name="disk-full", qc_statuses=("pending", "passed"))
    with tiny_disk(releases) as how:
        with pytest.raises(ExportError) as failure:
            write_release(Resources.from_settings(settings), params)
        leftovers = [p for p in releases.rglob("*")]
    message = str(failure.value)
    assert "not published" in message and ("No space left" in message or "File too large" in message), message
    assert leftovers == [], leftovers
    assert _release_state(settings, params.name) == ("failed", False, False)
    print(f"disk full ({how}): {message[:200]}")
