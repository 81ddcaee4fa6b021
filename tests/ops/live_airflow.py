"""A running Airflow 3.3 shared by the operations tests (loaded with `pytest_plugins`).

One session-wide stack, because each start costs about a minute and a half on two cores: the
api-server (UI + REST API, SimpleAuthManager with a non-default login), scheduler, dag-processor,
triggerer, CeleryExecutor with its own Redis and two `airflow celery worker` processes (w1, w2,
concurrency 2), pool `vlm`, a fresh metadata DB and lineage DB, its own bucket and its own stand-in
VLM (so its request counters belong to these tests only). Everything is torn down at the end and
the test asserts no process of the stack is left.

Tests keep to their own crawl dates, so they share the lineage DB without seeing each other's images.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from bench.common import seed_images
from tests.conftest import STANDIN_MODEL, _db_url, write_sites_file
from tuwen.config import Settings
from tuwen.db.migrate import upgrade
from tuwen.db.session import get_engine
from tuwen.local.airflow_stack import AirflowAPI, AirflowRunError, AirflowStack
from tuwen.local.services import drop_database, ensure_database, free_port, standin_vlm_service
from tuwen.storage import ObjectStore

SYNTH = "tuwen_synthesize"
CRAWL = "tuwen_crawl"
BATCH_SIZE = 4  # small batches: a 32-image partition maps into 8 tasks
# Distinctive secrets, so a grep of every log proves none of them was written anywhere.
SECRETS = {
    "s3_secret_key": "s3secret-" + secrets.token_hex(8),
    "vlm_api_key": "vlmkey-" + secrets.token_hex(8),
    "airflow_password": "afpass-" + secrets.token_hex(8),
    "db_password": "dbpass-" + secrets.token_hex(8),  # trust auth ignores it; it still must not leak
}


@dataclass
class LiveAirflow:
    settings: Settings
    stack: AirflowStack
    api: AirflowAPI
    standin: str  # http://127.0.0.1:PORT
    run_dir: Path
    secrets: dict[str, str] = dataclasses.field(default_factory=lambda: dict(SECRETS))
    synth: str = SYNTH

    # --- stand-in --------------------------------------------------------------------------
    def standin_requests(self) -> int:
        return httpx.get(f"{self.standin}/stand-in/stats", timeout=5).json()["requests"]

    def set_standin_faults(self, **config: Any) -> None:
        httpx.post(f"{self.standin}/stand-in/faults", json=config, timeout=5).raise_for_status()

    # --- lineage ---------------------------------------------------------------------------
    def scalar(self, sql: str, **params: Any) -> Any:
        with get_engine(self.settings.database_url).connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with get_engine(self.settings.database_url).connect() as conn:
            return list(conn.execute(text(sql), params).all())

    def seed(self, day: dt.date, n: int) -> list[int]:
        return seed_small_images(self.settings, day, n)

    # --- Airflow ---------------------------------------------------------------------------
    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = self.api.post(f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def wait_run(self, dag_id: str, run_id: str, timeout_s: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.api.get(f"/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(1)
        raise AssertionError(f"{dag_id} run {run_id} not finished after {timeout_s:.0f}s: {run['state']}")

    def task_instances(self, dag_id: str, run_id: str = "~", **params: Any) -> list[dict[str, Any]]:
        return self.api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=1000, **params)[
            "task_instances"]

    def logs_text(self) -> str:
        """Every log this stack wrote: components, task logs, migrations."""
        chunks = []
        for path in sorted(self.run_dir.rglob("*")):
            if path.is_file() and (path.suffix in (".log", ".json") or "logs" in path.parts):
                if path.name == "simple_auth_manager_passwords.json" or "secrets" in path.parts:
                    continue  # where the password is kept on purpose (mode 0600), not a log
                chunks.append(path.read_text(errors="replace"))
        return "\n".join(chunks)


def seed_small_images(settings: Settings, day: dt.date, n: int) -> list[int]:
    """n distinct small JPEGs (unique per day) stored as model-ready copies, accepted for crawl date `day`."""
    return seed_images(settings, n, day, width=336, height=252, rng_seed=day.toordinal(), spider="ops-test")


def _stack_pids(run_dir: Path) -> list[int]:
    return [int(p.read_text()) for p in run_dir.glob("*.pid") if p.read_text().strip()]


def live_group_members(pgid: int) -> list[int]:
    """Processes of process group `pgid` that still run (zombies awaiting their parent's reap excluded)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


@pytest.fixture(scope="session")
def live_airflow(postgres: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory,
                 fixture_site: tuple[str, Path]) -> Iterator[LiveAirflow]:
    started = time.monotonic()
    run_dir = tmp_path_factory.mktemp("live-airflow")
    admin = postgres.rsplit("/", 1)[0]
    lineage = _db_url(f"tuwen_ops_{uuid.uuid4().hex[:10]}").replace(
        "postgres@", f"postgres:{SECRETS['db_password']}@", 1)
    metadata = _db_url(f"airflow_ops_{uuid.uuid4().hex[:10]}")
    assert admin  # the admin URL's server hosts both databases
    ensure_database(lineage)
    upgrade(lineage)
    ensure_database(metadata)
    standin_port = free_port()
    standin = standin_vlm_service(standin_port, STANDIN_MODEL, run_dir)
    stack: AirflowStack | None = None
    api: AirflowAPI | None = None
    try:
        standin.start()
        settings = dataclasses.replace(
            Settings(), database_url=lineage, s3_endpoint=s3_endpoint,
            s3_bucket=f"tuwen-ops-{uuid.uuid4().hex[:8]}", s3_secret_key=SECRETS["s3_secret_key"],
            vlm_base_url=f"http://127.0.0.1:{standin_port}/v1", vlm_model=STANDIN_MODEL,
            vlm_api_key=SECRETS["vlm_api_key"], vlm_max_in_flight=2, vlm_timeout_s=20, batch_size=BATCH_SIZE,
            # Every batch its own mapped task (up to 8): the Celery test needs more tasks than one worker's slots.
            synthesis_tasks=8,
            release_dir=run_dir / "releases", ocr_enabled=False,
            # The fixture website, for the tests that run tuwen_crawl (the curation test).
            sites_file=write_sites_file(run_dir / "sites.yaml", fixture_site[0]),
        )
        ObjectStore(settings).ensure_bucket()
        stack = AirflowStack(
            metadata_url=metadata, home=run_dir / "airflow", run_dir=run_dir, user="ops-admin",
            password=SECRETS["airflow_password"], api_port=free_port(), executor="celery", workers=2,
            worker_concurrency=2, redis_port=free_port(), pool_slots=4, settings=settings,
            extra_env={"TUWEN_RETRY_DELAY_S": "2", "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30"},
        )
        for line in stack.up():
            print(line)
        api = stack.client()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if api.get("/dags", tags="tuwen")["total_entries"] >= 3:
                break
            time.sleep(2)
        else:
            raise AirflowRunError("the dag-processor did not serialize the three tuwen DAGs within 120s")
        api.patch(f"/dags/{SYNTH}", {"is_paused": False})
        print(f"live Airflow ready in {time.monotonic() - started:.0f}s at {stack.base_url}")
        yield LiveAirflow(settings, stack, api, f"http://127.0.0.1:{standin_port}", run_dir)
    finally:
        pids = _stack_pids(run_dir)
        if api is not None:
            api.close()
        if stack is not None:
            for line in stack.down():
                print(line)
        standin.stop()
        get_engine(lineage).dispose()
        create_engine(lineage).dispose()
        drop_database(lineage)
        drop_database(metadata)
        left = [member for pid in pids for member in live_group_members(pid)]
        assert not left, f"processes of the live Airflow still running: {left}"
