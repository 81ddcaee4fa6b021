"""Unit tests for the crawler's pure parts: image candidates on a page, failure reasons, the address guard."""

from __future__ import annotations

import pytest
from scrapy.http import HtmlResponse

from tuwen.urls import host_in_domains as host_allowed
from tuwen_crawler.extract import extract_page_images, parse_srcset
from tuwen_crawler.resolver import is_public_address

PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title> 城市 新闻 </title>
<meta name="description" content="本地新闻">
<meta property="og:image" content="/img/og.jpg"></head><body>
<figure><img src="/img/a.jpg" alt="招牌"><figcaption>老王面馆的招牌</figcaption></figure>
<figure><img class="lazy" src="data:image/gif;base64,R0lGOD" data-src="b.jpg" alt="懒加载"></figure>
<p>前文 <img data-original="/img/c.jpg"> 后文</p>
<img src="/img/s-480.jpg" srcset="/img/s-480.jpg 480w, /img/s-1200.jpg 1200w, /img/s-800.jpg 800w" alt="响应式">
<picture><source type="image/webp" srcset="/img/p-640.webp 640w, /img/p-1280.webp 1280w">
<img src="/img/p-640.jpg" alt="图"></picture>
<img src="/图片/菜单.jpg#top">
<img src="data:image/png;base64,AAAA">
</body></html>"""


def page() -> HtmlResponse:
    return HtmlResponse("http://site.test/news/1.html", body=PAGE.encode("utf-8"), encoding="utf-8")


def test_candidates_follow_the_lazy_srcset_picture_and_og_rules() -> None:
    images = extract_page_images(page())
    assert images.title == "城市 新闻" and not images.noai
    found = {c.url: c for c in images.candidates}
    base = "http://site.test"
    assert found[f"{base}/img/a.jpg"].found_in == "img"
    assert found[f"{base}/img/a.jpg"].alt_text == "招牌"
    assert found[f"{base}/img/a.jpg"].context_text == "老王面馆的招牌"
    assert found[f"{base}/news/b.jpg"].found_in == "data-src"
    assert found[f"{base}/img/c.jpg"].found_in == "data-original"
    assert "前文" in (found[f"{base}/img/c.jpg"].context_text or "")
    srcset = found[f"{base}/img/s-1200.jpg"]
    assert srcset.found_in == "srcset"
    assert set(srcset.smaller_variants) == {f"{base}/img/s-480.jpg", f"{base}/img/s-800.jpg"}
    picture = found[f"{base}/img/p-1280.webp"]
    assert picture.found_in == "picture"
    assert set(picture.smaller_variants) == {f"{base}/img/p-640.webp", f"{base}/img/p-640.jpg"}
    assert found[f"{base}/%E5%9B%BE%E7%89%87/%E8%8F%9C%E5%8D%95.jpg"].found_in == "img"  # encoded, no fragment
    assert found[f"{base}/img/og.jpg"].found_in == "og"
    assert found[f"{base}/img/og.jpg"].context_text == "本地新闻"
    assert not any(url.startswith("data:") and c.found_in != "img" for url, c in found.items())
    assert len(images.candidates) == 8  # the data: <img> is a candidate the spider then ignores


def test_noai_meta_is_seen() -> None:
    body = PAGE.replace("<title>", '<meta name="robots" content="index, noimageai"><title>')
    assert extract_page_images(HtmlResponse("http://site.test/", body=body.encode(), encoding="utf-8")).noai


def test_parse_srcset_prefers_width_then_density() -> None:
    assert parse_srcset("a.jpg 1x, b.jpg 2x") == [("a.jpg", 1e-6), ("b.jpg", 2e-6)]
    assert parse_srcset("a.jpg") == [("a.jpg", 1e-6)]
    assert parse_srcset("a,1.jpg 300w, b.jpg 600w")[0] == ("a,1.jpg", 300.0)


@pytest.mark.parametrize(
    ("address", "public"),
    [("8.8.8.8", True), ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.1.1", False), ("172.16.0.1", False),
     ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False), ("::1", False),
     ("fe80::1", False), ("fd00::1", False), ("::ffff:127.0.0.1", False), ("2001:4860:4860::8888", True)],
)
def test_private_loopback_and_link_local_addresses_are_not_public(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_host_allowed_includes_subdomains_only() -> None:
    assert host_allowed("img.example.cn", ("example.cn",))
    assert host_allowed("example.cn.", ("example.cn",))
    assert not host_allowed("badexample.cn", ("example.cn",))
    assert not host_allowed(None, ("example.cn",))
