"""Only the web is fetched, through one filtered DNS resolution, with each page's work bounded.

Pure tests of the crawler's guards: the scheme allow-list (pages, sitemaps, robots, images,
redirects, download handlers), the resolver Scrapy connects with (IPv6 forms unwrapped, rebinding,
failed lookups), linear image-context extraction with a per-page cap, IDN sites, and fuzzing of the
HTML extraction. The crawl of the fixture site's hostile section is tests/services/test_crawl_hostile.py.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scrapy import Request
from scrapy.http import HtmlResponse, Response, TextResponse
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import DNSLookupError
from twisted.python.failure import Failure

from tuwen_crawler.extract import CONTEXT_MAX_CHARS, MAX_CANDIDATES_PER_PAGE, extract_page_images
from tuwen_crawler.items import UnfetchedImage
from tuwen_crawler.middlewares import GuardMiddleware
from tuwen_crawler.outcomes import Refused, classify_failure
from tuwen_crawler.resolver import (
    PublicAddressResolver,
    allow_private_addresses,
    is_public_address,
    refusal_for,
)
from tuwen_crawler.spiders.site_spider import SiteSpider

# -- the resolver --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "public"), [
    ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
    ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
    ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
    ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
    ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
    ("::7f00:1", False),  # IPv4-compatible ::127.0.0.1
    ("::c0a8:101", False),  # IPv4-compatible ::192.168.1.1
    ("::808:808", True),  # IPv4-compatible ::8.8.8.8
    ("fec0::1", False),  # site-local
    ("fed0::1", False),  # site-local
    ("::ffff:10.0.0.1", False),  # IPv4-mapped
    ("::", False),
    ("::1", False),
])
def test_ipv6_forms_carrying_private_ipv4_are_unwrapped(address: str, public: bool) -> None:
    assert is_public_address(address) is public


class ScriptedResolver:
    """Stands in for the system's DNS: answers each lookup of a name with the next scripted answer."""

    def __init__(self, answers: list[list[str]]) -> None:
        self.answers = answers

    def resolveHostName(self, receiver: Any, host: str, port: int = 0, *_: Any) -> Any:
        receiver.resolutionBegan(SimpleNamespace(name=host))
        for address in self.answers.pop(0):
            receiver.addressResolved((IPv6Address if ":" in address else IPv4Address)("TCP", address, port))
        receiver.resolutionComplete()
        return None


class Receiver:
    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.completed = False

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        self.completed = True


def resolver_with(answers: list[list[str]], cache_size: int = 0) -> PublicAddressResolver:
    return PublicAddressResolver(SimpleNamespace(nameResolver=ScriptedResolver(answers)), cache_size)


def resolve(resolver: PublicAddressResolver, host: str, port: int = 80) -> Receiver:
    receiver = Receiver()
    resolver.resolveHostName(receiver, host, port)
    assert receiver.completed
    return receiver


def test_a_rebinding_name_is_refused_at_the_lookup_the_connection_uses() -> None:
    allow_private_addresses(False)
    resolver = resolver_with([["93.184.216.34"], ["127.0.0.1"], ["93.184.216.34", "10.0.0.7"], ["64:ff9b::7f00:1"]])
    assert resolve(resolver, "rebind.example.cn").addresses == ["93.184.216.34"]
    assert resolve(resolver, "rebind.example.cn").addresses == []  # the second answer is private: no address
    assert "127.0.0.1" in (refusal_for("rebind.example.cn") or "")
    assert resolve(resolver, "mixed.example.cn").addresses == []  # one private answer refuses the name
    assert resolve(resolver, "nat64.example.cn").addresses == []


def test_a_failed_lookup_gives_no_address_and_is_a_dns_error() -> None:
    allow_private_addresses(False)
    receiver = resolve(resolver_with([[]]), "nowhere.example.cn")
    assert receiver.addresses == []
    failure = Failure(DNSLookupError("no results"))
    failure.request = Request("http://nowhere.example.cn/a.jpg")  # type: ignore[attr-defined]
    assert classify_failure(failure) == ("dns_error", None)


def test_a_refused_name_is_recorded_as_private_address() -> None:
    allow_private_addresses(False)
    resolve(resolver_with([["192.168.0.9"]]), "intranet.example.cn")
    failure = Failure(DNSLookupError("no results"))
    failure.request = Request("http://intranet.example.cn/a.jpg")  # type: ignore[attr-defined]
    assert classify_failure(failure) == ("private_address", None)


