"""The one URL/host normaliser: examples for each rule, and properties over generated input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuwen.urls import (
    UrlError,
    display_host,
    host_in_domains,
    host_of,
    is_web_url,
    normalize_host,
    normalize_url,
)


@pytest.mark.parametrize("spelling", ["例子.cn", "例子.CN", "例子.cn.", "xn--fsqu00a.cn", "XN--FSQU00A.CN.",
                                      "例子。cn", " 例子.cn "])
def test_every_spelling_of_an_idn_host_has_one_normal_form(spelling: str) -> None:
    assert normalize_host(spelling) == "xn--fsqu00a.cn"
    assert display_host(spelling) == "例子.cn"


def test_ip_hosts_keep_their_short_form() -> None:
    assert normalize_host("127.0.0.1") == "127.0.0.1"
    assert normalize_host("[::FFFF:7f00:1]") == "::ffff:7f00:1"


@pytest.mark.parametrize("bad", ["", ".", "a b.cn", "exa mple", "a..b", "-bad-.cn", "x" * 64 + ".cn"])
def test_impossible_hosts_are_refused_with_a_message(bad: str) -> None:
    with pytest.raises(UrlError, match="host"):
        normalize_host(bad)


@pytest.mark.parametrize(("url", "normal"), [
    ("HTTP://例子.CN.:80/a#top", "http://xn--fsqu00a.cn/a"),
    ("https://Example.com:443", "https://example.com/"),
    ("http://example.com:8080/x", "http://example.com:8080/x"),
    ("http://example.com/%7euser/%2f%e4%b8%ad", "http://example.com/~user/%2F%E4%B8%AD"),
    ("http://example.com/图片/a b.jpg?q=中", "http://example.com/%E5%9B%BE%E7%89%87/a%20b.jpg?q=%E4%B8%AD"),
    ("http://user:secret@example.com/a", "http://example.com/a"),
    ("http://example.com/a?b=2&a=1", "http://example.com/a?b=2&a=1"),  # query order is the server's business
])
def test_normalize_url(url: str, normal: str) -> None:
    assert normalize_url(url) == normal


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.jpg", "data:image/png;base64,AAAA",
                                 "javascript:alert(1)", "s3://bucket/key", "//example.com/a", "http:///nohost",
                                 "http://example.com:99999/"])
def test_non_web_or_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(UrlError):
        normalize_url(url)


def test_only_http_and_https_are_web_urls() -> None:
    assert is_web_url("http://a.cn/") and is_web_url("HTTPS://a.cn/")
    assert not any(is_web_url(u) for u in ("file:///etc/passwd", "ftp://a.cn/", "data:,x", "javascript:x", "a.jpg"))


def test_host_in_domains_matches_subdomains_in_normal_form() -> None:
    assert host_in_domains("img.xn--fsqu00a.cn", ("例子.cn",))
    assert host_in_domains("例子.CN.", ("xn--fsqu00a.cn",))
    assert host_in_domains("example.cn.", ("example.cn",))
    assert not host_in_domains("badexample.cn", ("example.cn",))
    assert not host_in_domains(None, ("example.cn",))
    assert host_of("http://IMG.例子.cn./x.jpg") == "img.xn--fsqu00a.cn"


# -- properties --------------------------------------------------------------------------------------

LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789例子中文图片新闻", min_size=1, max_size=12).filter(
    lambda s: not s.startswith("xn"))
HOSTS = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
PATHS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=40)


def _valid_host(host: str) -> str | None:
    try:
        return normalize_host(host)
    except UrlError:
        return None


@settings(max_examples=150, deadline=None)
@given(HOSTS, st.booleans(), st.booleans())
def test_host_normal_form_is_stable_under_case_idna_and_trailing_dot(host: str, upper: bool, dot: bool) -> None:
    normal = _valid_host(host)
    if normal is None:
        return
    assert normalize_host(normal) == normal
    spelled = (host.upper() if upper else host) + ("." if dot else "")
    assert normalize_host(spelled) == normal
    assert normalize_host(display_host(normal)) == normal


@settings(max_examples=200, deadline=None)
@given(HOSTS, st.sampled_from(["http", "HTTPS", "Http"]), st.sampled_from(["", ":80", ":443", ":8080"]), PATHS,
       PATHS, PATHS)
def test_url_normal_form_is_idempotent(host: str, scheme: str, port: str, path: str, query: str,
                                       fragment: str) -> None:
    url = f"{scheme}://{host}{port}/{path}?{query}#{fragment}"
    try:
        normal = normalize_url(url)
    except UrlError:
        return
    assert normalize_url(normal) == normal
    assert "#" not in normal and normal.isascii()
    assert normalize_url(url.replace(host, host.upper(), 1)) == normal


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_normalises_or_is_refused_cleanly(text: str) -> None:
    for function in (normalize_url, normalize_host):
        with contextlib.suppress(UrlError):
            function(text)
