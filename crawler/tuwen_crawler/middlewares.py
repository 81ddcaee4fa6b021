"""GuardMiddleware: refuse requests the crawler must never make, with a reason the errback records.

- private_address: the host resolves to a private, loopback, link-local, reserved or multicast
  address (an SSRF guard: a page can point <img> at http://169.254.169.254/ or an intranet host).
  Sites that are local on purpose (the fixture) set allow_private_addresses: true.
- redirect_loop: a 3xx points back into its own redirect chain (seen before RedirectMiddleware, so
  the loop ends at once instead of after REDIRECT_MAX_TIMES hops).
- off_domain: a 3xx leaves the site's allowed_domains (image requests bypass OffsiteMiddleware
  because the spider dedups them itself with dont_filter=True).

The address check resolves the host itself before Scrapy connects; a DNS answer that changes between
the two lookups (rebinding) is not caught. Production crawlers should also egress through a proxy that
enforces the same rule.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.http import Response
from w3lib.url import safe_url_string

from tuwen_crawler.outcomes import Refused

REDIRECT_STATUSES = {301, 302, 303, 307, 308}


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def host_allowed(host: str | None, domains: list[str] | tuple[str, ...]) -> bool:
    host = (host or "").lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in domains)


async def resolve_host(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


class GuardMiddleware:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self._verdicts: dict[str, str | None] = {}  # host -> refusal detail, None when allowed

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def _site(self) -> Any:
        return getattr(self.crawler.spider, "site", None)

    async def _address_refusal(self, url: str) -> str | None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host in self._verdicts:
            return self._verdicts[host]
        try:
            addresses = [host] if _is_ip(host) else await resolve_host(host, parts.port or 80)
        except OSError:
            # Unresolvable hosts fail in the download itself and are recorded as dns_error there.
            return None
        private = [a for a in addresses if not is_public_address(a)]
        verdict = f"{host} resolves to non-public {', '.join(private)}" if private else None
        self._verdicts[host] = verdict
        return verdict

    async def process_request(self, request: Request) -> None:
        site = self._site()
        if site is None or site.allow_private_addresses or urlsplit(request.url).scheme not in ("http", "https"):
            return None
        detail = await self._address_refusal(request.url)
        if detail:
            self.crawler.stats.inc_value("tuwen/refused/private_address")
            raise Refused("private_address", detail)
        return None

    def process_response(self, request: Request, response: Response) -> Response:
        location = response.headers.get("Location")
        if response.status not in REDIRECT_STATUSES or not location or request.meta.get("dont_redirect"):
            return response
        target = safe_url_string(urljoin(request.url, location.decode("latin-1")), encoding="utf-8")
        chain = [*request.meta.get("redirect_urls", []), request.url]
        if target in chain:
            self.crawler.stats.inc_value("tuwen/refused/redirect_loop")
            raise Refused("redirect_loop", f"{request.url} -> {target} is already in {chain}")
        site = self._site()
        if site is not None and not host_allowed(urlsplit(target).hostname, site.allowed_domains):
            self.crawler.stats.inc_value("tuwen/refused/off_domain_redirect")
            raise Refused("off_domain", f"redirect to {target}")
        return response


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
