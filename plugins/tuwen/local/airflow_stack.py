"""Run tuwen's DAGs with a local Airflow: `airflow dags test` for one run, or a whole running Airflow.

`dags_test` (used by `make demo` and the end-to-end tests) runs one DAG run in-process. `AirflowStack`
(used by `make up` and the operations tests) runs the real thing: api-server with the UI and REST API,
scheduler, dag-processor, triggerer, and LocalExecutor or CeleryExecutor with N workers.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuwen.config import REPO_ROOT
from tuwen.local.services import BackgroundService

VLM_POOL = "vlm"
CURATE_POOL = "curate"  # the crawl DAG's mapped curation tasks (CPU-bound: OCR, filters, the nudity detector)


class AirflowRunError(RuntimeError):
    """A DAG run or an Airflow command failed; the message carries the log location and tail."""


def airflow_env(metadata_url: str, airflow_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Airflow commands: tuwen's DAGs, a PostgreSQL metadata DB, no examples."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "GX_ANALYTICS_ENABLED": "False",
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }
    return env


def _airflow(args: list[str], env: dict[str, str], log_file: Path, timeout_s: float) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    airflow = str(Path(sys.executable).parent / "airflow")
    with open(log_file, "wb") as log:
        try:
            result = subprocess.run([airflow, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise AirflowRunError(f"`airflow {' '.join(args)}` ran past {timeout_s:.0f}s; log: {log_file}") from None
    if result.returncode != 0:
        tail = log_file.read_text(errors="replace")[-4000:]
        raise AirflowRunError(f"`airflow {' '.join(args)}` failed (exit {result.returncode}); log: {log_file}\n{tail}")


def migrate_metadata(env: dict[str, str], log_dir: Path) -> None:
    _airflow(["db", "migrate"], env, log_dir / "airflow-db-migrate.log", timeout_s=300)


def ensure_pool(env: dict[str, str], log_dir: Path, slots: int) -> None:
    _airflow(["pools", "set", VLM_POOL, str(slots), "tuwen: VLM requests across all DAG runs"], env,
             log_dir / "airflow-pools.log", timeout_s=120)
    _airflow(["pools", "set", CURATE_POOL, str(slots), "tuwen: curation tasks across all DAG runs"], env,
             log_dir / "airflow-pools-curate.log", timeout_s=120)


def dags_test(dag_id: str, logical_date: dt.date, env: dict[str, str], log_dir: Path,
              conf: dict | None = None, timeout_s: float = 1200) -> Path:
    """Run one DAG run in-process with `airflow dags test`; raise with the log tail if it fails."""
    log_file = log_dir / f"{dag_id}-{logical_date.isoformat()}.log"
    args = ["dags", "test", dag_id, logical_date.isoformat()]
    if conf:
        args += ["--conf", json.dumps(conf)]
    _airflow(args, env, log_file, timeout_s)
    return log_file


# --- a running Airflow: api-server, scheduler, dag-processor, triggerer, Celery workers -------------

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
CELERY_EXECUTOR = "airflow.providers.celery.executors.celery_executor.CeleryExecutor"
DEFAULT_AIRFLOW_USER = "tuwen"  # not Airflow's "admin": a default name is half of a default credential


def worker_hostname() -> str:
    """`[core] hostname_callable` for workers sharing one machine: the recorded TI hostname names the worker.

    In production each Celery worker is its own container with its own hostname; locally two workers
    share the machine's name, so the worker's node name (TUWEN_AIRFLOW_NODE) is put in front of it.
    """
    import socket

    from tuwen.config import StackSettings

    node = StackSettings.from_env().airflow_node
    fqdn = socket.getfqdn()
    return f"{node}@{fqdn}" if node else fqdn


def settings_env(settings: Any) -> dict[str, str]:
    """The TUWEN_* variables for `settings` (kept for callers; `Settings.to_env` is the one definition)."""
    return settings.to_env()


def connections_env(settings: Any) -> dict[str, str]:
    """Airflow connections from tuwen's config, as AIRFLOW_CONN_* variables (JSON form).

    Environment connections are never written to the metadata DB, so their secrets live only in the
    process environment (in production: the orchestrator's secret store), not in a table or the UI.
    """
    from sqlalchemy.engine import make_url

    db = make_url(settings.database_url)
    scheme = "https" if settings.s3_secure else "http"
    return {
        "AIRFLOW_CONN_TUWEN_LINEAGE": json.dumps({
            "conn_type": "postgres", "host": db.host, "port": db.port, "login": db.username,
            "password": db.password, "schema": db.database}),
        "AIRFLOW_CONN_TUWEN_S3": json.dumps({
            "conn_type": "aws", "login": settings.s3_access_key, "password": settings.s3_secret_key,
            "extra": {"endpoint_url": f"{scheme}://{settings.s3_endpoint}", "region_name": settings.s3_region,
                      "bucket": settings.s3_bucket}}),
        "AIRFLOW_CONN_TUWEN_VLM": json.dumps({
            "conn_type": "http", "host": settings.vlm_base_url, "password": settings.vlm_api_key,
            "extra": {"model": settings.vlm_model}}),
    }


def _pid_alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@dataclass
class ProcessService(BackgroundService):
    """A BackgroundService whose readiness is a probe (a heartbeat, a log line, a PING), not an HTTP URL.

    With `require_own_process` the service counts as up only while the process from its own pid file
    lives: a stale heartbeat of an earlier, dead process must not pass for a running one.
    """

    probe: Callable[[], bool] = lambda: True
    require_own_process: bool = True

    def is_up(self) -> bool:
        if self.require_own_process and not _pid_alive(self.pid_file):
            return False
        try:
            return self.probe()
        except Exception:  # a probe that cannot tell yet means "not up yet"
            return False


def _redis_ping(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_service(port: int, run_dir: Path) -> ProcessService:
    """Redis for the Celery broker; a Redis already answering on the port is used, never stopped."""
    return ProcessService(
        name="redis",
        argv=["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
              "--protected-mode", "yes"],
        health_url=f"redis://127.0.0.1:{port}",
        run_dir=run_dir,
        probe=lambda: _redis_ping(port),
        require_own_process=False,
        start_timeout_s=20,
    )


def _log_has(path: Path, needle: str, offset: int) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return needle.encode() in handle.read()
    except OSError:
        return False


def _secret(path: Path, make: Callable[[], str]) -> str:
    """A secret kept in a 0600 file under AIRFLOW_HOME, created on first use, stable across restarts."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


@dataclass
class AirflowStack:
    """A real Airflow 3.3 on this machine: api-server, scheduler, dag-processor, triggerer, Celery workers.

    Everything is configured through the environment (no airflow.cfg edits): PostgreSQL metadata DB,
    SimpleAuthManager with one admin user whose password tuwen writes into the passwords file itself
    (so Airflow never generates and prints one), a JWT secret shared by all components, the `vlm`
    pool, and tuwen's connections as AIRFLOW_CONN_* variables. Each component is a BackgroundService
    with a pid file and a log under `run_dir`, so `down()` stops exactly what `up()` started.
    """

    metadata_url: str
    home: Path
    run_dir: Path
    user: str
    password: str
    api_port: int = 8080
    executor: str = "local"  # "local" (LocalExecutor) or "celery" (CeleryExecutor + Redis + workers)
    workers: int = 2
    worker_concurrency: int = 2
    redis_port: int = 6379
    pool_slots: int = 8
    parallelism: int = 16  # the pool vlm's 8 and room for the runs' other tasks
    curate_pool_slots: int = 4  # CPU-bound curation tasks (docker compose: CURATE_POOL_SLOTS, default 4)
    settings: Any = None  # tuwen Settings handed to tasks as TUWEN_*; None: tasks inherit os.environ
    extra_env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        if self.executor not in ("local", "celery"):
            raise AirflowRunError(f"executor must be 'local' or 'celery', got {self.executor!r}")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def env(self) -> dict[str, str]:
        from cryptography.fernet import Fernet

        secrets_dir = self.home / "secrets"
        extra = {
            "AIRFLOW__CORE__EXECUTOR": CELERY_EXECUTOR if self.executor == "celery" else "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # a fresh install crawls nothing by surprise
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.user}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__CORE__FERNET_KEY": _secret(secrets_dir / "fernet_key", lambda: Fernet.generate_key().decode()),
            "AIRFLOW__API_AUTH__JWT_SECRET": _secret(secrets_dir / "jwt_secret", lambda: secrets.token_hex(32)),
            "AIRFLOW__API__SECRET_KEY": _secret(secrets_dir / "api_secret_key", lambda: secrets.token_hex(32)),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__WORKERS": "1",  # 2 cores: one uvicorn worker is plenty for a local UI
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            # New DAG files show up within seconds instead of the production-friendly 5 minutes.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            # A worker killed outright is noticed after this long, then its tasks are retried.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            **(self.settings.to_env() if self.settings is not None else {}),
            **(connections_env(self.settings) if self.settings is not None else {}),
        }
        if self.executor == "celery":
            broker_db = self.metadata_url.replace("postgresql+psycopg2://", "postgresql://", 1)
            extra |= {
                "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{broker_db}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            }
        return airflow_env(self.metadata_url, self.home, extra={**extra, **self.extra_env})

    def write_passwords_file(self) -> None:
        """The SimpleAuthManager passwords file holds exactly our user and password (mode 0600)."""
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.passwords_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({self.user: self.password}, handle)
        os.chmod(self.passwords_file, 0o600)

    def _health(self) -> dict[str, Any]:
        import httpx

        return httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=3).json()

    def _component_healthy(self, key: str) -> bool:
        return (self._health().get(key) or {}).get("status") == "healthy"

    def services(self, env: dict[str, str] | None = None) -> list[BackgroundService]:
        """Every process of the stack in start order (redis and workers only with Celery)."""
        env = env if env is not None else {}
        airflow = str(Path(sys.executable).parent / "airflow")
        health = f"{self.base_url}/api/v2/monitor/health"

        def component(name: str, argv: list[str], key: str) -> ProcessService:
            return ProcessService(name=f"airflow-{name}", argv=[airflow, *argv], health_url=f"{health} ({key})",
                                  run_dir=self.run_dir, env=env, start_timeout_s=self.start_timeout_s,
                                  probe=lambda: self._component_healthy(key))

        found: list[BackgroundService] = []
        if self.executor == "celery":
            found.append(redis_service(self.redis_port, self.run_dir))
        found.append(BackgroundService(
            name="airflow-api-server", argv=[airflow, "api-server", "-H", "127.0.0.1", "-p", str(self.api_port),
                                             "-w", "1"],
            health_url=health, run_dir=self.run_dir, env=env, start_timeout_s=self.start_timeout_s))
        found.append(component("dag-processor", ["dag-processor"], "dag_processor"))
        # Logs are files under one base_log_folder the api-server reads directly: no log-serving ports.
        found.append(component("scheduler", ["scheduler", "--skip-serve-logs"], "scheduler"))
        found.append(component("triggerer", ["triggerer", "--skip-serve-logs"], "triggerer"))
        if self.executor == "celery":
            for i in range(1, self.workers + 1):
                found.append(self._worker(airflow, env, f"w{i}"))
        return found

    def _worker(self, airflow: str, env: dict[str, str], node: str) -> ProcessService:
        service = ProcessService(
            name=f"airflow-celery-worker-{node}",
            argv=[airflow, "celery", "worker", "--celery-hostname", f"{node}@%h", "--concurrency",
                  str(self.worker_concurrency), "--skip-serve-logs", "--without-mingle", "--without-gossip"],
            health_url=f"celery worker {node}",
            run_dir=self.run_dir,
            env={**env, "TUWEN_AIRFLOW_NODE": node,
                 "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tuwen.local.airflow_stack.worker_hostname"},
            start_timeout_s=self.start_timeout_s,
        )
        offset = service.log_file.stat().st_size if service.log_file.exists() else 0
        # Celery prints "<name> ready." once it consumes from the broker.
        service.probe = lambda: _log_has(service.log_file, f"{node}@", offset) and _log_has(
            service.log_file, " ready.", offset)
        return service

    def up(self) -> list[str]:
        """Migrate, configure (auth, pool), then start every component and wait until each is healthy."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.write_passwords_file()
        env = self.env()
        messages = []
        migrate_metadata(env, self.log_dir)
        messages.append(f"airflow metadata DB: migrated ({self.metadata_url.rsplit('/', 1)[-1]})")
        try:
            for service in self.services(env):
                messages.append(service.start())
                if service.name == "airflow-api-server":
                    # Through the REST API: the CLI would cost another Airflow interpreter start, the slowest step here.
                    api = self.client()
                    try:
                        api.set_pool(VLM_POOL, self.pool_slots, "tuwen: VLM batch tasks across all runs")
                        api.set_pool(CURATE_POOL, self.curate_pool_slots, "tuwen: curation tasks across all runs")
                    finally:
                        api.close()
                    messages.append(f"airflow pools {VLM_POOL}: {self.pool_slots} slots, {CURATE_POOL}: "
                                    f"{self.curate_pool_slots} slots")
        except BaseException:
            self.down()
            raise
        return messages

    def down(self) -> list[str]:
        """Stop in reverse start order: workers before the scheduler, the api-server last but Redis."""
        messages = []
        services = self.services()
        known = {s.name for s in services}
        # Workers from an earlier `up` with more workers than this one still get stopped.
        for pid_file in sorted(self.run_dir.glob("airflow-celery-worker-*.pid")):
            name = pid_file.stem
            if name not in known:
                services.append(BackgroundService(name=name, argv=[], health_url="", run_dir=self.run_dir))
        from concurrent.futures import ThreadPoolExecutor

        workers = [s for s in services if s.name.startswith("airflow-celery-worker-")]
        core = [s for s in services if s not in workers and s.name != "redis"]
        last = [s for s in services if s.name == "redis"]
        # Each stop waits up to 5 s for a graceful exit; in parallel, a stack stops in seconds, not a minute.
        with ThreadPoolExecutor(max_workers=8) as pool:
            for group in (workers, core, last):
                messages += list(pool.map(lambda s: s.stop(), group))
        return messages

    def client(self) -> AirflowAPI:
        return AirflowAPI(self.base_url, self.user, self.password)


class AirflowAPI:
    """Airflow's REST API v2 with a JWT from POST /auth/token (SimpleAuthManager)."""

    def __init__(self, base_url: str, user: str, password: str, timeout_s: float = 30.0) -> None:
        import httpx

        self.base_url = base_url
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s)
        response = self._http.post("/auth/token", json={"username": user, "password": password})
        if response.status_code != 201:
            raise AirflowRunError(f"login as {user!r} at {base_url} failed: HTTP {response.status_code}")
        self._http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, "/api/v2" + path, **kwargs)
        if response.status_code >= 400:
            raise AirflowRunError(f"{method} {path}: HTTP {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, json=body)

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PATCH", path, json=body)

    def set_pool(self, name: str, slots: int, description: str) -> None:
        """Create or resize a pool (idempotent)."""
        body = {"name": name, "slots": slots, "description": description, "include_deferred": False}
        response = self._http.post("/api/v2/pools", json=body)
        if response.status_code == 409:
            self.patch(f"/pools/{name}", body)
        elif response.status_code >= 400:
            raise AirflowRunError(f"creating pool {name}: HTTP {response.status_code}: {response.text[:500]}")

    def close(self) -> None:
        self._http.close()


# --- `tuwen up` / `tuwen down` ------------------------------------------------------------------


@dataclass(frozen=True)
class StackOptions:
    """How `tuwen up` runs Airflow; from TUWEN_AIRFLOW_* variables, overridable on the command line."""

    executor: str = "local"
    workers: int = 2
    worker_concurrency: int = 4
    port: int = 8080
    redis_port: int = 6379
    pool_slots: int = 8
    user: str = DEFAULT_AIRFLOW_USER
    password: str = field(default="", repr=False)  # empty: generated once into the run folder

    @classmethod
    def from_env(cls) -> StackOptions:
        from tuwen.config import StackSettings

        stack = StackSettings.from_env()  # a bad value is a ConfigError naming its variable
        return cls(
            executor=stack.airflow_executor, workers=stack.airflow_workers,
            worker_concurrency=stack.airflow_worker_concurrency, port=stack.airflow_port,
            redis_port=stack.redis_port, pool_slots=stack.vlm_pool_slots, user=stack.airflow_user,
            password=stack.airflow_password,
        )


def airflow_login(run_dir: Path, options: StackOptions) -> tuple[str, str, bool]:
    """(user, password, generated): the options' (TUWEN_AIRFLOW_USER/PASSWORD), else a random password
    kept in run_dir."""
    user, password = options.user, options.password
    if password:
        return user, password, False
    path = run_dir / "airflow" / "secrets" / "admin_password"
    generated = not path.exists()
    return user, _secret(path, lambda: secrets.token_urlsafe(18)), generated


def _stack(settings: Any, run_dir: Path, metadata_url: str, options: StackOptions, user: str,
           password: str) -> AirflowStack:
    return AirflowStack(
        metadata_url=metadata_url, home=run_dir / "airflow", run_dir=run_dir, user=user, password=password,
        api_port=options.port, executor=options.executor, workers=options.workers,
        worker_concurrency=options.worker_concurrency, redis_port=options.redis_port,
        pool_slots=options.pool_slots, settings=settings,
    )


def stack_up(settings: Any, run_dir: Path, metadata_url: str, options: StackOptions) -> list[str]:
    """`tuwen up`: the local services, then Airflow; prints where the UI is and how to log in."""
    from tuwen.local.stack import LocalStack

    messages = list(LocalStack(settings, run_dir=run_dir).up())
    user, password, generated = airflow_login(run_dir, options)
    stack = _stack(settings, run_dir, metadata_url, options, user, password)
    # What was started, so `tuwen down` stops exactly that even if the variables changed since.
    (run_dir / "airflow-stack.json").write_text(json.dumps(
        {"executor": options.executor, "workers": options.workers, "port": options.port,
         "redis_port": options.redis_port, "metadata_url_db": metadata_url.rsplit("/", 1)[-1]}))
    messages += stack.up()
    how = (f"password in {run_dir / 'airflow' / 'secrets' / 'admin_password'}"
           + (f" (generated now: {password})" if generated else "")
           if not options.password else "password from TUWEN_AIRFLOW_PASSWORD")
    messages += [
        f"Airflow {options.executor} executor"
        + (f" with {options.workers} Celery workers x {options.worker_concurrency}" if options.executor == "celery"
           else ""),
        f"Airflow UI: {stack.base_url}  (user {user}; {how})",
        f"REST API:   {stack.base_url}/api/v2  (token: POST {stack.base_url}/auth/token)",
        "DAGs start paused: unpause tuwen_crawl and tuwen_synthesize in the UI for daily runs.",
    ]
    return messages


def stack_down(settings: Any, run_dir: Path, metadata_url: str) -> list[str]:
    """`tuwen down`: stop the Airflow components and the local services this run dir started."""
    from tuwen.local.stack import LocalStack

    state_file = run_dir / "airflow-stack.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    options = StackOptions(executor=state.get("executor", "celery"), workers=state.get("workers", 0),
                           port=state.get("port", 8080), redis_port=state.get("redis_port", 6379))
    # Celery in the fallback, so a lost state file still stops Redis and any worker pid files.
    stack = _stack(settings, run_dir, metadata_url, options, "-", "-")
    messages = stack.down()
    messages += LocalStack(settings, run_dir=run_dir).down()
    state_file.unlink(missing_ok=True)
    return messages
