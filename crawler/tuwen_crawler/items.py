"""What the spider hands the pipeline. Every image URL the spider sees ends as exactly one of
FetchedImage / UnfetchedImage (the verdict-bearing first sighting), plus one ImageMention for
every further page that mentions the same URL."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Mention:
    """One place an image URL was seen: becomes one image_source row (unique on url, page_url)."""

    url: str  # absolute, percent-encoded
    page_url: str
    page_title: str | None
    alt_text: str | None
    context_text: str | None
    found_in: str  # img | data-src | data-original | srcset | picture | og


@dataclass
class FetchedImage:
    mention: Mention
    body: bytes
    http_status: int
    content_type: str | None
    x_robots_tag: list[str] = field(default_factory=list)
    final_url: str | None = None  # after redirects

    def __repr__(self) -> str:
        # Scrapy logs an item's repr (every scraped item at DEBUG, a failed one at ERROR): never the bytes.
        return (f"FetchedImage(url={self.mention.url!r}, page_url={self.mention.page_url!r}, "
                f"body=<{len(self.body)} bytes>, http_status={self.http_status}, content_type={self.content_type!r})")


@dataclass
class UnfetchedImage:
    """An image URL that yielded no bytes to judge: policy refusals and failed downloads."""

    mention: Mention
    outcome: str  # rejected | not_fetched
    reason: str
    http_status: int | None = None
    content_type: str | None = None


@dataclass
class ImageMention:
    """A further page mentioning an image URL whose verdict comes (or came) from its first sighting."""

    mention: Mention
