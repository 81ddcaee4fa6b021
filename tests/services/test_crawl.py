"""Integration: crawl the generated fixture site into a fresh PostgreSQL database and an S3 server.

Real services only: the fixture site (tuwen.local.fixture_site) on a free port, moto's S3 server process,
the machine's PostgreSQL with a database made for this module. The crawler's verdict for every image
URL must equal the fixture manifest's expectation.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
from PIL import Image
from sqlalchemy import text
from w3lib.url import safe_url_string

from tests.services.test_crawl_services import fresh_database
from tuwen.config import Settings
from tuwen.crawl.run import run_crawl
from tuwen.db.session import get_engine
from tuwen.local.fixture_site import SiteManifest
from tuwen.resources import Resources
from tuwen.storage import ObjectStore

PARTITION = dt.date(2024, 5, 1)


@pytest.fixture(scope="module")
def site_dir(fixture_site: tuple[str, Path]) -> Path:
    return fixture_site[1]


@pytest.fixture(scope="module")
def site_url(fixture_site: tuple[str, Path]) -> str:
    return fixture_site[0]


@pytest.fixture(scope="module")
def manifest(site_dir: Path) -> SiteManifest:
    return SiteManifest.load(site_dir)


@pytest.fixture(scope="module")
def database_url(postgres: str) -> Iterator[str]:
    with fresh_database() as url:
        yield url


def write_sites_file(path: Path, site_url: str, name: str = "fixture", **extra: Any) -> Path:
    site = {
        "name": name, "start_urls": [f"{site_url}/index.html"], "allowed_domains": ["127.0.0.1"],
        "max_depth": 5, "max_pages": 500,
        "politeness": {"download_delay": 0, "concurrency_per_domain": 16, "autothrottle_target": 16.0},
        "allow_private_addresses": True, **extra,
    }
    path.write_text(json.dumps({"sites": [site]}, ensure_ascii=False), encoding="utf-8")  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, site_url: str, s3_endpoint: str,
             database_url: str) -> Settings:
    sites = write_sites_file(tmp_path_factory.mktemp("sites") / "sites.yaml", site_url)
    return Settings(database_url=database_url, s3_endpoint=s3_endpoint, s3_bucket=f"tuwen-crawl-{uuid.uuid4().hex[:8]}",
                    sites_file=sites, ocr_enabled=False)


@pytest.fixture(scope="module")
def first_crawl(settings: Settings) -> Any:
    return run_crawl(Resources.from_settings(settings), "fixture", PARTITION, dag_id="tuwen_crawl", run_id="test-run-1", timeout_s=600)


def absolute(site_url: str, manifest_url: str) -> str:
    return safe_url_string(urljoin(site_url + "/", manifest_url), encoding="utf-8")


def rows(settings: Settings, sql: str, **params: Any) -> list[Any]:
    with get_engine(settings.database_url).connect() as conn:
        return list(conn.execute(text(sql), params))


def test_counts_per_outcome_and_reason_equal_the_manifest(first_crawl: Any, manifest: SiteManifest) -> None:
    expected = manifest.expected_counts
    assert first_crawl.status == "succeeded"
    assert first_crawl.counts["by_outcome"] == expected["by_outcome"]
    assert first_crawl.counts["by_outcome_reason"] == expected["by_outcome_reason"]
    assert first_crawl.counts["images_total"] == expected["images_total"]


def test_every_mention_has_a_source_row_with_the_expected_verdict(first_crawl: Any, manifest: SiteManifest,
                                                                   settings: Settings, site_url: str) -> None:
    found = {(r.url, r.page_url): r for r in rows(settings, "SELECT * FROM image_source")}
    titles = {p["path"]: p["title"] for p in manifest.pages}
    expected_pairs = set()
    # Which copy of a duplicate group is kept depends on crawl order, so groups are compared as multisets.
    groups: dict[str, list[str]] = {}
    for url, image in manifest.images.items():
        root = image.duplicate_of if image.outcome in ("duplicate", "near_duplicate") else url
        groups.setdefault(root, []).append(url)
    for url, image in manifest.images.items():
        for ref in image.pages:
            key = (absolute(site_url, url), absolute(site_url, ref.page))
            expected_pairs.add(key)
            assert key in found, f"no image_source row for {url} on {ref.page}"
            row = found[key]
            assert row.page_title and row.page_title.startswith(titles[ref.page])
            assert row.found_in == ref.how
            assert row.site == "fixture"
            if len(groups.get(url, [])) <= 1 and image.outcome not in ("duplicate", "near_duplicate"):
                assert (row.outcome, row.reason) == (image.outcome, image.reason), url
    for root, members in groups.items():
        if len(members) > 1:
            got = Counter(found[(absolute(site_url, u), absolute(site_url, manifest.images[u].pages[0].page))].outcome
                          for u in members)
            want = Counter(manifest.images[u].outcome for u in members)
            assert got == want, root
    assert set(found) == expected_pairs
    assert all(r.page_url and r.page_title for r in found.values())


def test_accepted_images_are_stored_raw_and_model_ready(first_crawl: Any, manifest: SiteManifest,
                                                         settings: Settings) -> None:
    accepted = rows(settings, "SELECT * FROM image WHERE status = 'accepted'")
    assert len(accepted) == manifest.expected_counts["by_outcome"]["accepted"]
    store = ObjectStore(settings)
    assert set(store.list_keys("raw/")) == {r.original_key for r in accepted}
    assert set(store.list_keys("model/")) == {r.model_key for r in accepted}
    expected_sha = {img.sha256 for img in manifest.images.values() if img.outcome == "accepted"}
    # Kept copies of duplicate groups may differ from the manifest's pick; sizes of the sets may not.
    assert len({r.sha256 for r in accepted}) == len(expected_sha)
    for row in accepted:
        assert row.crawl_date == PARTITION
        assert row.first_crawl_run_id == first_crawl.crawl_run_id
        assert row.phash is not None and -(2**63) <= row.phash < 2**63
        with Image.open(io.BytesIO(store.get_bytes(row.model_key))) as model:
            assert model.mode == "RGB"
            assert model.size == (row.model_width, row.model_height)
            assert model.width % 28 == 0 and model.height % 28 == 0
            assert settings.min_pixels <= model.width * model.height <= settings.max_pixels
        assert row.model_mime in ("image/jpeg", "image/png")


def test_duplicates_point_at_what_they_duplicate(first_crawl: Any, settings: Settings) -> None:
    near = rows(settings, "SELECT i.*, o.status AS original_status FROM image i JOIN image o ON o.id = i.duplicate_of "
                          "WHERE i.status = 'near_duplicate'")
    assert len(near) == 6 and all(r.original_status == "accepted" and r.original_key is None for r in near)
    dups = rows(settings, "SELECT s.*, i.status AS image_status FROM image_source s JOIN image i ON i.id = s.image_id "
                          "WHERE s.outcome = 'duplicate'")
    assert dups and all(r.image_status == "accepted" for r in dups)


def test_crawl_run_records_the_airflow_run_and_stats(first_crawl: Any, settings: Settings) -> None:
    (run,) = rows(settings, "SELECT * FROM crawl_run WHERE id = :id", id=first_crawl.crawl_run_id)
    assert (run.status, run.dag_id, run.run_id, run.site, run.partition_date) == (
        "succeeded", "tuwen_crawl", "test-run-1", "fixture", PARTITION)
    assert run.finished_at is not None and run.error is None
    assert run.stats["finish_reason"] == "finished"
    assert run.stats["downloader/request_count"] > 0
    assert run.counts == first_crawl.counts
    assert run.settings["site"]["name"] == "fixture"


def test_rerun_adds_no_images_and_reports_the_same_verdicts(first_crawl: Any, settings: Settings) -> None:
    before = rows(settings, "SELECT (SELECT count(*) FROM image) AS images, (SELECT count(*) FROM image_source) AS sources")[0]
    second = run_crawl(Resources.from_settings(settings), "fixture", PARTITION + dt.timedelta(days=1), timeout_s=600)
    after = rows(settings, "SELECT (SELECT count(*) FROM image) AS images, (SELECT count(*) FROM image_source) AS sources")[0]
    assert (after.images, after.sources) == (before.images, before.sources)
    assert second.counts["by_outcome_reason"] == first_crawl.counts["by_outcome_reason"]
    # The images keep the partition of the run that first stored them.
    assert rows(settings, "SELECT DISTINCT crawl_date FROM image")[0].crawl_date == PARTITION
    last_runs = {r.last_crawl_run_id for r in rows(settings, "SELECT last_crawl_run_id FROM image_source")}
    assert last_runs == {second.crawl_run_id}


def test_a_recrawl_restores_objects_the_store_lost(first_crawl: Any, settings: Settings) -> None:
    """PostgreSQL kept the rows but the object store lost objects (a restarted local S3 server, a
    bucket restored from an older backup): seeing the same bytes again puts them back."""
    from tuwen.storage import ObjectStore

    store = ObjectStore(settings)
    accepted = rows(settings, "SELECT original_key, model_key FROM image WHERE status = 'accepted'")
    lost = accepted[: len(accepted) // 2]
    for row in lost:
        store.client.remove_object(store.bucket, row.model_key)
        store.client.remove_object(store.bucket, row.original_key)
    assert not any(store.exists(r.model_key) for r in lost)
    run_crawl(Resources.from_settings(settings), "fixture", PARTITION + dt.timedelta(days=2), timeout_s=600)
    assert all(store.exists(r.model_key) and store.exists(r.original_key) for r in accepted)


def test_curation_of_the_crawl_equals_the_manifest(first_crawl: Any, manifest: SiteManifest, settings: Settings) -> None:
    """Crawl + curation = the manifest's verdict per image (issue 18). OCR is off here, so the two
    simple_graphic cases, which need OCR text to be judged, are curated with their colour score."""
    from tuwen.curate import filters
    from tuwen.curate.queries import counts
    from tuwen.curate.run import curate_partition

    resources = Resources.from_settings(settings)
    result = curate_partition(resources, PARTITION)
    assert result["filters"]["images"] == manifest.expected_counts["by_outcome"]["accepted"]
    expected = {img.sha256: (img.curation, img.curation_reason) for img in manifest.images.values()
                if img.outcome == "accepted"}
    with resources.engine.connect() as conn:
        rows = conn.execute(text("""SELECT i.sha256, c.status, c.reasons, c.scores, c.config_version, c.dag_id
                                    FROM curation c JOIN image i ON i.id = c.image_id""")).all()
    assert len(rows) == len(expected)
    for row in rows:
        if row.sha256 not in expected:  # the kept copy of a duplicate group: an ordinary image
            assert row.status == "curated", row
            continue
        status, reason = expected[row.sha256]
        if reason == "simple_graphic":  # a score without OCR, never a verdict
            assert row.status == "curated" and row.scores["dominant_colours"] <= filters.CurationConfig().simple_max_colours
        else:
            assert (row.status, row.reasons) == (status, [reason] if reason else []), row
        assert row.config_version == filters.config_version(), row
    wanted_rejected = sum(1 for s, r in expected.values() if s == "rejected" and r != "simple_graphic")
    assert counts(resources.engine, PARTITION)["by_status"] == {
        "curated": len(expected) - wanted_rejected, "rejected": wanted_rejected}

    # A threshold change re-labels from stored pixels: no crawl, and only a new verdict per image.
    looser = dataclasses.replace(filters.CurationConfig(), qr_max_area_share=0.25)
    from tuwen.curate.run import curate_pending

    again = curate_pending(resources, PARTITION, config=looser)
    assert again.images == len(expected)
    assert again.by_reason.get("qr_code", 0) == sum(
        1 for s, r in expected.values() if r == "qr_code") - 1  # the coupon card's code covers ~20 %
    curate_pending(resources, PARTITION)  # back to the defaults for the tests after this one
