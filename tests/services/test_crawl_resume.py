"""Hard cases around the crawl process: a SIGKILL mid-crawl and a resume from the same JOBDIR, two
crawls of one site at once, and the refusal of private addresses."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.services.test_crawl import absolute, write_sites_file
from tests.services.test_crawl_services import fresh_database
from tuwen.config import Settings
from tuwen.crawl.images import inspect_and_normalize
from tuwen.crawl.run import LOG_DIR, run_crawl, start_crawl
from tuwen.db.session import get_engine
from tuwen.local.fixture_site import SiteManifest
from tuwen.resources import Resources
from tuwen.storage import ObjectStore, model_key, raw_key

PARTITION = dt.date(2024, 6, 1)
LEFT_BEHIND = b"an object a killed crawl uploaded and never recorded"


@pytest.fixture
def settings(postgres: str, fixture_site: tuple[str, Path], s3_endpoint: str, tmp_path: Path) -> Iterator[Settings]:
    with fresh_database() as url:
        yield Settings(database_url=url, s3_endpoint=s3_endpoint, s3_bucket=f"tuwen-resume-{uuid.uuid4().hex[:8]}",
                       sites_file=write_sites_file(tmp_path / "sites.yaml", fixture_site[0]), ocr_enabled=False)


@pytest.fixture
def manifest(fixture_site: tuple[str, Path]) -> SiteManifest:
    return SiteManifest.load(fixture_site[1])


def scalar(settings: Settings, sql: str, **params: Any) -> Any:
    with get_engine(settings.database_url).connect() as conn:
        return conn.execute(text(sql), params).scalar()


def assert_final_state_matches(settings: Settings, manifest: SiteManifest, site_url: str) -> None:
    """Whatever happened to the processes, the database and bucket must hold the manifest's truth."""
    expected = manifest.expected_counts["by_outcome"]
    assert scalar(settings, "SELECT count(*) FROM image WHERE status = 'accepted'") == expected["accepted"]
    assert scalar(settings, "SELECT count(*) FROM image WHERE status = 'near_duplicate'") == expected["near_duplicate"]
    store = ObjectStore(settings)
    accepted_keys = {k for (k,) in get_engine(settings.database_url).connect().execute(
        text("SELECT original_key FROM image WHERE status = 'accepted'"))}
    assert set(store.list_keys("raw/")) == accepted_keys  # each kept image stored once, nothing orphaned
    assert len(store.list_keys("model/")) == expected["accepted"]
    with get_engine(settings.database_url).connect() as conn:
        sources = {(r.url, r.page_url): r.outcome for r in conn.execute(text("SELECT url, page_url, outcome FROM image_source"))}
    wanted = {(absolute(site_url, url), absolute(site_url, ref.page)) for url, img in manifest.images.items()
              for ref in img.pages}
    assert set(sources) == wanted  # no mention lost, none invented
    by_url: dict[str, set[str]] = {}
    for (url, _), outcome in sources.items():
        by_url.setdefault(url, set()).add(outcome)
    assert all(len(outcomes) == 1 for outcomes in by_url.values())  # one verdict per URL


def test_sigkill_then_resume_from_the_same_jobdir_loses_nothing(settings: Settings, manifest: SiteManifest,
                                                                fixture_site: tuple[str, Path], tmp_path: Path) -> None:
    jobdir = tmp_path / "job"
    log_path = LOG_DIR / f"test-kill-{uuid.uuid4().hex[:8]}.log"
    process = start_crawl(settings, "fixture", PARTITION, crawl_key=uuid.uuid4().hex, jobdir=jobdir, log_path=log_path)
    try:
        deadline = time.monotonic() + 240
        while scalar(settings, "SELECT count(*) FROM image WHERE status = 'accepted'") < 40:
            assert process.poll() is None, "the crawl finished before it could be killed"
            assert time.monotonic() < deadline, "the crawl made no progress"
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    # URLs the killed run judged by fetching them: a resumed run takes over exactly these verdicts. (URLs
    # refused without a fetch, such as robots.txt or off-site ones, are simply refused again.)
    judged_before = scalar(settings, "SELECT count(DISTINCT url) FROM image_source WHERE http_status IS NOT NULL")
    assert 0 < scalar(settings, "SELECT count(*) FROM image WHERE status = 'accepted'") < \
        manifest.expected_counts["by_outcome"]["accepted"]
    assert (jobdir / "tuwen-crawl.running").exists()

    resumed = run_crawl(Resources.from_settings(settings), "fixture", PARTITION, jobdir=jobdir, timeout_s=600)

    # The resumed run reports the whole job: verdicts it reached plus those it took over.
    assert resumed.counts["by_outcome_reason"] == manifest.expected_counts["by_outcome_reason"]
    assert resumed.counts["resumed_known"] >= judged_before > 0
    with get_engine(settings.database_url).connect() as conn:
        runs = conn.execute(text("SELECT id, status, error, settings FROM crawl_run ORDER BY id")).all()
    assert [r.status for r in runs] == ["failed", "succeeded"]
    assert "resumed" in runs[0].error and runs[1].settings["resumed_after_crash"] is True
    assert_final_state_matches(settings, manifest, fixture_site[0])
    assert not (jobdir / "tuwen-crawl.running").exists()


