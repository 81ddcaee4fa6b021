"""One normal form for URLs and host names, so that every place comparing them agrees.

Scrapy sends (and the lineage tables store) hosts in their ASCII form: lower case, IDN labels in
punycode (`例子.cn` is `xn--fsqu00a.cn`), no trailing dot. A sites file, a takedown request or an
analyst's query may spell the same host any other way; each passes through `normalize_host` or
`normalize_url` before it is compared, so `HTTP://例子.CN.:80/a#top` and `http://xn--fsqu00a.cn/a`
are the same page.

`normalize_url` keeps the query's order (a server may care about it) and changes only what is the
same resource to every HTTP server: scheme and host case, IDNA, the trailing dot, the default port,
an empty path, the fragment, user:password@ (never part of what is fetched or matched), and percent-encoding (unreserved characters decoded, other escapes in
upper case, raw non-ASCII and spaces encoded as UTF-8).

Pure functions; no network, no DNS.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

import idna
from w3lib.url import safe_url_string

WEB_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_CHARS = 8192  # longer URLs are refused rather than normalised (browsers and servers cap near here)

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


class UrlError(ValueError):
    """A URL or host that has no normal form (bad IDNA, bad port, not a URL); the message says which."""


def normalize_host(host: str) -> str:
    """The ASCII, lower-case, punycode host name without trailing dot; IP addresses in their short form.

    Raises UrlError for a host that cannot be a DNS name or an IP address.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    # IDNA's full stops (。．｡) separate labels as "." does.
    text = text.translate({0x3002: ".", 0xFF0E: ".", 0xFF61: "."}).rstrip(".")
    if not text:
        raise UrlError(f"empty host name in {host!r}")
    if not text.isascii():
        try:
            text = idna.encode(text, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise UrlError(f"host {host!r} is not a valid internationalised domain name: {exc}") from None
    text = text.lower()
    labels = text.split(".")
    if len(text) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise UrlError(f"host {host!r} is not a valid host name")
    return text


def display_host(host: str) -> str:
    """The host as people write it (`xn--fsqu00a.cn` -> `例子.cn`), for messages and reports."""
    ascii_host = normalize_host(host)
    try:
        return idna.decode(ascii_host)
    except (idna.IDNAError, UnicodeError):
        return ascii_host


def host_in_domains(host: str | None, domains: tuple[str, ...] | list[str]) -> bool:
    """True when `host` is one of `domains` or a subdomain of one (all compared in normal form)."""
    if not host:
        return False
    try:
        normal = normalize_host(host)
    except UrlError:
        return False
    for domain in domains:
        try:
            wanted = normalize_host(domain)
        except UrlError:
            continue
        if normal == wanted or normal.endswith("." + wanted):
            return True
    return False


def is_web_url(url: str) -> bool:
    """Only http(s) is ever fetched: never file:, ftp:, data:, javascript:, s3: ..."""
    return url_scheme(url) in WEB_SCHEMES


def url_scheme(url: str) -> str:
    return urlsplit(url.strip()[:64]).scheme.lower()


def _normalize_escapes(part: str) -> str:
    def one(match: re.Match[str]) -> str:
        byte = int(match.group(1), 16)
        return chr(byte) if byte in _UNRESERVED else "%" + match.group(1).upper()

    return _ESCAPE.sub(one, part)


def normalize_url(url: str) -> str:
    """The normal form of an absolute http(s) URL (see the module docstring); raises UrlError otherwise."""
    if len(url) > MAX_URL_CHARS:
        raise UrlError(f"URL longer than {MAX_URL_CHARS} characters")
    raw = url.strip()
    scheme = url_scheme(raw)
    if scheme not in WEB_SCHEMES:
        raise UrlError(f"not an http(s) URL: {raw[:200]!r}")
    try:
        parts = urlsplit(raw)
        hostname = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise UrlError(f"malformed URL {raw[:200]!r}: {exc}") from None
    if not hostname:
        raise UrlError(f"URL without a host: {raw[:200]!r}")
    host = normalize_host(hostname)
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    # safe_url_string encodes raw non-ASCII (as UTF-8) and unsafe characters, leaving %xx escapes alone.
    encoded = urlsplit(safe_url_string(urlunsplit(("http", "h", parts.path, parts.query, "")), encoding="utf-8"))
    path = _normalize_escapes(encoded.path) or "/"
    query = _normalize_escapes(encoded.query)
    return urlunsplit((scheme, netloc, path, query, ""))


def host_of(url: str) -> str:
    """The normal-form host of an http(s) URL; raises UrlError when it has none."""
    return urlsplit(normalize_url(url)).hostname or ""
