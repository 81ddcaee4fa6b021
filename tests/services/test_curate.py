"""The curation stage against PostgreSQL and the S3 server: claims, verdicts with reasons and scores, bad
images recorded on themselves, personal data by kind only, the Chinese-text policy re-labelling without
new work, synthesis taking curated images only, and two workers sharing a partition."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import threading
from typing import Any

import pytest
from sqlalchemy import text

from bench.common import seed_images, set_ocr_text
from tuwen.curate import filters
from tuwen.curate.queries import counts
from tuwen.curate.run import apply_zh_policy, curate_partition, curate_pending
from tuwen.domain import Partition
from tuwen.resources import Resources
from tuwen.synthesis.keys import RunParams
from tuwen.synthesis.planning import plan_partition

DAY = dt.date(2026, 11, 25)
PHONE = "13912345678"
NEVER_UNSAFE = 0.0


def clean(_: Any) -> float:
    return NEVER_UNSAFE  # an injected detector: the repository holds no unsafe image to run NudeNet on


@pytest.fixture(autouse=True)
def bucket(resources: Resources) -> None:
    resources.store.ensure_bucket()


def verdicts(resources: Resources) -> dict[int, Any]:
    with resources.engine.connect() as conn:
        return {r.image_id: r for r in conn.execute(text("SELECT * FROM curation"))}


def test_verdicts_bad_images_and_personal_data(resources: Resources, caplog: pytest.LogCaptureFixture) -> None:
    ids = seed_images(resources.settings, 8, DAY, width=224, height=168, curated=False)
    missing, garbage, phone, flagged = ids[0], ids[1], ids[3], ids[4]
    with resources.engine.begin() as conn:
        conn.execute(text("UPDATE image SET model_key = 'model/gone.jpg' WHERE id = :i"), {"i": missing})
        key = conn.execute(text("SELECT model_key FROM image WHERE id = :i"), {"i": garbage}).scalar_one()
    resources.store.put_bytes(key, b"\xff\xd8 not a jpeg", "image/jpeg")
    set_ocr_text(resources.settings, {phone: f"订餐电话 {PHONE[:3]} {PHONE[3:7]} {PHONE[7:]}"})
    seen = iter(range(100))

    def scorer(_: Any) -> float:  # the third image the filters look at (ids[4]) is "unsafe"
        return 0.97 if next(seen) == 2 else 0.0

    caplog.set_level(logging.DEBUG)
    summary = curate_pending(resources, DAY, scorer=scorer,
                             lineage_ids={"dag_id": "tuwen_crawl", "run_id": "r1", "task_id": "curate", "map_index": 3})
    assert summary.images == 8
    rows = verdicts(resources)
    assert (rows[missing].status, rows[missing].reasons) == ("rejected", [filters.MISSING_OBJECT])
    assert (rows[garbage].status, rows[garbage].reasons) == ("rejected", [filters.UNDECODABLE])
    assert (rows[flagged].status, rows[flagged].reasons) == ("rejected", ["unsafe"])  # plumbing: reason + score
    assert rows[flagged].scores["unsafe_score"] == 0.97 and rows[ids[2]].scores["unsafe_score"] == 0.0
    assert (rows[phone].status, rows[phone].reasons) == ("held", ["personal_data.mobile"])
    assert sum(r.status == "curated" for r in rows.values()) == 4
    assert {(r.dag_id, r.run_id, r.task_id, r.map_index) for r in rows.values()} == {("tuwen_crawl", "r1", "curate", 3)}
    assert {r.config_version for r in rows.values()} == {filters.config_version()}
    # The number is in image.ocr_text (OCR's output) and nowhere curation writes: rows, views, logs.
    with resources.engine.connect() as conn:
        lineage = json.dumps([list(map(str, r)) for r in conn.execute(text("SELECT * FROM v_curation"))])
        lineage += json.dumps([list(map(str, r)) for r in conn.execute(text("SELECT * FROM v_curation_counts"))])
    for digits in (PHONE, PHONE[3:7], PHONE[7:]):
        assert digits not in lineage and digits not in caplog.text
    assert "personal_data.mobile" in lineage
    assert curate_pending(resources, DAY, scorer=clean).images == 0  # nothing is done twice


def test_zh_share_holds_and_a_changed_knob_releases_without_new_work(resources: Resources) -> None:
    ids = seed_images(resources.settings, 10, DAY, width=224, height=168, curated=False)
    set_ocr_text(resources.settings, {i: ("店铺招牌文字" if n < 3 else "") for n, i in enumerate(ids)})
    result = curate_partition(resources, DAY, scorer=clean)
    assert result["filters"]["images"] == 10
    # 3 with Chinese text; at a share of 0.7 one image without text may join them: 6 are held.
    assert result["counts"]["by_status"] == {"curated": 4, "held": 6}
    assert result["counts"]["by_reason"] == {"zh_share": 6}
    assert result["counts"]["with_zh_text"]["curated"] == 3
    partition = Partition(DAY, DAY + dt.timedelta(days=1))
    assert plan_partition(resources, partition, RunParams()).to_request == 4  # synthesis: curated only
    limited = plan_partition(resources, partition, RunParams(limit=3))
    with resources.engine.connect() as conn:
        chosen = {i for b in limited.batches for i in b["image_ids"]}
        zh = set(conn.execute(text("SELECT id FROM image WHERE has_zh_text")).scalars())
    assert chosen == zh  # under a limit, images with Chinese text first

    released = apply_zh_policy(resources, DAY, share=0.3)  # the knob turned: no OCR, no filter, no crawl
    assert released["released"] == 6 and counts(resources.engine, DAY)["by_status"] == {"curated": 10}
    assert curate_pending(resources, DAY, scorer=clean).images == 0
    assert apply_zh_policy(resources, DAY, share=0.7)["newly_held"] == 6  # and back, the same six
    assert counts(resources.engine, DAY)["by_status"] == {"curated": 4, "held": 6}


def test_a_threshold_change_recurates_and_curation_off_counts_every_image(resources: Resources) -> None:
    seed_images(resources.settings, 4, DAY, width=224, height=168, curated=False)
    partition = Partition(DAY, DAY + dt.timedelta(days=1))
    assert plan_partition(resources, partition, RunParams()).to_request == 0  # not curated yet: nothing asked
    curate_pending(resources, DAY, scorer=clean)
    stricter = filters.CurationConfig(min_luminance_std=1000.0)  # everything is "flat" now
    again = curate_pending(resources, DAY, config=stricter, scorer=clean)
    assert again.images == 4 and again.by_status == {"rejected": 4}
    assert plan_partition(resources, partition, RunParams()).to_request == 0
    off = Resources.from_settings(dataclasses.replace(resources.settings, curate_enabled=False))
    assert plan_partition(off, partition, RunParams()).to_request == 4


def test_two_workers_share_a_partition_and_no_image_is_done_twice(resources: Resources) -> None:
    seed_images(resources.settings, 48, DAY, width=224, height=168, curated=False)
    done: list[int] = []

    def work() -> None:
        done.append(curate_pending(resources, DAY, scorer=clean).images)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(done) == 48 and len(verdicts(resources)) == 48


def test_a_takedown_keeps_a_curated_image_out_of_synthesis_and_curation(resources: Resources) -> None:
    from tuwen.release.takedowns import add_takedown

    ids = seed_images(resources.settings, 6, DAY, width=224, height=168, curated=False)
    curate_partition(resources, DAY, scorer=clean)
    partition = Partition(DAY, DAY + dt.timedelta(days=1))
    assert plan_partition(resources, partition, RunParams()).to_request == 6
    with resources.engine.connect() as conn:
        sha = conn.execute(text("SELECT sha256 FROM image WHERE id = :i"), {"i": ids[0]}).scalar_one()
    add_takedown(resources.engine, "image_sha256", sha, reason="test")
    plan = plan_partition(resources, partition, RunParams())
    assert plan.to_request == 5 and ids[0] not in {i for b in plan.batches for i in b["image_ids"]}
    # A re-curation (a changed threshold) re-labels the others and leaves the taken-down image alone.
    again = curate_pending(resources, DAY, config=filters.CurationConfig(min_content_share=0.05), scorer=clean)
    assert again.images == 5
