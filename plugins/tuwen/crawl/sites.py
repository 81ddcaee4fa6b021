"""The sites file: which websites the crawler may visit and how politely.

Schema (YAML):

    sites:
      - name: fixture                     # unique, [a-z0-9_-]+ ; used in DB rows and JOBDIR names
        start_urls: [http://127.0.0.1:8765/]
        sitemaps: []                      # optional sitemap.xml URLs (pages to start from)
        allowed_domains: [127.0.0.1]      # host names (IDN allowed); subdomains included; images elsewhere are off_domain
        allow: []                         # URL regexes a page must match to be followed (empty: all)
        deny: []                          # URL regexes never followed (pages and images)
        max_depth: 3                      # link hops from a start URL
        max_pages: 500                    # HTML pages fetched per run
        max_images: 0                     # image candidates per run, 0 = unlimited
        politeness:
          download_delay: 0.25            # seconds between requests to one domain
          concurrency_per_domain: 4
          autothrottle_target: 2.0        # AutoThrottle's target concurrency
        allow_private_addresses: false    # true only for local fixture sites
        allow_private_hosts: []           # exact hosts that may be private when the above is false
        user_agent: null                  # overrides TUWEN_CRAWL_USER_AGENT for this site

Every error names the file and the field (`sites[0].politeness.download_delay`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tuwen.config import ConfigError
from tuwen.urls import UrlError, host_in_domains, normalize_host

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class SitesConfigError(ConfigError):
    """The sites file is missing or malformed; the message names the file and the field. A setting like
    any other: a DAG task fails on it at once instead of retrying."""


@dataclass(frozen=True)
class Politeness:
    download_delay: float = 1.0
    concurrency_per_domain: int = 2
    autothrottle_target: float = 1.0


@dataclass(frozen=True)
class SiteConfig:
    name: str
    start_urls: tuple[str, ...]
    allowed_domains: tuple[str, ...]
    sitemaps: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    max_depth: int = 3
    max_pages: int = 500
    max_images: int = 0
    politeness: Politeness = field(default_factory=Politeness)
    allow_private_addresses: bool = False
    allow_private_hosts: tuple[str, ...] = ()  # normal-form hosts exempt from the private-address guard
    user_agent: str | None = None

    def may_use_private(self, host: str) -> bool:
        """Whether `host` (normal form) may resolve to a private address for this site."""
        return self.allow_private_addresses or host in self.allow_private_hosts

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, recorded in crawl_run.settings."""
        return {
            "name": self.name, "start_urls": list(self.start_urls), "sitemaps": list(self.sitemaps),
            "allowed_domains": list(self.allowed_domains), "allow": list(self.allow), "deny": list(self.deny),
            "max_depth": self.max_depth, "max_pages": self.max_pages, "max_images": self.max_images,
            "politeness": {
                "download_delay": self.politeness.download_delay,
                "concurrency_per_domain": self.politeness.concurrency_per_domain,
                "autothrottle_target": self.politeness.autothrottle_target,
            },
            "allow_private_addresses": self.allow_private_addresses,
            "allow_private_hosts": list(self.allow_private_hosts), "user_agent": self.user_agent,
        }


class _Reader:
    """Typed field access that turns every mistake into an error naming the file and the field path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> SitesConfigError:
        return SitesConfigError(f"{self.path}: {where}: {problem}")

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a mapping, got {type(value).__name__}")
        return value

    def check_keys(self, data: dict[str, Any], allowed: set[str], where: str) -> None:
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise self.fail(where, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")

    def string_list(self, data: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
        value = data.get(key) or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.fail(f"{where}.{key}", "must be a list of non-empty strings")
        return tuple(v.strip() for v in value)

    def integer(self, data: dict[str, Any], key: str, where: str, default: int, minimum: int) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(f"{where}.{key}", f"must be an integer >= {minimum}, got {value!r}")
        return value

    def number(self, data: dict[str, Any], key: str, where: str, default: float, minimum: float) -> float:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise self.fail(f"{where}.{key}", f"must be a number >= {minimum}, got {value!r}")
        return float(value)

    def boolean(self, data: dict[str, Any], key: str, where: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{where}.{key}", f"must be true or false, got {value!r}")
        return value

    def urls(self, data: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
        values = self.string_list(data, key, where)
        for i, url in enumerate(values):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise self.fail(f"{where}.{key}[{i}]", f"must be an absolute http(s) URL, got {url!r}")
        return values

    def patterns(self, data: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
        values = self.string_list(data, key, where)
        for i, pattern in enumerate(values):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise self.fail(f"{where}.{key}[{i}]", f"invalid regex {pattern!r}: {exc}") from None
        return values


SITE_KEYS = {"name", "start_urls", "sitemaps", "allowed_domains", "allow", "deny", "max_depth", "max_pages",
             "max_images", "politeness", "allow_private_addresses", "allow_private_hosts", "user_agent"}
POLITENESS_KEYS = {"download_delay", "concurrency_per_domain", "autothrottle_target"}


def _domains(reader: _Reader, data: dict[str, Any], where: str) -> tuple[str, ...]:
    """allowed_domains in the ASCII form Scrapy's requests carry: `例子.cn` becomes `xn--fsqu00a.cn`."""
    raw = reader.string_list(data, "allowed_domains", where)
    if not raw:
        raise reader.fail(f"{where}.allowed_domains", "must list at least one host name")
    domains = []
    for i, domain in enumerate(raw):
        if "/" in domain or ":" in domain:
            raise reader.fail(f"{where}.allowed_domains[{i}]", f"must be a bare host name, got {domain!r}")
        try:
            domains.append(normalize_host(domain))
        except UrlError as exc:
            raise reader.fail(f"{where}.allowed_domains[{i}]", str(exc)) from None
    return tuple(dict.fromkeys(domains))


