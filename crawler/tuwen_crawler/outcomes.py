"""What the crawler concludes about each image URL: an outcome and, unless accepted, a reason.

The vocabulary matches the fixture site's manifest (tuwen.local.fixture_site) so tests compare counts
directly. Outcomes:

  accepted        stored (raw/ and model/), ready for synthesis
  duplicate       same SHA-256 as an image already stored (the source row points at it)
  near_duplicate  perceptual hash within TUWEN_NEAR_DUP_DISTANCE of an accepted image
  rejected        fetched (or tried) and refused: a content or HTTP reason
  not_fetched     deliberately never requested: policy reasons (robots, off-domain, ...) and
                  transient network failures worth retrying another day
"""

from __future__ import annotations

from urllib.parse import urlsplit

from scrapy.exceptions import (
    CannotResolveHostError,
    DownloadCancelledError,
    DownloadConnectionRefusedError,
    DownloadTimeoutError,
    IgnoreRequest,
)
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.error import TimeoutError as TwistedTimeoutError
from twisted.python.failure import Failure

from tuwen.crawl.images import REJECT_REASONS
from tuwen_crawler.resolver import refusal_for

OUTCOMES = ("accepted", "duplicate", "near_duplicate", "rejected", "not_fetched")

# Never requested, by policy.
NOT_FETCHED_REASONS = (
    "off_domain",  # host outside the site's allowed_domains (also a redirect leaving them)
    "robots_disallowed",  # robots.txt forbids it
    "srcset_smaller_variant",  # a smaller candidate of a srcset/<picture> whose largest one is fetched
    "denied_by_pattern",  # matches the site's deny regexes
    "max_images_reached",  # the site's per-run image budget is spent
    "private_address",  # host resolves to a private/loopback/link-local address (SSRF guard)
    "page_noai",  # the page carries <meta name="robots" content="noai"> / X-Robots-Tag: noai
    "unsupported_scheme",  # file:, ftp:, blob:, javascript: ... (also a redirect to one): only http(s) is fetched
    "timeout",  # transient: worth another try on a later run
    "dns_error",
    "connection_error",
)

# Fetched or attempted, then refused. http_<status> is open-ended (http_404, http_410, http_500 ...).
FETCH_REJECT_REASONS = ("noai", "redirect_loop", "too_many_redirects", "too_large_bytes", "fetch_error")
REJECTED_REASONS = (*REJECT_REASONS, *FETCH_REJECT_REASONS)


class Refused(IgnoreRequest):
    """A request our middleware refused, with the reason to record."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def outcome_for_reason(reason: str) -> str:
    return "not_fetched" if reason in NOT_FETCHED_REASONS else "rejected"


def classify_failure(failure: Failure) -> tuple[str, int | None]:
    """(reason, http_status) for a request that ended in an errback."""
    exc = failure.value
    if isinstance(exc, HttpError):
        status = exc.response.status
        return f"http_{status}", status
    if isinstance(exc, Refused):
        return exc.reason, None
    if isinstance(exc, IgnoreRequest):
        message = str(exc)
        if "robots.txt" in message:
            return "robots_disallowed", None
        if "max redirections" in message:
            return "too_many_redirects", None
        if "offsite" in message.lower():
            return "off_domain", None
        return "fetch_error", None
    if isinstance(exc, DownloadTimeoutError | TwistedTimeoutError):
        return "timeout", None
    # DOWNLOAD_MAXSIZE cancels the download (by Content-Length up front, or mid-body).
    if isinstance(exc, DownloadCancelledError | CancelledError):
        return "too_large_bytes", None
    if isinstance(exc, CannotResolveHostError | DNSLookupError):
        # The resolver gives no address for a name it refused; it remembers why.
        request = getattr(failure, "request", None)
        if request is not None and refusal_for(urlsplit(request.url).hostname):
            return "private_address", None
        return "dns_error", None
    if isinstance(exc, DownloadConnectionRefusedError | ConnectError):
        return "connection_error", None
    return "fetch_error", None
