"""GuardMiddleware: refuse requests the crawler must never make, with a reason the errback records.

- unsupported_scheme: anything but http(s), including a 3xx pointing at file:, ftp:, data: ...
  (Scrapy's other download handlers are also off in settings.py, so such a request could not run).
- private_address: an IP-literal host that is private, loopback, link-local, reserved or multicast
  (an SSRF guard: a page can point <img> at http://169.254.169.254/). Host *names* are judged by the
  resolver Scrapy connects with (tuwen_crawler.resolver), so the check and the connection use one
  and the same DNS answer. Sites that are local on purpose (the fixture) set allow_private_addresses.
- redirect_loop: a 3xx points back into its own redirect chain (seen before RedirectMiddleware, so
  the loop ends at once instead of after REDIRECT_MAX_TIMES hops).
- off_domain: a 3xx leaves the site's allowed_domains (image requests bypass OffsiteMiddleware
  because the spider dedups them itself with dont_filter=True).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.http import Response
from w3lib.url import safe_url_string

from tuwen.urls import host_in_domains, is_web_url
from tuwen_crawler.outcomes import Refused
from tuwen_crawler.resolver import is_public_address

REDIRECT_STATUSES = {301, 302, 303, 307, 308}


class GuardMiddleware:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def _site(self) -> Any:
        return getattr(self.crawler.spider, "site", None)

    def process_request(self, request: Request) -> None:
        if not is_web_url(request.url):
            self.crawler.stats.inc_value("tuwen/refused/unsupported_scheme")
            raise Refused("unsupported_scheme", request.url[:200])
        site = self._site()
        host = urlsplit(request.url).hostname or ""
        address = _ip_literal(host)
        if site is None or address is None or site.may_use_private(str(address)):
            return None
        if not is_public_address(address):
            self.crawler.stats.inc_value("tuwen/refused/private_address")
            raise Refused("private_address", f"{host} is a non-public address")
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
        if not is_web_url(target):
            self.crawler.stats.inc_value("tuwen/refused/unsupported_scheme_redirect")
            raise Refused("unsupported_scheme", f"redirect to {target[:200]}")
        site = self._site()
        if site is not None and not host_in_domains(urlsplit(target).hostname, site.allowed_domains):
            self.crawler.stats.inc_value("tuwen/refused/off_domain_redirect")
            raise Refused("off_domain", f"redirect to {target}")
        return response


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