def _private_hosts(reader: _Reader, data: dict[str, Any], where: str) -> tuple[str, ...]:
    hosts = []
    for i, host in enumerate(reader.string_list(data, "allow_private_hosts", where)):
        try:
            hosts.append(normalize_host(host))
        except UrlError as exc:
            raise reader.fail(f"{where}.allow_private_hosts[{i}]", str(exc)) from None
    return tuple(hosts)


def _parse_site(reader: _Reader, raw: Any, where: str) -> SiteConfig:
    data = reader.mapping(raw, where)
    reader.check_keys(data, SITE_KEYS, where)
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise reader.fail(f"{where}.name", f"must match {NAME_RE.pattern}, got {name!r}")
    start_urls = reader.urls(data, "start_urls", where)
    sitemaps = reader.urls(data, "sitemaps", where)
    if not start_urls and not sitemaps:
        raise reader.fail(where, f"site {name!r} needs start_urls or sitemaps")
    domains = _domains(reader, data, where)
    for i, url in enumerate(start_urls + sitemaps):
        if not host_in_domains(urlsplit(url).hostname, domains):
            raise reader.fail(where, f"seed URL #{i} {url!r} is outside allowed_domains {list(domains)}")
    politeness_raw = reader.mapping(data.get("politeness") or {}, f"{where}.politeness")
    reader.check_keys(politeness_raw, POLITENESS_KEYS, f"{where}.politeness")
    politeness = Politeness(
        download_delay=reader.number(politeness_raw, "download_delay", f"{where}.politeness", 1.0, 0.0),
        concurrency_per_domain=reader.integer(politeness_raw, "concurrency_per_domain", f"{where}.politeness", 2, 1),
        autothrottle_target=reader.number(politeness_raw, "autothrottle_target", f"{where}.politeness", 1.0, 0.1),
    )
    user_agent = data.get("user_agent")
    if user_agent is not None and (not isinstance(user_agent, str) or not user_agent.strip()):
        raise reader.fail(f"{where}.user_agent", "must be a non-empty string or omitted")
    return SiteConfig(
        name=name,
        start_urls=start_urls,
        sitemaps=sitemaps,
        allowed_domains=domains,
        allow=reader.patterns(data, "allow", where),
        deny=reader.patterns(data, "deny", where),
        max_depth=reader.integer(data, "max_depth", where, 3, 0),
        max_pages=reader.integer(data, "max_pages", where, 500, 1),
        max_images=reader.integer(data, "max_images", where, 0, 0),
        politeness=politeness,
        allow_private_addresses=reader.boolean(data, "allow_private_addresses", where, False),
        allow_private_hosts=_private_hosts(reader, data, where),
        user_agent=user_agent.strip() if user_agent else None,
    )


def load_sites(path: Path | str) -> dict[str, SiteConfig]:
    """Parse and validate the sites file; the result is keyed by site name, in file order."""
    path = Path(path)
    reader = _Reader(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SitesConfigError(f"{path}: cannot read sites file: {exc.strerror or exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SitesConfigError(f"{path}: not valid YAML: {exc}") from None
    document = reader.mapping(document, "top level")
    reader.check_keys(document, {"sites"}, "top level")
    raw_sites = document.get("sites")
    if not isinstance(raw_sites, list) or not raw_sites:
        raise reader.fail("sites", "must be a non-empty list of sites")
    sites: dict[str, SiteConfig] = {}
    for i, raw in enumerate(raw_sites):
        site = _parse_site(reader, raw, f"sites[{i}]")
        if site.name in sites:
            raise reader.fail(f"sites[{i}].name", f"duplicate site name {site.name!r}")
        sites[site.name] = site
    return sites


def get_site(path: Path | str, name: str) -> SiteConfig:
    sites = load_sites(path)
    if name not in sites:
        raise SitesConfigError(f"{path}: no site named {name!r}; known: {', '.join(sites)}")
    return sites[name]