def test_private_answers_pass_for_sites_that_allow_them_and_the_cache_keeps_ports() -> None:
    allow_private_addresses(True)
    try:
        resolver = resolver_with([["127.0.0.1"]], cache_size=10)
        assert resolve(resolver, "localhost", 8080).addresses == ["127.0.0.1"]
        receiver = Receiver()
        resolver.resolveHostName(receiver, "localhost", 9090)  # from the cache: the script has no more answers
        assert receiver.addresses == ["127.0.0.1"] and receiver.completed
    finally:
        allow_private_addresses(False)


def test_scrapy_connects_through_the_filtering_resolver_and_only_http_handlers() -> None:
    from tuwen_crawler import settings as crawler_settings

    assert crawler_settings.TWISTED_DNS_RESOLVER == "tuwen_crawler.resolver.PublicAddressResolver"
    assert crawler_settings.DOWNLOAD_HANDLERS == {"file": None, "ftp": None, "s3": None, "data": None}


# -- the scheme allow-list ----------------------------------------------------------------------------


def spider_for(tmp_path: Path, domains: str = '["site.test"]', start: str = "http://site.test/") -> SiteSpider:
    sites = tmp_path / "sites.yaml"
    sites.write_text(f"sites:\n  - name: t\n    start_urls: ['{start}']\n    allowed_domains: {domains}\n"
                     "    max_depth: 5\n", encoding="utf-8")
    return SiteSpider(site="t", sites_file=str(sites), partition_date="2024-05-01")


SCHEME_TRICKS = """<html><body>
<a href="file:///etc/passwd">a</a><a href="file://site.test/etc/passwd">b</a><a href="ftp://site.test/x.html">c</a>
<a href="data:text/html,<h1>x</h1>">d</a><a href="javascript:alert(1)">e</a><a href="/ok.html">ok</a>
<img src="file:///etc/hostname"><img src="ftp://site.test/a.jpg"><img src="javascript:void(0)">
<img src="data:image/png;base64,AAAA"><img src="/good.jpg">
</body></html>"""


def test_pages_only_follow_and_fetch_http_links(tmp_path: Path) -> None:
    spider = spider_for(tmp_path)
    response = HtmlResponse("http://site.test/index.html", body=SCHEME_TRICKS.encode(), encoding="utf-8")
    out = list(spider.parse_page(response, depth=0))
    requests = [r.url for r in out if isinstance(r, Request)]
    assert sorted(requests) == ["http://site.test/good.jpg", "http://site.test/ok.html"]
    refused = {i.mention.url: i.reason for i in out if isinstance(i, UnfetchedImage)}
    assert refused == {"file:///etc/hostname": "unsupported_scheme", "ftp://site.test/a.jpg": "unsupported_scheme",
                       "javascript:void(0)": "unsupported_scheme"}


def test_sitemaps_and_robots_never_lead_off_the_web(tmp_path: Path) -> None:
    spider = spider_for(tmp_path)
    index = (b'<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
             b"<sitemap><loc>file:///etc/passwd</loc></sitemap><sitemap><loc>ftp://site.test/s.xml</loc></sitemap>"
             b"<sitemap><loc>http://site.test/s2.xml</loc></sitemap></sitemapindex>")
    urls = [r.url for r in spider.parse_sitemap(Response("http://site.test/sitemap.xml", body=index))]
    assert urls == ["http://site.test/s2.xml"]
    urlset = (b'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
              b"<url><loc>file://site.test/etc/passwd</loc></url><url><loc>http://site.test/p.html</loc></url></urlset>")
    urls = [r.url for r in spider.parse_sitemap(Response("http://site.test/s2.xml", body=urlset))]
    assert urls == ["http://site.test/p.html"]
    robots = TextResponse("http://site.test/robots.txt", encoding="utf-8",
                          body=b"Sitemap: file:///etc/passwd\nSitemap: http://site.test/s3.xml\n")
    assert [r.url for r in spider.parse_sitemap(robots)] == ["http://site.test/s3.xml"]


class Stats(Counter[str]):
    def inc_value(self, key: str) -> None:
        self[key] += 1


def guard(spider: SiteSpider) -> GuardMiddleware:
    return GuardMiddleware(SimpleNamespace(spider=spider, stats=Stats()))  # type: ignore[arg-type]


@pytest.mark.parametrize("location", ["file:///etc/passwd", "file://site.test/etc/passwd", "ftp://site.test/a.jpg",
                                      "data:image/png;base64,AAAA"])
def test_a_redirect_to_another_scheme_is_refused_with_a_reason(tmp_path: Path, location: str) -> None:
    middleware = guard(spider_for(tmp_path))
    request = Request("http://site.test/a.jpg")
    response = Response(request.url, status=302, headers={"Location": location}, request=request)
    with pytest.raises(Refused) as refused:
        middleware.process_response(request, response)
    assert refused.value.reason == "unsupported_scheme"
    with pytest.raises(Refused, match="unsupported_scheme"):
        middleware.process_request(Request(location))


