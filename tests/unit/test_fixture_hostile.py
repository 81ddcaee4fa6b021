"""The fixture site's hostile profile: one page per case, a verdict for every image, extensible by a list.

Generation only (no server); the crawl of it is tests/services/test_crawl_hostile.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tuwen.crawl.sites import load_sites
from tuwen.local import fixture_site
from tuwen.local.fixture_site import HOSTILE_CASES, HostileCase, PageRef, _Page, _SiteBuilder, generate_site


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, fixture_site.SiteManifest]:
    out = tmp_path_factory.mktemp("hostile")
    return out, generate_site(out, profile="hostile")


def test_every_case_has_a_page_linked_from_home(hostile: tuple[Path, fixture_site.SiteManifest]) -> None:
    out, manifest = hostile
    home = (out / "www" / "index.html").read_text(encoding="utf-8")
    for case in HOSTILE_CASES:
        assert f'href="/hostile/{case.name}.html"' in home
        assert (out / "www" / "hostile" / f"{case.name}.html").is_file()
    assert {p["path"] for p in manifest.pages} >= {f"/hostile/{c.name}.html" for c in HOSTILE_CASES}


def test_the_manifest_gives_each_trick_its_verdict(hostile: tuple[Path, fixture_site.SiteManifest]) -> None:
    out, manifest = hostile
    counts = manifest.expected_counts["by_outcome_reason"]
    assert counts["not_fetched/unsupported_scheme"] == len(fixture_site.SCHEME_IMAGES) + len(fixture_site.SCHEME_REDIRECTS)
    assert counts["not_fetched/private_address"] == 2
    assert counts["not_fetched/page_noai"] == fixture_site.HOSTILE_PAGE_CAP - 1
    assert manifest.expected_counts["by_outcome"]["accepted"] >= 5
    gallery = (out / "www" / "hostile" / "gallery.html").read_text(encoding="utf-8")
    assert gallery.count("<img ") == fixture_site.HOSTILE_GALLERY_IMAGES + 1  # and the logo
    # Pages past max_depth exist, are linked, and are not in the manifest's crawlable pages.
    assert (out / "www" / "hostile" / "deep" / f"{fixture_site.HOSTILE_DEEP_CHAIN}.html").is_file()
    assert max(p["depth"] for p in manifest.pages) == fixture_site.HOSTILE_MAX_DEPTH


def test_the_hostile_sites_entry_validates(tmp_path: Path) -> None:
    import json

    sites = tmp_path / "sites.yaml"
    sites.write_text(json.dumps({"sites": [fixture_site.hostile_site_entry("hostile", "http://127.0.0.1:8765")]}))
    site = load_sites(sites)["hostile"]
    assert not site.allow_private_addresses
    assert site.may_use_private("127.0.0.1") and not site.may_use_private("localhost")


def test_a_new_case_is_one_list_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def one_more(b: _SiteBuilder, page: _Page) -> list[_Page]:
        entry = b.add_image("/hostile/img/extra.jpg", None, outcome="rejected", reason="http_404", kind="hard_case")
        entry.pages.append(PageRef(page.path, "img"))
        page.blocks.append(f'<img src="{entry.url}">')
        return []

    monkeypatch.setattr(fixture_site, "HOSTILE_CASES", [*HOSTILE_CASES, HostileCase("extra", "额外", one_more)])
    manifest = generate_site(tmp_path, profile="hostile")
    assert manifest.images["/hostile/img/extra.jpg"].pages == [PageRef("/hostile/extra.html", "img")]
