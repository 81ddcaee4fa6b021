"""Image candidates on an HTML page: where lazy-loading, responsive images and social tags put them.

Rules (the fixture site's manifest states the same):
  <img src>                         the image, unless a lazy-loading or srcset attribute says otherwise
  <img data-src|data-original>      the real image; `src` is then a placeholder and ignored
  <img srcset> / <picture><source>  only the largest candidate is fetched; the smaller ones and the
                                    <img src> fallback are recorded as srcset_smaller_variant
  <meta property="og:image">        the page's share image
  data: URIs                        placeholders, never images
URLs are resolved against <base href> or the page URL, percent-encoded (raw Chinese paths are common),
and stripped of #fragments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urldefrag, urljoin

from parsel import Selector
from scrapy.http import TextResponse
from scrapy.utils.response import get_base_url
from w3lib.url import safe_url_string

from tuwen.urls import UrlError, normalize_url

CONTEXT_MAX_CHARS = 300
ALT_MAX_CHARS = 300
# Image candidates taken from one page, in document order; the rest are only counted (PageImages.over_cap,
# recorded in the crawl's page counts). A page is untrusted input: its work, and the rows it makes, stay bounded.
MAX_CANDIDATES_PER_PAGE = 500
_SPACE = re.compile(r"\s+")
_NOAI = re.compile(r"\bno(image)?ai\b", re.IGNORECASE)


@dataclass
class ImageCandidate:
    url: str  # absolute, percent-encoded, no fragment; may be a data:/other-scheme URL (caller decides)
    found_in: str
    alt_text: str | None = None
    context_text: str | None = None
    smaller_variants: list[str] = field(default_factory=list)


@dataclass
class PageImages:
    title: str | None
    noai: bool  # <meta name="robots"|"tuwen" content="noai|noimageai">
    candidates: list[ImageCandidate]
    over_cap: int = 0  # candidates past MAX_CANDIDATES_PER_PAGE, not taken


def _clean(text: str | None, limit: int) -> str | None:
    if not text:
        return None
    text = _SPACE.sub(" ", text).strip()
    return text[:limit] or None


def absolute_url(base: str, raw: str) -> str:
    """Resolve against the page, then the one normal form (tuwen.urls) that lineage rows and takedowns
    compare; a URL of another scheme (refused later, with a reason) is only percent-encoded and defragmented."""
    joined = urljoin(base, raw.strip())
    try:
        return normalize_url(joined)
    except UrlError:
        return urldefrag(safe_url_string(joined, encoding="utf-8"))[0]


def parse_srcset(srcset: str) -> list[tuple[str, float]]:
    """[(url, size)] where size is the w descriptor, or the x density times 1e-6 (w beats x), default 1x."""
    out: list[tuple[str, float]] = []
    # Candidates are separated by commas followed by whitespace; a URL may itself contain commas.
    for part in re.split(r",\s+", srcset.strip()):
        pieces = part.strip().rstrip(",").split()
        if not pieces:
            continue
        url, descriptor = pieces[0], (pieces[1] if len(pieces) > 1 else "1x")
        try:
            if descriptor.endswith("w"):
                size = float(descriptor[:-1])
            elif descriptor.endswith("x"):
                size = float(descriptor[:-1]) * 1e-6
            else:
                size = 1e-6
        except ValueError:
            size = 1e-6
        out.append((url, size))
    return out


class _ContextTexts:
    """Context text per image, with each enclosing element's text gathered once per page.

    Every image in a gallery shares its parent: joining the parent's text again for each image
    would make a page's cost grow with images x text.
    """

    def __init__(self) -> None:
        self._texts: dict[Any, str | None] = {}

    def _text_of(self, element: Any, path: str) -> str | None:
        key = (element, path)
        if key not in self._texts:
            self._texts[key] = _clean(" ".join(element.xpath(path)), CONTEXT_MAX_CHARS)
        return self._texts[key]

    def of(self, img: Selector) -> str | None:
        # lxml's own tree walk: the image's ancestors, nearest first.
        for figure in img.root.iterancestors("figure"):
            caption = self._text_of(figure, ".//figcaption//text()")
            if caption:
                return caption
            break
        for parent in img.root.iterancestors():
            if parent.tag != "picture":
                return self._text_of(parent, ".//text()")
        return None


IMG_ATTRIBUTES = ("src", "data-src", "data-original", "srcset", "alt", "title")


def _attributes(img: Selector) -> dict[str, str]:
    # Only the attributes read here: a hostile page may carry attribute names lxml cannot return,
    # and `Selector.attrib` would raise on them.
    root = img.root
    found = {name: root.get(name) for name in IMG_ATTRIBUTES}
    return {name: value for name, value in found.items() if value is not None}


def _alt(img: Selector) -> str | None:
    attrs = _attributes(img)
    return _clean(attrs.get("alt") or attrs.get("title"), ALT_MAX_CHARS)


def _largest(base: str, srcsets: list[str]) -> tuple[str | None, list[str]]:
    """The largest candidate across srcset strings, and all the others."""
    ranked: list[tuple[float, int, str]] = []
    for srcset in srcsets:
        for url, size in parse_srcset(srcset):
            ranked.append((size, -len(ranked), absolute_url(base, url)))
    if not ranked:
        return None, []
    ranked.sort(reverse=True)
    best = ranked[0][2]
    return best, list(dict.fromkeys(u for _, _, u in ranked[1:] if u != best))


def extract_page_images(response: TextResponse, max_candidates: int = MAX_CANDIDATES_PER_PAGE) -> PageImages:
    base = get_base_url(response)
    contexts = _ContextTexts()
    _context = contexts.of
    title = _clean(response.xpath("//title/text()").get(), 500)
    robots = " ".join(response.xpath("//meta[@name='robots' or @name='tuwen']/@content").getall())
    candidates: list[ImageCandidate] = []

    for picture in response.xpath("//picture"):
        img = picture.xpath(".//img")
        img_sel = img[0] if img else picture
        srcsets = picture.xpath("./source/@srcset").getall() + img.xpath("@srcset").getall()
        best, smaller = _largest(base, srcsets)
        fallback = img.xpath("@src").get()
        if best is None and fallback:
            best = absolute_url(base, fallback)
        elif fallback and not fallback.startswith("data:"):
            smaller.append(absolute_url(base, fallback))
        if best:
            candidates.append(ImageCandidate(best, "picture", _alt(img_sel), _context(img_sel),
                                             [u for u in dict.fromkeys(smaller) if u != best]))

    for img in response.xpath("//img[not(ancestor::picture)]"):
        attrs = _attributes(img)
        lazy = next((a for a in ("data-src", "data-original") if attrs.get(a, "").strip()), None)
        if lazy:
            candidates.append(ImageCandidate(absolute_url(base, attrs[lazy]), lazy, _alt(img), _context(img)))
            continue
        srcset = attrs.get("srcset", "").strip()
        if srcset:
            best, smaller = _largest(base, [srcset])
            src = attrs.get("src", "").strip()
            if src and not src.startswith("data:"):
                smaller.append(absolute_url(base, src))
            if best:
                candidates.append(ImageCandidate(best, "srcset", _alt(img), _context(img),
                                                 [u for u in dict.fromkeys(smaller) if u != best]))
                continue
        src = attrs.get("src", "").strip()
        if src:
            candidates.append(ImageCandidate(absolute_url(base, src), "img", _alt(img), _context(img)))

    description = response.xpath("//meta[@name='description']/@content").get()
    for og in response.xpath("//meta[@property='og:image' or @name='og:image']/@content").getall():
        if og.strip():
            candidates.append(ImageCandidate(absolute_url(base, og), "og", None, _clean(description, CONTEXT_MAX_CHARS)))

    return PageImages(title=title, noai=bool(_NOAI.search(robots)), candidates=candidates[:max_candidates],
                      over_cap=max(0, len(candidates) - max_candidates))
