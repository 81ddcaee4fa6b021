"""Local services the demo and tests need, started by tuwen itself when they are not already running.

PostgreSQL: use a server that answers on the configured host/port, else start the machine's cluster
with `pg_ctlcluster`. S3: moto's server process speaking the S3 HTTP API (MinIO in production), its
objects kept under `<run dir>/s3-data` across restarts.
Stand-in VLM and fixture website: tuwen's own processes. Each start is idempotent and says what it
did; each failure says what to do.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql
from sqlalchemy.engine import make_url

from tuwen.config import REPO_ROOT

RUN_DIR = REPO_ROOT / ".run"


class ServiceError(RuntimeError):
    """A local service could not be started; the message says what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


@dataclass
class BackgroundService:
    """A long-running process with a pid file and a log file, considered up when `health_url` answers."""

    name: str
    argv: list[str]
    health_url: str
    run_dir: Path = RUN_DIR
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 60.0
    # The process when this object started it: a child that has exited stays a zombie, still a member
    # of its process group, until it is reaped, so `stop` reaps it to see the group gone.
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def is_up(self) -> bool:
        return _http_ok(self.health_url)

    def start(self) -> str:
        if self.is_up():
            return f"{self.name}: already running at {self.health_url}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            # A new session so the service outlives `make demo`'s shell and can be stopped as a group.
            process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        self.pid_file.write_text(str(process.pid))
        self.process = process
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                raise ServiceError(f"{self.name} exited with code {process.returncode}; log {self.log_file}:\n{tail}")
            if self.is_up():
                return f"{self.name}: started (pid {process.pid}) at {self.health_url}, log {self.log_file}"
            time.sleep(0.2)
        self.stop()
        raise ServiceError(f"{self.name} did not answer at {self.health_url} within {self.start_timeout_s:.0f}s; see {self.log_file}")

    def _group_alive(self, pid: int) -> bool:
        if self.process is not None and self.process.pid == pid:
            self.process.poll()
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> str:
        if not self.pid_file.exists():
            return f"{self.name}: not started by tuwen"
        pid = int(self.pid_file.read_text().strip() or 0)
        self.pid_file.unlink(missing_ok=True)
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return f"{self.name}: was not running"
        for _ in range(50):
            if not self._group_alive(pid):
                return f"{self.name}: stopped (pid {pid})"
            time.sleep(0.1)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:  # it finished stopping between the last look and now
            return f"{self.name}: stopped (pid {pid})"
        for _ in range(50):  # SIGKILL is not instant either; callers check that nothing is left
            if not self._group_alive(pid):
                break
            time.sleep(0.1)
        return f"{self.name}: killed (pid {pid})"


def s3_data_dir(run_dir: Path = RUN_DIR) -> Path:
    """Where the local S3 server keeps its buckets and objects across restarts."""
    return run_dir / "s3-data"


def s3_service(port: int, run_dir: Path = RUN_DIR, *, on_disk: bool = True) -> BackgroundService:
    """The local S3 server; `on_disk=False` keeps objects in memory only (the benchmarks: in production
    MinIO, on its own machine, does the writing, and on this 2-core machine the stand-in's disk writes
    would take CPU from the code being measured)."""
    data_dir = ["--data-dir", str(s3_data_dir(run_dir))] if on_disk else []
    return BackgroundService(
        name="s3-server",
        argv=[sys.executable, "-m", "tuwen.local.s3_server", "--host", "127.0.0.1", "--port", str(port), *data_dir],
        health_url=f"http://127.0.0.1:{port}/moto-api/",
        run_dir=run_dir,
    )


def standin_vlm_service(port: int, model: str, run_dir: Path = RUN_DIR, extra_args: list[str] | None = None,
                        *, contradiction_rate: float = 0.0) -> BackgroundService:
    """The stand-in VLM; `contradiction_rate` > 0 gives that share of its answers one known false
    statement (listed by GET /stand-in/injections) for tests of the faithfulness judge's plumbing."""
    rate_args = ["--contradiction-rate", repr(float(contradiction_rate))] if contradiction_rate else []
    return BackgroundService(
        name="standin-vlm",
        argv=[sys.executable, "-m", "tuwen.local.standin_vlm", "--host", "127.0.0.1", "--port", str(port), "--model", model,
              *rate_args, *(extra_args or [])],
        health_url=f"http://127.0.0.1:{port}/health",
        run_dir=run_dir,
    )


