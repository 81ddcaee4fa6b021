"""The fixture site's hostile profile, crawled for real: every URL gets the manifest's verdict, in bounded time.

The hostile site (tuwen.local.fixture_site.HOSTILE_CASES) serves scheme tricks (file:, ftp:, data:,
javascript:, s3: links, images and redirects), a name inside allowed_domains that resolves to a
private address, a 2,500-image gallery in one <div> (past the per-page cap), a link chain deeper than max_depth and an image
inside 2,000 nested <div>s. Its sites entry refuses private addresses except the fixture's own host.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services.test_crawl import absolute, rows
from tests.services.test_crawl_services import fresh_database
from tuwen.config import Settings
from tuwen.crawl.run import run_crawl
from tuwen.local.fixture_site import SiteManifest, generate_site, hostile_site_entry
from tuwen.local.services import fixture_site_service, free_port
from tuwen.resources import Resources
from tuwen.storage import ObjectStore

PARTITION = dt.date(2024, 6, 1)
CRAWL_BOUND_S = 60.0


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    site_dir = tmp_path_factory.mktemp("hostile-site")
    generate_site(site_dir, profile="hostile")
    port = free_port()
    # A run dir of its own: the service's pid file is named after it ("fixture-site"), and sharing the
    # session's run dir overwrote the standard fixture site's, whose server then outlived the session.
    service = fixture_site_service(site_dir, port, tmp_path_factory.mktemp("hostile-run"))
    service.start()
    try:
        yield f"http://127.0.0.1:{port}", site_dir
    finally:
        service.stop()


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, hostile_site: tuple[str, Path], s3_endpoint: str,
             postgres: str) -> Iterator[Settings]:
    sites = tmp_path_factory.mktemp("sites") / "sites.yaml"
    sites.write_text(json.dumps({"sites": [hostile_site_entry("hostile", hostile_site[0])]}), encoding="utf-8")
    with fresh_database() as url:
        yield Settings(database_url=url, s3_endpoint=s3_endpoint, s3_bucket=f"tuwen-hostile-{uuid.uuid4().hex[:8]}",
                       sites_file=sites, ocr_enabled=False)


@pytest.fixture(scope="module")
def crawl(settings: Settings) -> tuple[Any, float]:
    started = time.monotonic()
    summary = run_crawl(Resources.from_settings(settings), "hostile", PARTITION, timeout_s=300)
    return summary, time.monotonic() - started


def test_the_hostile_crawl_ends_in_bounded_time_with_the_manifests_counts(crawl: tuple[Any, float],
                                                                        hostile_site: tuple[str, Path]) -> None:
    summary, elapsed = crawl
    manifest = SiteManifest.load(hostile_site[1])
    assert summary.status == "succeeded"
    assert elapsed < CRAWL_BOUND_S, f"hostile crawl took {elapsed:.1f}s"
    assert summary.counts["by_outcome_reason"] == manifest.expected_counts["by_outcome_reason"]
    assert summary.counts["images_total"] == manifest.expected_counts["images_total"]
    # The file: and ftp: links LinkExtractor keeps are refused; data:, javascript: and s3: it drops itself.
    assert summary.counts["pages"]["refused/unsupported_scheme"] == 3
    assert summary.counts["pages"]["parsed"] == manifest.page_count
    gallery = manifest.limits["page_image_cap"]
    assert summary.counts["pages"]["images_over_page_cap"] == 2500 + 1 - gallery  # the logo is a candidate too


def test_every_hostile_url_has_the_manifests_verdict(crawl: tuple[Any, float], settings: Settings,
                                                     hostile_site: tuple[str, Path]) -> None:
    site_url, site_dir = hostile_site
    manifest = SiteManifest.load(site_dir)
    found = {(r.url, r.page_url): r for r in rows(settings, "SELECT * FROM image_source")}
    expected = set()
    for url, image in manifest.images.items():
        for ref in image.pages:
            key = (absolute(site_url, url), absolute(site_url, ref.page))
            expected.add(key)
            assert key in found, f"no image_source row for {url} on {ref.page}"
            assert (found[key].outcome, found[key].reason) == (image.outcome, image.reason), url
            assert found[key].found_in == ref.how
    assert set(found) == expected
    assert all(page.startswith(site_url + "/") for _, page in found)  # no page came from file:, ftp: ...


def test_the_hostile_crawls_other_images_are_stored(crawl: tuple[Any, float], settings: Settings,
                                                    hostile_site: tuple[str, Path]) -> None:
    manifest = SiteManifest.load(hostile_site[1])
    accepted = rows(settings, "SELECT original_key FROM image WHERE status = 'accepted'")
    assert len(accepted) == manifest.expected_counts["by_outcome"]["accepted"] > 0
    assert set(ObjectStore(settings).list_keys("raw/")) == {r.original_key for r in accepted}


def test_a_name_resolving_to_a_private_address_at_connect_time_is_refused(
        settings: Settings, hostile_site: tuple[str, Path], tmp_path: Path) -> None:
    """With GuardMiddleware off, only the resolver Scrapy connects through stands between the crawler
    and `localhost`: the check is the connection's own lookup, not a second one beside it."""
    site_url = hostile_site[0].replace("127.0.0.1", "localhost")
    entry = {**hostile_site_entry("pretend-public", site_url), "allowed_domains": ["localhost"],
             "allow_private_hosts": []}
    sites = tmp_path / "sites.yaml"
    sites.write_text(json.dumps({"sites": [entry]}), encoding="utf-8")
    public = Resources.from_settings(Settings(database_url=settings.database_url, s3_endpoint=settings.s3_endpoint,
                                              s3_bucket=settings.s3_bucket, sites_file=sites, ocr_enabled=False))
    summary = run_crawl(public, "pretend-public", PARTITION + dt.timedelta(days=1), timeout_s=120,
                        extra_settings={"DOWNLOADER_MIDDLEWARES": '{"tuwen_crawler.middlewares.GuardMiddleware": null}'})
    assert summary.counts["pages"] == {"failed/private_address": 1}
    assert summary.counts["images_total"] == 0