def test_two_crawls_at_once_store_each_image_once(settings: Settings, manifest: SiteManifest,
                                                  fixture_site: tuple[str, Path], tmp_path: Path) -> None:
    processes = []
    for n in range(2):
        log_path = LOG_DIR / f"test-double-{n}-{uuid.uuid4().hex[:8]}.log"
        processes.append(start_crawl(settings, "fixture", PARTITION, crawl_key=uuid.uuid4().hex,
                                     jobdir=tmp_path / f"job-{n}", log_path=log_path))
    try:
        assert [p.wait(timeout=600) for p in processes] == [0, 0]
    finally:
        for p in processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    with get_engine(settings.database_url).connect() as conn:
        runs = conn.execute(text("SELECT status, counts FROM crawl_run ORDER BY id")).all()
    assert [r.status for r in runs] == ["succeeded", "succeeded"]
    for run in runs:  # each crawl, racing the other, still reaches the manifest's verdict for every URL
        assert run.counts["by_outcome_reason"] == manifest.expected_counts["by_outcome_reason"]
    assert_final_state_matches(settings, manifest, fixture_site[0])


def test_objects_a_killed_crawl_left_for_near_duplicates_are_removed(settings: Settings, manifest: SiteManifest,
                                                                    fixture_site: tuple[str, Path]) -> None:
    """A crawl killed between an upload and its commit leaves objects no row holds. When those bytes turn
    out to be a near duplicate, the crawl that records them removes whatever sits at their keys."""
    store = ObjectStore(settings)
    store.ensure_bucket()
    site_dir = fixture_site[1]
    # Both sides of every near-duplicate pair: which of two near-identical pictures a crawl keeps depends
    # on the order its downloads finish.
    near = [image for image in manifest.images.values() if image.outcome == "near_duplicate"]
    group = {image.url for image in near} | {image.duplicate_of for image in near if image.duplicate_of}
    assert len(near) > 0 and len(group) > len(near)
    for url in group:
        image = manifest.images[url]
        decision = inspect_and_normalize((site_dir / "www" / (image.file or "")).read_bytes(), image.content_type)
        assert decision.accepted and decision.model is not None
        for key in (raw_key(decision.sha256, decision.original_ext), model_key(decision.sha256, decision.model.ext)):
            store.put_bytes(key, LEFT_BEHIND)

    result = run_crawl(Resources.from_settings(settings), "fixture", PARTITION, timeout_s=600)

    assert result.counts["by_outcome_reason"] == manifest.expected_counts["by_outcome_reason"]
    assert_final_state_matches(settings, manifest, fixture_site[0])  # no object without an accepted row
    with get_engine(settings.database_url).connect() as conn:
        model_keys = set(conn.execute(text("SELECT model_key FROM image WHERE status = 'accepted'")).scalars())
    assert set(store.list_keys("model/")) == model_keys
    # The kept side of each pair was uploaded over its leftovers.
    assert all(store.get_bytes(key) != LEFT_BEHIND for key in store.list_keys(""))


def test_private_addresses_are_refused_unless_the_site_allows_them(settings: Settings,
                                                                   fixture_site: tuple[str, Path],
                                                                   tmp_path: Path) -> None:
    sites = write_sites_file(tmp_path / "public-sites.yaml", fixture_site[0], name="pretend-public",
                             allow_private_addresses=False)
    public = dataclasses.replace(settings, sites_file=sites)
    summary = run_crawl(Resources.from_settings(public), "pretend-public", PARTITION, timeout_s=300)
    assert summary.counts["pages"] == {"failed/private_address": 1}
    assert summary.counts["images_total"] == 0
    assert scalar(settings, "SELECT count(*) FROM image") == 0
    assert scalar(settings, "SELECT stats->>'downloader/request_count' FROM crawl_run") is None
