"""The fixture website: generated content, manifest answers, determinism and the HTTP behaviours."""

from __future__ import annotations

import hashlib
import http.client
import io
import itertools
import json
import socket
import urllib.parse
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import imagehash
import pytest
from PIL import Image

from tuwen.local import fixture_site
from tuwen.local.fixture_site import (
    MANIFEST_NAME,
    MAX_ASPECT_RATIO,
    MAX_BYTES,
    MAX_PIXELS,
    MIN_SIDE,
    NEAR_DUPLICATE_MAX_PHASH_DISTANCE,
    OUTCOMES,
    FixtureSiteProcess,
    FontMissingError,
    SiteManifest,
    count_expected,
    extract_links,
    generate_site,
    read_request_log,
    serve_site,
)

REQUIRED_REASONS = {
    "too_small", "duplicate", "near_duplicate", "corrupt", "http_404", "not_image", "off_domain",
    "robots_disallowed", "noai", "redirect_loop", "decompression_bomb", "too_large_bytes", "too_many_pixels",
    "animated", "extreme_aspect", "srcset_smaller_variant",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    generate_site(out, seed=7)
    return out


@pytest.fixture(scope="module")
def manifest(site: Path) -> SiteManifest:
    return SiteManifest.load(site)


@pytest.fixture(scope="module")
def served(site: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("log") / "requests.jsonl"
    with FixtureSiteProcess(site, request_log=log) as process:
        yield process


def _get(base_url: str, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request without following redirects; `path` may hold raw Chinese (percent-encoded here)."""
    parts = urllib.parse.urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(method, urllib.parse.quote(path))
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


class _ImageRefs(HTMLParser):
    """Every image reference a page makes, the way the manifest names them (how, url)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: set[tuple[str, str]] = set()
        self.in_picture = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "picture":
            self.in_picture = True
        elif tag == "source" and self.in_picture:
            self.refs.update(("picture", c.split()[0]) for c in a["srcset"].split(","))
        elif tag == "meta" and a.get("property") == "og:image":
            self.refs.add(("og", a["content"]))
        elif tag == "img" and not self.in_picture:
            if "srcset" in a:
                self.refs.update(("srcset", c.split()[0]) for c in a["srcset"].split(","))
            for how in ("data-src", "data-original"):
                if how in a:
                    self.refs.add((how, a[how]))
            if a.get("src") and not a["src"].startswith("data:") and "srcset" not in a:
                self.refs.add(("img", a["src"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "picture":
            self.in_picture = False


# --- content --------------------------------------------------------------------------------


def test_standard_site_has_enough_pages_and_images(manifest: SiteManifest) -> None:
    accepted = [img for img in manifest.images.values() if img.outcome == "accepted"]
    with_text = [img for img in accepted if img.text]
    assert manifest.page_count >= 30
    assert len(accepted) >= 150
    assert len(with_text) / len(accepted) >= 0.7
    for img in with_text:
        assert all(line.strip() for line in img.text or [])
        assert any("\u4e00" <= ch <= "\u9fff" for ch in "".join(img.text or [])), img.url
    assert max(page["depth"] for page in manifest.pages) >= 2


def test_expected_counts_match_the_per_image_entries(site: Path, manifest: SiteManifest) -> None:
    raw = json.loads((site / MANIFEST_NAME).read_text(encoding="utf-8"))
    by_outcome = Counter(entry["outcome"] for entry in raw["images"].values())
    by_reason = Counter(entry["reason"] for entry in raw["images"].values() if entry["reason"])
    counts = raw["expected_counts"]
    assert counts["by_outcome"] == {name: by_outcome.get(name, 0) for name in OUTCOMES}
    assert counts["by_reason"] == dict(by_reason)
    assert counts["images_total"] == len(raw["images"]) == sum(by_outcome.values())
    assert counts == count_expected(manifest.images)
    assert raw["page_count"] == len(raw["pages"])
    assert set(by_reason) >= REQUIRED_REASONS


def test_manifest_entries_are_consistent(manifest: SiteManifest) -> None:
    images = manifest.images
    for url, img in images.items():
        assert img.url == url and img.outcome in OUTCOMES
        assert (img.reason is None) == (img.outcome == "accepted"), url
        assert img.pages, f"{url} is referenced by no page"
        if img.outcome in ("duplicate", "near_duplicate"):
            assert images[img.duplicate_of].outcome == "accepted", url
            # Copies sit on a page other than their original, so the crawler meets them separately.
            assert {p.page for p in img.pages}.isdisjoint({p.page for p in images[img.duplicate_of].pages})
        if img.outcome == "duplicate":
            assert img.sha256 == images[img.duplicate_of].sha256
    accepted_hashes = [img.sha256 for img in images.values() if img.outcome == "accepted"]
    assert len(accepted_hashes) == len(set(accepted_hashes))


def test_files_match_the_manifest_and_accepted_images_are_usable(site: Path, manifest: SiteManifest) -> None:
    www = site / manifest.web_root
    for url, img in manifest.images.items():
        if img.file is None:
            continue
        data = (www / img.file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == img.sha256 and len(data) == img.bytes, url
        if img.outcome != "accepted":
            continue
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            assert opened.format in ("JPEG", "PNG") and not getattr(opened, "is_animated", False)
            assert (opened.width, opened.height) == (img.width, img.height)
            assert min(opened.size) >= MIN_SIDE and max(opened.size) <= 1280, url
            assert max(opened.size) / min(opened.size) <= MAX_ASPECT_RATIO
    assert any(img.mode == "L" for img in manifest.images.values() if img.outcome == "accepted")
    palette = [img for img in manifest.images.values() if img.outcome == "accepted" and img.mode == "P"]
    assert palette
    with Image.open(www / palette[0].file) as opened:
        assert "transparency" in opened.info


def test_hard_cases_fail_the_way_the_manifest_says(site: Path, manifest: SiteManifest) -> None:
    www = site / manifest.web_root
    by_reason: dict[str, list] = {}
    for img in manifest.images.values():
        by_reason.setdefault(img.reason or "", []).append(img)

    def data(reason: str) -> bytes:
        return (www / by_reason[reason][0].file).read_bytes()

    assert {img.width for img in by_reason["too_small"]} >= {11, 64}
    assert all(min(img.width, img.height) < MIN_SIDE for img in by_reason["too_small"])
    with Image.open(io.BytesIO(data("corrupt"))) as broken, pytest.raises(OSError):
        broken.load()
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data("decompression_bomb")))
    assert len(data("decompression_bomb")) < 200_000
    assert len(data("too_large_bytes")) > MAX_BYTES
    huge = by_reason["too_many_pixels"][0]
    assert huge.width * huge.height > MAX_PIXELS and huge.bytes < MAX_BYTES
    with Image.open(io.BytesIO(data("animated"))) as gif:
        assert gif.n_frames > 1 and min(gif.size) >= MIN_SIDE
    strip = by_reason["extreme_aspect"][0]
    assert strip.width / strip.height > MAX_ASPECT_RATIO and min(strip.width, strip.height) >= MIN_SIDE
    for img in by_reason["not_image"]:
        assert (www / img.file).read_bytes().lstrip().startswith(b"<!DOCTYPE html>")
    assert all(img.file is None for img in by_reason["http_404"] + by_reason["redirect_loop"])
    assert all(img.url.startswith("http://") or img.url.startswith("https://") for img in by_reason["off_domain"])
    assert all(img.url.startswith("/private/") for img in by_reason["robots_disallowed"])


def test_near_duplicates_are_close_and_distinct_images_are_far(site: Path, manifest: SiteManifest) -> None:
    www = site / manifest.web_root

    def phash(img) -> imagehash.ImageHash:
        with Image.open(www / img.file) as opened:
            return imagehash.phash(opened)

    accepted = {url: phash(img) for url, img in manifest.images.items() if img.outcome == "accepted"}
    closest = min(a - b for a, b in itertools.combinations(accepted.values(), 2))
    near = [img for img in manifest.images.values() if img.outcome == "near_duplicate"]
    farthest_near = max(phash(img) - accepted[img.duplicate_of] for img in near)
    assert {img.variant for img in near} == {"requality", "resize90", "crop2"}
    assert farthest_near <= NEAR_DUPLICATE_MAX_PHASH_DISTANCE
    assert closest >= 2 * NEAR_DUPLICATE_MAX_PHASH_DISTANCE + 2


def test_every_image_reference_in_the_html_is_in_the_manifest(site: Path, manifest: SiteManifest) -> None:
    www = site / manifest.web_root
    from_html: set[tuple[str, str, str]] = set()
    for page in manifest.pages:
        parser = _ImageRefs()
        parser.feed((www / page["path"].lstrip("/")).read_text(encoding="utf-8"))
        from_html.update((page["path"], how, url) for how, url in parser.refs)
    from_manifest = {(ref.page, ref.how, img.url) for img in manifest.images.values() for ref in img.pages}
    assert from_html == from_manifest
    # Raw Chinese in src attributes, not percent-encoded.
    assert any(url == "/图片/菜单.jpg" for _, _, url in from_html)
    hows = {how for _, how, _ in from_html}
    assert hows == {"img", "data-src", "data-original", "srcset", "picture", "og"}


def test_smaller_srcset_candidates_are_marked_not_fetched(manifest: SiteManifest) -> None:
    variants = [img for img in manifest.images.values() if img.reason == "srcset_smaller_variant"]
    assert variants
    for img in variants:
        largest = manifest.images[img.duplicate_of]
        assert largest.outcome == "accepted" and largest.width > img.width
        assert {p.page for p in img.pages} == {p.page for p in largest.pages}


def test_same_seed_gives_byte_identical_sites(site: Path, tmp_path: Path) -> None:
    generate_site(tmp_path, seed=7)

    def digests(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    first, second = digests(site), digests(tmp_path)
    assert len(first) > 200
    assert first == second


def test_another_seed_gives_another_site(manifest: SiteManifest, tmp_path: Path) -> None:
    other = generate_site(tmp_path, seed=8, profile="bench", images=3)
    assert other.seed == 8 and other.images.keys() != manifest.images.keys()
    shas = {img.sha256 for img in manifest.images.values()}
    assert not shas & {img.sha256 for img in other.images.values() if img.kind == "photo"}


# --- bench profile ------------------------------------------------------------------------


def test_bench_profile_is_plain_and_sized_like_photos(tmp_path: Path) -> None:
    bench = generate_site(tmp_path, seed=3, profile="bench", images=60)
    photos = [img for img in bench.images.values() if img.kind == "photo"]
    assert len(photos) == 60 and all(img.outcome == "accepted" for img in photos)
    assert all(80_000 <= img.bytes <= 320_000 for img in photos), sorted(img.bytes for img in photos)
    assert len({img.sha256 for img in photos}) == 60
    per_page = Counter(ref.page for img in photos for ref in img.pages)
    assert sorted(per_page.values()) == [10, 50]
    assert bench.expected_counts["by_outcome"]["accepted"] == 60
    assert _reachable_pages(tmp_path / bench.web_root) >= {p["path"] for p in bench.pages}


def test_cli_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fixture_site.main(["generate", "--out", str(tmp_path), "--profile", "bench", "--images", "4"]) == 0
    assert "wrote 2 pages" in capsys.readouterr().out
    assert json.loads((tmp_path / MANIFEST_NAME).read_text(encoding="utf-8"))["profile"] == "bench"


def test_missing_font_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fixture_site.load_cjk_font.cache_clear()
    monkeypatch.setattr(fixture_site, "CJK_FONT_PATH", tmp_path / "nope.ttc")
    try:
        with pytest.raises(FontMissingError, match="apt-get install fonts-wqy-microhei"):
            generate_site(tmp_path / "out")
    finally:
        fixture_site.load_cjk_font.cache_clear()


# --- links ---------------------------------------------------------------------------------


def _reachable_pages(www: Path) -> set[str]:
    seen, queue = {"/index.html"}, ["/index.html"]
    while queue:
        file = www / queue.pop().lstrip("/")
        if not file.is_file():
            continue
        for href in extract_links(file.read_text(encoding="utf-8")):
            if href not in seen:
                seen.add(href)
                queue.append(href)
    return seen


def test_every_page_is_reachable_from_the_index_over_http(served: FixtureSiteProcess,
                                                          manifest: SiteManifest) -> None:
    seen, queue = {"/index.html"}, ["/index.html"]
    while queue:
        path = queue.pop()
        if path.startswith("/private/"):
            continue  # robots.txt forbids it; a polite crawler stops here
        status, headers, body = _get(served.url, path)
        assert status == 200 and headers["content-type"] == "text/html; charset=utf-8", path
        for href in extract_links(body.decode("utf-8")):
            if href not in seen:
                seen.add(href)
                queue.append(href)
    assert {page["path"] for page in manifest.pages} | set(manifest.disallowed_pages) == seen


# --- server --------------------------------------------------------------------------------


def test_robots_txt(served: FixtureSiteProcess) -> None:
    status, headers, body = _get(served.url, "/robots.txt")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert body.decode() == "User-agent: *\nDisallow: /private/\n"


def test_missing_files_and_directories_are_404(served: FixtureSiteProcess) -> None:
    assert _get(served.url, "/img/missing/gone.jpg")[0] == 404
    assert _get(served.url, "/图片/已删除.jpg")[0] == 404
    assert _get(served.url, "/img/")[0] == 404  # no directory listings


def test_lying_content_types(served: FixtureSiteProcess) -> None:
    status, headers, body = _get(served.url, "/img/fake/banner.jpg")
    assert status == 200 and headers["content-type"] == "image/jpeg" and body.startswith(b"<!DOCTYPE html>")
    status, headers, body = _get(served.url, "/api/image/ad-42")
    assert status == 200 and headers["content-type"] == "image/png" and body.startswith(b"<!DOCTYPE html>")
    status, headers, body = _get(served.url, "/download/photo-raw")
    assert headers["content-type"] == "application/octet-stream" and body.startswith(b"\xff\xd8")


def test_x_robots_tag_headers(served: FixtureSiteProcess) -> None:
    assert _get(served.url, "/img/noai/1.jpg")[1]["x-robots-tag"] == "noai"
    assert _get(served.url, "/img/noai/2.jpg", "HEAD")[1]["x-robots-tag"] == "noimageai"
    assert "x-robots-tag" not in _get(served.url, "/img/lazy/1.jpg", "HEAD")[1]


def test_redirects(served: FixtureSiteProcess, manifest: SiteManifest) -> None:
    status, headers, _ = _get(served.url, "/loop/a.jpg")
    assert (status, headers["location"]) == (302, "/loop/b.jpg")
    status, headers, _ = _get(served.url, "/loop/b.jpg")
    assert (status, headers["location"]) == (302, "/loop/a.jpg")
    status, headers, _ = _get(served.url, "/go/photo.jpg")
    assert (status, headers["location"]) == (301, "/img/redirected/photo.jpg")
    status, _, body = _get(served.url, headers["location"])
    assert status == 200 and hashlib.sha256(body).hexdigest() == manifest.images["/go/photo.jpg"].sha256


def test_chinese_file_names(served: FixtureSiteProcess, manifest: SiteManifest) -> None:
    status, headers, body = _get(served.url, "/图片/菜单.jpg")  # sent percent-encoded UTF-8
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert hashlib.sha256(body).hexdigest() == manifest.images["/图片/菜单.jpg"].sha256
    # Some clients send the raw UTF-8 bytes; the server understands those too.
    parts = urllib.parse.urlsplit(served.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw:
        raw.sendall("GET /商品/保温杯-特价.jpg HTTP/1.0\r\n\r\n".encode())
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    assert reply.split(b"\r\n", 1)[0].split()[1] == b"200"
    assert hashlib.sha256(reply.split(b"\r\n\r\n", 1)[1]).hexdigest() == manifest.images["/商品/保温杯-特价.jpg"].sha256


def test_connections_are_kept_alive(served: FixtureSiteProcess, manifest: SiteManifest) -> None:
    """Real sites keep connections open between requests, and the crawl's cost per image depends on it."""
    parts = urllib.parse.urlsplit(served.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        paths = ["/index.html", "/图片/菜单.jpg", "/no-such-page.html", "/index.html"]
        sockets = []
        for path in paths:
            connection.request("GET", urllib.parse.quote(path))
            response = connection.getresponse()
            response.read()
            sockets.append(connection.sock)
            assert response.status == (404 if "no-such" in path else 200)
        assert sockets[0] is not None and sockets[1] is sockets[0]  # page, then image: one connection
        # An error closes its connection (http.server's send_error says so); the next request reconnects.
        assert sockets[2] is None and sockets[3] is not None
    finally:
        connection.close()


def test_large_file_announces_its_length(served: FixtureSiteProcess, manifest: SiteManifest) -> None:
    big = next(img for img in manifest.images.values() if img.reason == "too_large_bytes")
    status, headers, _ = _get(served.url, big.url, "HEAD")
    assert status == 200 and int(headers["content-length"]) == big.bytes > MAX_BYTES


def test_request_log_records_what_was_fetched(served: FixtureSiteProcess) -> None:
    _get(served.url, "/about.html")
    _get(served.url, "/图片/已删除.jpg")
    entries = read_request_log(served.request_log)
    assert {"method": "GET", "path": "/about.html", "status": 200} in entries
    assert {"method": "GET", "path": "/图片/已删除.jpg", "status": 404} in entries


def test_in_process_server_is_quiet(site: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with serve_site(site).running() as server:
        assert _get(server.url, "/index.html")[0] == 200
        assert _get(server.url, "/nothing-here")[0] == 404
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_process_is_stopped_on_exit(site: Path) -> None:
    with FixtureSiteProcess(site) as process:
        child = process.process
        assert child is not None and child.poll() is None
        url = process.url
    assert child.poll() is not None
    with pytest.raises(OSError):
        _get(url, "/index.html")
