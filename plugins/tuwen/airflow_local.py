"""Run tuwen's DAGs with a local Airflow: the environment, metadata DB, pool, and `airflow dags test`.

Used by `make demo` and by the end-to-end tests, so both exercise Airflow itself, not a copy of it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from tuwen.config import REPO_ROOT

VLM_POOL = "vlm"


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


def dags_test(dag_id: str, logical_date: dt.date, env: dict[str, str], log_dir: Path,
              conf: dict | None = None, timeout_s: float = 1200) -> Path:
    """Run one DAG run in-process with `airflow dags test`; raise with the log tail if it fails."""
    log_file = log_dir / f"{dag_id}-{logical_date.isoformat()}.log"
    args = ["dags", "test", dag_id, logical_date.isoformat()]
    if conf:
        args += ["--conf", json.dumps(conf)]
    _airflow(args, env, log_file, timeout_s)
    return log_file
