"""Takedowns: remove an image URL, a page URL, a whole domain or one image (by SHA-256) from all future
releases, and say which past releases shipped it.

A takedown is a row in `takedown` (kind, value, reason). Applying it links every matching image in
`takedown_image` (with the status it had, so a mistaken takedown can be reverted by hand), sets the image's
status to `taken_down` (with `taken_down_at`) and its samples' `qc_status` to `taken_down`. Exports select
only accepted images and never taken-down samples, and `write_release` re-applies every takedown first, so
images crawled after a domain was taken down are caught too. Published releases are immutable files;
`releases_with_takedowns` names the ones that hold taken-down items so they can be re-issued or withdrawn.

Matching, in normal form (`tuwen.urls`, the crawler's own normaliser): a `url` matches an image_source's
image URL or page URL when both normalise to the same URL — scheme and host case, IDN hosts (`例子.cn`
is the punycode host Scrapy stored), a trailing dot, the default port, the fragment and
percent-encoding do not matter. A `domain` matches the host of either URL and its subdomains
(`example.com` covers `img.example.com`); a bare public suffix (`com.cn`, `cn`, `github.io`) is refused,
it would take down every site under it. `image_sha256` is the image's content hash.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import tldextract
from sqlalchemy import Connection, Engine

from tuwen.release import queries
from tuwen.urls import UrlError, normalize_host, normalize_url

TAKEDOWN_KINDS = ("url", "domain", "image_sha256")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class TakedownError(ValueError):
    """The takedown request is malformed; the message says how."""


@dataclass(frozen=True)
class TakedownResult:
    takedown_id: int
    kind: str
    value: str
    images: int  # images this takedown covers (including ones already taken down by another)
    samples: int  # samples on those images, now qc_status taken_down
    releases: list[str]  # releases that shipped any of them (superseded versions as name@v<version>)


@dataclass(frozen=True)
class ReleaseHit:
    release: str
    published_at: Any
    takedown_id: int
    kind: str
    value: str
    samples: int


@functools.cache
def _public_suffixes() -> tldextract.TLDExtract:
    # The Public Suffix List snapshot that ships with tldextract: no network, no cache directory.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True)


def is_public_suffix(host: str) -> bool:
    """True for a host that is only a public suffix (`cn`, `com.cn`, `github.io`), under which
    unrelated owners register names."""
    parts = _public_suffixes()(host)
    return not parts.domain and bool(parts.suffix)


def normalize(kind: str, value: str) -> str:
    """The canonical value stored and matched: URLs and hosts in `tuwen.urls` normal form (punycode,
    lower case, no trailing dot), hashes lower-case hex."""
    if kind not in TAKEDOWN_KINDS:
        raise TakedownError(f"unknown takedown kind {kind!r}; known: {', '.join(TAKEDOWN_KINDS)}")
    if not isinstance(value, str) or not value.strip():
        raise TakedownError(f"an empty {kind} cannot be taken down")
    value = value.strip()
    if kind == "image_sha256":
        value = value.lower()
        if not _SHA256.match(value):
            raise TakedownError(f"{value!r} is not a SHA-256 hex digest (64 hex characters)")
        return value
    if kind == "url":
        try:
            return normalize_url(value)
        except UrlError as exc:
            raise TakedownError(f"{value!r} is not an absolute http(s) URL: {exc}") from None
    raw = value
    if "://" in value:
        value = urlsplit(value).hostname or ""
    else:
        value = value.split("/")[0]
        if value.count(":") == 1:  # host:port
            value = value.split(":")[0]
    value = value.removeprefix("*.")
    try:
        host = normalize_host(value)
    except UrlError as exc:
        raise TakedownError(f"{raw!r} is not a domain name like example.com: {exc}") from None
    if "." not in host or host.replace(".", "").isdigit():
        raise TakedownError(f"{raw!r} is not a domain name like example.com")
    if is_public_suffix(host):
        raise TakedownError(f"{raw!r} is a public suffix: it would take down every site registered under it; "
                            "name the site's own domain (e.g. example.com.cn)")
    return host


def _url_matches(conn: Connection, takedowns: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """(takedown id, image id) for url takedowns: image_source rows on the takedowns' hosts, compared in
    normal form (one pass over those hosts' rows, whatever the number of takedowns)."""
    wanted: dict[str, list[int]] = {}
    for takedown_id, url in takedowns:
        wanted.setdefault(url, []).append(takedown_id)
    hosts = sorted({urlsplit(url).hostname or "" for url in wanted})
    matches: set[tuple[int, int]] = set()
    for image_id, *urls in queries.sources_on_hosts(conn, hosts):
        for url in urls:
            for takedown_id in wanted.get(_normal_or_none(url) or "", ()):
                matches.add((takedown_id, int(image_id)))
    return sorted(matches)


def urls_matching(conn: Connection, url: str) -> list[int]:
    """Ids of the images seen at `url` (an image or page URL in normal form), however it was spelled."""
    return sorted({image_id for _, image_id in _url_matches(conn, [(0, url)])})


@functools.lru_cache(maxsize=65536)
def _normal_or_none(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return normalize_url(url)
    except UrlError:
        return None


def _link_matches(conn: Connection, takedown_ids: list[int] | None) -> None:
    queries.link_hash_and_domain_takedowns(conn, takedown_ids)
    url_takedowns = [(int(r.id), _normal_or_none(r.value) or r.value)
                     for r in queries.url_takedowns(conn, takedown_ids)]
    if url_takedowns:
        queries.link_images(conn, _url_matches(conn, url_takedowns))
    queries.take_down_linked(conn)


def apply_takedowns(engine: Engine) -> None:
    """Re-apply every takedown (cheap when there are none): catches images crawled since it was added."""
    with engine.begin() as conn:
        if queries.any_takedown(conn):
            _link_matches(conn, None)


def add_takedown(engine: Engine, kind: str, value: str, reason: str | None = None) -> TakedownResult:
    """Record a takedown and apply it now; adding the same (kind, value) again re-applies it."""
    value = normalize(kind, value)
    with engine.begin() as conn:
        takedown_id = queries.upsert_takedown(conn, kind, value, reason)
        _link_matches(conn, [takedown_id])
        images, samples, releases = queries.takedown_reach(conn, takedown_id)
    return TakedownResult(takedown_id, kind, value, images, samples, releases)


def releases_with_takedowns(engine: Engine) -> list[ReleaseHit]:
    """Releases that shipped taken-down items (published, and superseded versions as name@v<version>),
    per takedown, with how many samples."""
    return [ReleaseHit(*row) for row in queries.release_takedown_hits(engine)]