def fixture_site_service(site_dir: Path, port: int, run_dir: Path = RUN_DIR) -> BackgroundService:
    return BackgroundService(
        name="fixture-site",
        argv=[sys.executable, "-m", "tuwen.local.fixture_site", "serve", "--dir", str(site_dir), "--port", str(port)],
        health_url=f"http://127.0.0.1:{port}/robots.txt",
        run_dir=run_dir,
    )


# --- PostgreSQL -------------------------------------------------------------------------------


def _pg_params(database_url: str) -> dict[str, object]:
    url = make_url(database_url)
    return {"host": url.host or "127.0.0.1", "port": url.port or 5432, "user": url.username or "postgres",
            "password": url.password, "dbname": url.database}


def _pg_answers(database_url: str) -> bool:
    params = _pg_params(database_url)
    try:
        psycopg2.connect(
            host=params["host"], port=params["port"], user=params["user"], password=params["password"],
            dbname="postgres", connect_timeout=3,
        ).close()
        return True
    except psycopg2.OperationalError:
        return False


def ensure_postgres(database_url: str) -> str:
    """Make sure PostgreSQL answers for `database_url`, starting the machine's cluster if needed."""
    params = _pg_params(database_url)
    where = f"{params['host']}:{params['port']}"
    if _pg_answers(database_url):
        return f"postgresql: already running at {where}"
    if params["host"] not in ("127.0.0.1", "localhost", "::1"):
        raise ServiceError(f"PostgreSQL at {where} does not answer and is not local, so tuwen will not start it")
    if not shutil.which("pg_ctlcluster") or not shutil.which("pg_lsclusters"):
        raise ServiceError(
            "PostgreSQL is not installed on this machine. Install it with:\n"
            "  sudo apt-get update && sudo apt-get install -y postgresql\n"
            "or point TUWEN_DATABASE_URL at a running server."
        )
    clusters = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False).stdout
    started = []
    for line in clusters.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == str(params["port"]):
            version, name = fields[0], fields[1]
            result = subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"],
                capture_output=True, text=True, check=False,
            )
            if result.returncode != 0 and "already running" not in result.stderr:
                raise ServiceError(f"pg_ctlcluster {version} {name} start failed: {result.stderr.strip()}")
            started.append(f"{version}/{name}")
    if not started:
        raise ServiceError(
            f"no PostgreSQL cluster on port {params['port']} (pg_lsclusters shows:\n{clusters or '  none'}\n)"
            "Create one with `sudo pg_createcluster 15 main --start` or set TUWEN_DATABASE_URL."
        )
    for _ in range(60):
        if _pg_answers(database_url):
            return f"postgresql: started cluster {', '.join(started)} at {where}"
        time.sleep(0.5)
    raise ServiceError(f"PostgreSQL cluster {', '.join(started)} started but {where} does not answer")


def _admin_connection(params: dict[str, object]) -> Any:
    """An autocommit connection to the server's `postgres` database (CREATE/DROP DATABASE need one)."""
    conn = psycopg2.connect(host=params["host"], port=params["port"], user=params["user"],
                            password=params["password"], dbname="postgres", connect_timeout=5)
    conn.autocommit = True
    return conn


def ensure_database(database_url: str) -> bool:
    """Create the database named in `database_url` if missing; True when it was created."""
    params = _pg_params(database_url)
    conn = _admin_connection(params)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (params["dbname"],))
            if cur.fetchone():
                return False
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(params["dbname"]))))
            return True
    finally:
        conn.close()


def drop_database(database_url: str) -> None:
    params = _pg_params(database_url)
    conn = _admin_connection(params)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(params["dbname"]))))
    finally:
        conn.close()
