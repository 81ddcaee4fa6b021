"""The sites file: valid files load, every mistake names the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuwen.config import REPO_ROOT
from tuwen.crawl.sites import SitesConfigError, get_site, load_sites

VALID = """
sites:
  - name: news-site
    start_urls: ["https://www.example.cn/"]
    sitemaps: ["https://www.example.cn/sitemap.xml"]
    allowed_domains: ["example.cn"]
    allow: ["/news/"]
    deny: ["/login"]
    max_depth: 2
    max_pages: 50
    politeness: {download_delay: 1.5, concurrency_per_domain: 2, autothrottle_target: 1.0}
    user_agent: "tuwen-crawler/0.1 (+mailto:ops@example.invalid)"
"""


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sites.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def test_valid_file_loads_with_defaults(tmp_path: Path) -> None:
    site = get_site(write(tmp_path, VALID), "news-site")
    assert site.allowed_domains == ("example.cn",)
    assert site.politeness.download_delay == 1.5
    assert site.allow_private_addresses is False
    assert site.max_images == 0
    assert site.as_dict()["politeness"]["concurrency_per_domain"] == 2


def test_repository_sites_file_is_valid() -> None:
    site = get_site(REPO_ROOT / "config" / "sites.local.yaml", "fixture")
    assert site.start_urls == ("http://127.0.0.1:8765/index.html",)
    assert site.allow_private_addresses is True


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("download_delay: 1.5", "download_delay: -1"), "sites[0].politeness.download_delay"),
        (("max_depth: 2", "max_depth: two"), "sites[0].max_depth"),
        (('allow: ["/news/"]', 'allow: ["(unclosed"]'), "sites[0].allow[0]"),
        (('start_urls: ["https://www.example.cn/"]', 'start_urls: ["www.example.cn"]'), "sites[0].start_urls[0]"),
        (('allowed_domains: ["example.cn"]', 'allowed_domains: ["other.cn"]'), "outside allowed_domains"),
        (("name: news-site", "name: News Site"), "sites[0].name"),
        (("max_pages: 50", "max_pages: 50\n    max_pagez: 3"), "unknown field(s) max_pagez"),
        (("concurrency_per_domain: 2", "concurency: 2"), "sites[0].politeness: unknown field(s) concurency"),
    ],
)
def test_errors_name_the_file_and_field(tmp_path: Path, edit: tuple[str, str], field: str) -> None:
    path = write(tmp_path, VALID.replace(*edit))
    with pytest.raises(SitesConfigError) as error:
        load_sites(path)
    assert str(path) in str(error.value) and field in str(error.value)


def test_missing_file_unknown_site_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SitesConfigError, match="cannot read"):
        load_sites(tmp_path / "nope.yaml")
    with pytest.raises(SitesConfigError, match="no site named 'other'"):
        get_site(write(tmp_path, VALID), "other")
    with pytest.raises(SitesConfigError, match="not valid YAML"):
        load_sites(write(tmp_path, "sites: [\n"))
    with pytest.raises(SitesConfigError, match="duplicate site name"):
        load_sites(write(tmp_path, VALID + VALID.split("sites:\n", 1)[1]))


def test_idn_domains_are_kept_in_the_ascii_form_scrapy_sees(tmp_path: Path) -> None:
    body = VALID.replace('allowed_domains: ["example.cn"]', 'allowed_domains: ["例子.CN.", "example.cn"]').replace(
        "https://www.example.cn/sitemap.xml", "https://www.例子.cn/sitemap.xml")
    site = get_site(write(tmp_path, body), "news-site")
    assert site.allowed_domains == ("xn--fsqu00a.cn", "example.cn")


@pytest.mark.parametrize("domain", ["exa mple.cn", "-bad-.cn", "..", "例子..cn"])
def test_an_impossible_domain_is_refused_naming_the_field(tmp_path: Path, domain: str) -> None:
    with pytest.raises(SitesConfigError, match=r"sites\[0\]\.allowed_domains\[0\]"):
        load_sites(write(tmp_path, VALID.replace('allowed_domains: ["example.cn"]', f'allowed_domains: ["{domain}"]')))
