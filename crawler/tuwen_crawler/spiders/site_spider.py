"""The generic `site` spider: crawl one site from the sites YAML and hand every image URL to the pipeline.

    scrapy crawl site -a site=fixture -a partition_date=2024-05-01 \\
        [-a sites_file=config/sites.local.yaml] [-a dag_id=...] [-a run_id=...] [-a job_key=...]

Pages: followed through <a href> (Scrapy's LinkExtractor) within allowed_domains, allow/deny, max_depth
link hops and max_pages. Depth is counted here, not with DEPTH_LIMIT, because DepthMiddleware would
also (silently) drop the images on the deepest pages.

Images: each distinct URL is decided once per run (the spider dedups them, so image requests use
dont_filter and redirects are judged by GuardMiddleware, not by the dupefilter); every further page
mentioning it yields an ImageMention. Failures arrive in `image_failed` and become UnfetchedImage items:
nothing the spider sees is dropped without a row.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from scrapy import Request, Spider, signals
from scrapy.crawler import Crawler
from scrapy.http import Response, TextResponse
from scrapy.linkextractors import LinkExtractor
from scrapy.spiders.sitemap import Sitemap, sitemap_urls_from_robots
from scrapy.utils.gz import gunzip
from twisted.python.failure import Failure

from tuwen.config import Settings
from tuwen.crawl.sites import SiteConfig, get_site
from tuwen.urls import host_in_domains, is_web_url, normalize_host
from tuwen_crawler.extract import ImageCandidate, extract_page_images
from tuwen_crawler.items import FetchedImage, ImageMention, Mention, UnfetchedImage
from tuwen_crawler.outcomes import classify_failure, outcome_for_reason
from tuwen_crawler.resolver import allow_private_addresses

RUNNING_MARKER = "tuwen-crawl.running"
# Scrapy's JOBDIR state. Its queue index is written only at a clean close, so after a hard kill it
# describes an older queue (or none) while requests.seen lists pages never parsed: trusting it would
# silently skip those pages' images.
SCRAPY_JOB_STATE = ("requests.queue", "requests.seen", "spider.state")
IMAGE_PRIORITY = 10  # images before further pages: keeps the queue (and memory) short
IMAGE_ACCEPT = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8"


class SiteSpider(Spider):
    name = "site"

    def __init__(self, site: str = "", sites_file: str | None = None, partition_date: str | None = None,
                 dag_id: str | None = None, run_id: str | None = None, job_key: str | None = None,
                 crawl_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not site:
            raise ValueError("the site spider needs -a site=NAME (a name from the sites YAML)")
        self.site: SiteConfig = get_site(sites_file or Settings.from_env().sites_file, site)
        self.partition_date = dt.date.fromisoformat(partition_date) if partition_date else dt.date.today()
        self.dag_id = dag_id
        self.airflow_run_id = run_id
        # Runs sharing a job_key resume each other (same JOBDIR); crawl_key finds this run's crawl_run row.
        self.job_key = job_key
        self.crawl_key = crawl_key or uuid.uuid4().hex
        # Scrapy's requests carry ASCII (punycode) hosts; the sites file may spell a domain in Unicode.
        self.allowed_domains = [normalize_host(d) for d in self.site.allowed_domains]
        self.allow = [re.compile(p) for p in self.site.allow]
        self.deny = [re.compile(p) for p in self.site.deny]
        # Hosts are checked in _page_request: LinkExtractor's allow_domains compares the netloc, so a
        # site on a non-default port (the fixture) would never match.
        self.links = LinkExtractor(allow=self.site.allow, deny=self.site.deny, tags=("a", "area"), attrs=("href",),
                                   unique=True)
        self.seen_images: set[str] = set()
        self.known_image_urls: set[str] = set()  # filled by the pipeline for a resumed job
        self.scheduled_pages: set[str] = set()  # max_pages counts distinct pages, not links to them
        self.images_requested = 0
        self.page_counts: Counter[str] = Counter()
        self.resumed_after_crash = False

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        spider = super().from_crawler(crawler, *args, **kwargs)
        # Per-site politeness; settings are still mutable here (frozen after from_crawler returns).
        politeness = spider.site.politeness
        settings = crawler.settings
        settings.set("DOWNLOAD_DELAY", politeness.download_delay, priority="spider")
        settings.set("CONCURRENT_REQUESTS_PER_DOMAIN", politeness.concurrency_per_domain, priority="spider")
        settings.set("AUTOTHROTTLE_TARGET_CONCURRENCY", politeness.autothrottle_target, priority="spider")
        # AutoThrottle starts from the site's own delay rather than a global guess, then adapts to latency.
        settings.set("AUTOTHROTTLE_START_DELAY", politeness.download_delay, priority="spider")
        if spider.site.user_agent:
            settings.set("USER_AGENT", spider.site.user_agent, priority="spider")
        # The resolver Scrapy connects through judges host names by this site's address policy.
        allow_private_addresses(spider.site.allow_private_addresses, spider.site.allow_private_hosts)
        jobdir = settings.get("JOBDIR")
        if jobdir:
            spider.resumed_after_crash = prepare_jobdir(Path(jobdir))
            crawler.signals.connect(spider.closed_cleanly, signal=signals.spider_closed)
        return spider

    def closed_cleanly(self, spider: Spider, reason: str) -> None:
        # Scrapy has persisted its queue and dupefilter by now: the JOBDIR may be trusted next time.
        (Path(self.settings["JOBDIR"]) / RUNNING_MARKER).unlink(missing_ok=True)

    # -- start -----------------------------------------------------------------------------
    async def start(self) -> AsyncIterator[Request]:
        for url in self.site.start_urls:
            self.scheduled_pages.add(url)
            yield Request(url, callback=self.parse_page, errback=self.page_failed, cb_kwargs={"depth": 0},
                          dont_filter=True)
        for url in self.site.sitemaps:
            yield Request(url, callback=self.parse_sitemap, errback=self.page_failed, dont_filter=True)

    def _sitemap_request(self, url: str) -> Request | None:
        # A sitemap may name any URL; only the site's own web pages are fetched (never file:, ftp: ...).
        if not is_web_url(url) or not host_in_domains(urlsplit(url).hostname, self.allowed_domains):
            self.page_counts["refused/sitemap_url"] += 1
            return None
        return Request(url, callback=self.parse_sitemap, errback=self.page_failed)

    def parse_sitemap(self, response: Response) -> Iterator[Request]:
        body = response.body
        if response.url.endswith(".gz") or body[:2] == b"\x1f\x8b":
            body = gunzip(body, max_size=self.settings.getint("DOWNLOAD_MAXSIZE"))
        if response.url.endswith("/robots.txt"):
            for url in sitemap_urls_from_robots(response.body, base_url=response.url):
                if (request := self._sitemap_request(url)) is not None:
                    yield request
            return
        sitemap = Sitemap(body)
        for entry in sitemap:
            loc = entry.get("loc", "")
            if sitemap.type == "sitemapindex":
                if (request := self._sitemap_request(loc)) is not None:
                    yield request
            elif (request := self._page_request(loc, depth=0)) is not None:
                yield request

    # -- pages -----------------------------------------------------------------------------
    def _page_request(self, url: str, depth: int) -> Request | None:
        if url in self.scheduled_pages:
            return None  # already on its way; Scrapy's dupefilter would drop it anyway
        if depth > self.site.max_depth or len(self.scheduled_pages) >= self.site.max_pages:
            self.page_counts["skipped_by_limits"] += 1
            return None
        if not is_web_url(url):
            # LinkExtractor keeps file: and ftp: links; only the web is ever fetched.
            self.page_counts["refused/unsupported_scheme"] += 1
            return None
        if not host_in_domains(urlsplit(url).hostname, self.allowed_domains):
            return None
        if self.allow and not any(p.search(url) for p in self.allow):
            return None
        if any(p.search(url) for p in self.deny):
            return None
        self.scheduled_pages.add(url)
        return Request(url, callback=self.parse_page, errback=self.page_failed, cb_kwargs={"depth": depth})

    def page_failed(self, failure: Failure) -> None:
        reason, _ = classify_failure(failure)
        self.page_counts[f"failed/{reason}"] += 1
        self.logger.info("page not crawled (%s): %s", reason, failure.request.url)  # type: ignore[attr-defined]

    def parse_page(self, response: Response, depth: int) -> Iterator[Any]:
        if not isinstance(response, TextResponse):
            self.page_counts["not_html"] += 1
            return
        try:
            page = extract_page_images(response)
        except ValueError as exc:  # lxml refuses some hostile markup; the page is counted, the crawl goes on
            self.page_counts["failed/unparseable"] += 1
            self.logger.warning("page not parsed (%s): %s", str(exc)[:200], response.url)
            return
        self.page_counts["parsed"] += 1
        page_noai = page.noai or _header_noai(response)
        for candidate in page.candidates:
            yield from self._image(candidate, response.url, page.title, page_noai)
        if page.over_cap:
            self.page_counts["images_over_page_cap"] += page.over_cap
            self.logger.warning("%d image candidates past the page cap not taken: %s", page.over_cap, response.url)
        for link in self.links.extract_links(response):
            request = self._page_request(link.url, depth + 1)
            if request is not None:
                yield request

    # -- images ----------------------------------------------------------------------------
    def _mention(self, url: str, candidate: ImageCandidate, page_url: str, title: str | None,
                 found_in: str | None = None) -> Mention:
        return Mention(url=url, page_url=page_url, page_title=title, alt_text=candidate.alt_text,
                       context_text=candidate.context_text, found_in=found_in or candidate.found_in)

    def _image(self, candidate: ImageCandidate, page_url: str, title: str | None, page_noai: bool,
               ) -> Iterator[Any]:
        if candidate.url.startswith("data:"):
            return  # an inline placeholder, not an image anyone published
        for smaller in candidate.smaller_variants:
            mention = self._mention(smaller, candidate, page_url, title)
            if smaller in self.seen_images:
                yield ImageMention(mention)
            else:
                self.seen_images.add(smaller)
                yield UnfetchedImage(mention, "not_fetched", "srcset_smaller_variant")
        url = candidate.url
        mention = self._mention(url, candidate, page_url, title)
        if url in self.seen_images or url in self.known_image_urls:
            self.seen_images.add(url)
            yield ImageMention(mention)
            return
        self.seen_images.add(url)
        refusal = self._refusal(url, page_noai)
        if refusal:
            yield UnfetchedImage(mention, outcome_for_reason(refusal), refusal)
            return
        self.images_requested += 1
        yield Request(url, callback=self.image_fetched, errback=self.image_failed, dont_filter=True,
                      priority=IMAGE_PRIORITY, headers={"Accept": IMAGE_ACCEPT, "Referer": page_url},
                      meta={"tuwen_mention": mention})

    def _refusal(self, url: str, page_noai: bool) -> str | None:
        parts = urlsplit(url)
        if not is_web_url(url):
            return "unsupported_scheme"
        if not host_in_domains(parts.hostname, self.allowed_domains):
            return "off_domain"
        if any(p.search(url) for p in self.deny):
            return "denied_by_pattern"
        if page_noai:
            return "page_noai"
        if self.site.max_images and self.images_requested >= self.site.max_images:
            return "max_images_reached"
        return None

    def image_fetched(self, response: Response) -> Iterator[FetchedImage]:
        content_type = response.headers.get("Content-Type")
        yield FetchedImage(
            mention=response.meta["tuwen_mention"],
            body=response.body,
            http_status=response.status,
            content_type=content_type.decode("latin-1") if content_type else None,
            x_robots_tag=[v.decode("latin-1") for v in response.headers.getlist("X-Robots-Tag")],
            final_url=response.url,
        )

    def image_failed(self, failure: Failure) -> Iterator[UnfetchedImage]:
        request = failure.request  # type: ignore[attr-defined]
        reason, status = classify_failure(failure)
        yield UnfetchedImage(request.meta["tuwen_mention"], outcome_for_reason(reason), reason, status)


def prepare_jobdir(jobdir: Path) -> bool:
    """Mark the JOBDIR as in use; if the last crawl never closed it, drop Scrapy's state and say so.

    The resumed run then re-reads every page (cheap) and skips every image URL an earlier run of the
    same job already judged (the pipeline loads those verdicts from image_source).
    """
    jobdir.mkdir(parents=True, exist_ok=True)
    marker = jobdir / RUNNING_MARKER
    dropped = False
    if marker.exists():
        for name in SCRAPY_JOB_STATE:
            target = jobdir / name
            if target.is_dir():
                shutil.rmtree(target)
                dropped = True
            elif target.exists():
                target.unlink()
                dropped = True
        logging.getLogger(__name__).warning(
            "JOBDIR %s was not closed cleanly (crash or kill): resuming from the lineage database", jobdir)
    marker.write_text(str(os.getpid()))
    return dropped


def _header_noai(response: Response) -> bool:
    values = b" ".join(response.headers.getlist("X-Robots-Tag")).lower()
    return b"noai" in values or b"noimageai" in values