def test_ip_literal_private_hosts_are_refused_before_any_lookup(tmp_path: Path) -> None:
    middleware = guard(spider_for(tmp_path))
    for url in ("http://127.0.0.1/a.jpg", "http://[64:ff9b::7f00:1]/a.jpg"):
        with pytest.raises(Refused, match="private_address"):
            middleware.process_request(Request(url))
    assert middleware.process_request(Request("http://site.test/a.jpg")) is None


def test_an_idn_site_validates_and_accepts_its_own_punycode_images(tmp_path: Path) -> None:
    spider = spider_for(tmp_path, domains='["例子.cn"]', start="http://www.例子.cn/")
    assert spider.allowed_domains == ["xn--fsqu00a.cn"]
    assert spider._refusal("http://img.xn--fsqu00a.cn/a.jpg", page_noai=False) is None
    assert spider._refusal("http://img.xn--fsqu00a.com/a.jpg", page_noai=False) == "off_domain"
    assert spider._page_request("http://www.xn--fsqu00a.cn/news.html", depth=1) is not None


# -- bounded extraction --------------------------------------------------------------------------------


def gallery(images: int) -> HtmlResponse:
    body = "<html><body><div>" + "".join(
        f"<span>第{i}张 风景照片</span><img src='/g/{i}.jpg' alt='照片{i}'>" for i in range(images)) + "</div></body></html>"
    return HtmlResponse("http://site.test/gallery.html", body=body.encode(), encoding="utf-8")


def test_a_gallery_of_4000_images_in_one_div_is_extracted_in_bounded_time(tmp_path: Path) -> None:
    page = gallery(4000)
    started = time.perf_counter()
    images = extract_page_images(page)
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, f"{elapsed:.1f}s: context extraction is no longer linear"  # quadratic took ~50 s
    assert len(images.candidates) == MAX_CANDIDATES_PER_PAGE
    assert images.over_cap == 4000 - MAX_CANDIDATES_PER_PAGE
    assert images.candidates[0].context_text is not None
    assert len(images.candidates[0].context_text) <= CONTEXT_MAX_CHARS
    spider = spider_for(tmp_path)
    requests = [r for r in spider.parse_page(page, depth=0) if isinstance(r, Request)]
    assert len(requests) == MAX_CANDIDATES_PER_PAGE
    assert spider.page_counts["images_over_page_cap"] == 4000 - MAX_CANDIDATES_PER_PAGE


def test_linear_extraction_keeps_each_images_context() -> None:
    body = ("<html><body><div><p>甲</p><img src='a.jpg'><figure><img src='b.jpg'><figcaption>乙说明</figcaption>"
            "</figure></div><section>丙 <img src='c.jpg'></section></body></html>")
    found = {c.url.rsplit("/", 1)[1]: c.context_text for c in
             extract_page_images(HtmlResponse("http://site.test/", body=body.encode(), encoding="utf-8")).candidates}
    assert found == {"a.jpg": "甲 乙说明", "b.jpg": "乙说明", "c.jpg": "丙"}


HTML_PIECES = st.sampled_from([
    "<img src='{}'>", "<img data-src='{}' src='data:,x'>", "<img srcset='{} 2x, b.jpg 1x'>", "<picture><source "
    "srcset='{} 640w'><img src='p.jpg'></picture>", "<figure><img src='{}'><figcaption>{}</figcaption></figure>",
    "<div>{}", "</div>", "<p>{}</p>", "<base href='{}'>", "<meta property='og:image' content='{}'>", "<a href='{}'>x</a>",
    "<!-- {} -->", "<script>{}</script>", "{}",
])
HTML_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(HTML_PIECES, HTML_TEXT, HTML_TEXT), max_size=40))
def test_extraction_never_raises_and_stays_bounded_on_arbitrary_html(pieces: list[tuple[str, str, str]]) -> None:
    body = "<html><body>" + "".join(piece.format(a, b) for piece, a, b in pieces) + "</body></html>"
    response = HtmlResponse("http://site.test/p/", body=body.encode("utf-8", "surrogatepass"), encoding="utf-8")
    images = extract_page_images(response, max_candidates=10)
    assert len(images.candidates) <= 10
    for candidate in images.candidates:
        assert "#" not in candidate.url
        assert candidate.context_text is None or len(candidate.context_text) <= CONTEXT_MAX_CHARS
