"""`make services-down && make up`, as far as the local services go: the service manager stops and starts
the S3 server, the stand-in and the fixture site on one run dir, and the bucket still holds every
object the lineage rows point at, so a synthesis over an earlier crawl date finds every image."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from bench.common import seed_images
from tuwen.cli.status import collect_status
from tuwen.config import Settings
from tuwen.domain import Partition
from tuwen.local.services import drop_database, free_port
from tuwen.local.stack import LocalStack
from tuwen.resources import Resources
from tuwen.synthesis.keys import RunParams
from tuwen.synthesis.planning import plan_partition
from tuwen.synthesis.runner import run_batch

EARLIER = dt.date(2026, 11, 5)


@pytest.fixture
def stack(lineage_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStack]:
    """A local stack of this test's own: its own ports, run dir, bucket and (empty) Airflow metadata DB."""
    airflow_db = lineage_db.rsplit("/", 1)[0] + f"/tuwen_test_airflow_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", airflow_db)
    settings = dataclasses.replace(
        Settings(), database_url=lineage_db, s3_endpoint=f"127.0.0.1:{free_port()}", s3_bucket="tuwen-restart",
        vlm_base_url=f"http://127.0.0.1:{free_port()}/v1", vlm_model="tuwen-standin-vlm",
        release_dir=tmp_path / "releases", ocr_enabled=False)
    local = LocalStack(settings, run_dir=tmp_path / "run", fixture_site_port=free_port())
    try:
        yield local
    finally:
        local.down()
        drop_database(airflow_db)


def test_services_down_and_up_keep_the_objects_and_an_earlier_date_still_synthesizes(stack: LocalStack) -> None:
    stack.up()
    resources = Resources.from_settings(stack.settings)
    image_ids = seed_images(resources.settings, 12, EARLIER, width=96, height=72)
    before = sorted(resources.store.list_keys("model/"))
    assert len(before) == 12

    stopped = stack.down()
    assert all(": stopped" in line or ": killed" in line for line in stopped), stopped
    assert not any(service.is_up() for service in stack.services())
    stack.up()

    assert sorted(resources.store.list_keys("model/")) == before
    assert collect_status(resources).store.missing_images == 0
    params = RunParams()
    plan = plan_partition(resources, Partition(EARLIER, EARLIER + dt.timedelta(days=1)), params)
    assert sorted(i for batch in plan.batches for i in batch["image_ids"]) == sorted(image_ids)
    results = [run_batch(resources, batch["image_ids"], params) for batch in plan.batches]
    assert sum(r.succeeded + r.unparseable for r in results) == 12 and sum(r.failed for r in results) == 0
    with resources.engine.connect() as conn:
        statuses = Counter(conn.execute(text("SELECT coalesce(error_type, status) FROM generation")).scalars())
    assert "image_missing" not in statuses and sum(statuses.values()) == 12
