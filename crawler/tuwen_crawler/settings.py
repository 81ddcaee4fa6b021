"""Scrapy settings, from the TUWEN_* variables declared in `tuwen.config.CrawlSettings`.

Per-site politeness (download delay, concurrency per domain, AutoThrottle target, User-Agent) comes
from the sites YAML and is applied by the spider in `from_crawler`; the values here are the defaults
and the process-wide limits. A malformed variable stops the crawl before it starts, with a ConfigError
that names it.
"""

from __future__ import annotations

from tuwen.config import CrawlSettings

_crawl = CrawlSettings.from_env()

BOT_NAME = "tuwen"
SPIDER_MODULES = ["tuwen_crawler.spiders"]
NEWSPIDER_MODULE = "tuwen_crawler.spiders"

# A clear identity with a contact, as polite crawlers give; site owners can match it in robots.txt.
USER_AGENT = _crawl.crawl_user_agent
ROBOTSTXT_OBEY = True
# robots.txt groups are matched on the product token ("tuwen-crawler"), not the whole UA string.
ROBOTSTXT_USER_AGENT = _crawl.crawl_robots_agent

CONCURRENT_REQUESTS = _crawl.crawl_concurrent_requests
CONCURRENT_REQUESTS_PER_DOMAIN = 2  # overridden per site
DOWNLOAD_DELAY = 1.0  # overridden per site
AUTOTHROTTLE_ENABLED = True
AUTOTHROTTLE_START_DELAY = 1.0
AUTOTHROTTLE_MAX_DELAY = 30.0
AUTOTHROTTLE_TARGET_CONCURRENCY = 1.0  # overridden per site

DOWNLOAD_TIMEOUT = _crawl.crawl_download_timeout_s
# Images above this are refused while downloading (too_large_bytes); pages are small anyway.
DOWNLOAD_MAXSIZE = _crawl.crawl_max_bytes
DOWNLOAD_WARNSIZE = 0
REDIRECT_MAX_TIMES = _crawl.crawl_max_redirects
RETRY_TIMES = 2
# Meta refresh pages are soft redirects to HTML, never to images; not following them keeps the page
# graph what <a href> says.
METAREFRESH_ENABLED = False
COOKIES_ENABLED = False
TELNETCONSOLE_ENABLED = False
# Scrapy 2.19's remote-control HTTP server: nothing should be able to drive a crawler from outside.
REMOTE_CONTROL_ENABLED = False
# A runaway crawl (a huge page, a queue explosion) ends with a clear reason instead of an OOM kill.
MEMUSAGE_LIMIT_MB = _crawl.crawl_memory_limit_mb
# The pipeline runs CPU-heavy image work in its own thread pool; DNS keeps the reactor's pool.
REACTOR_THREADPOOL_MAXSIZE = 10
# Items of one response processed at once. An image response yields one item and a page a few dozen
# mentions, and Scrapy starts this many worker tasks per response whatever it yields, so it stays small;
# image concurrency comes from responses in parallel.
CONCURRENT_ITEMS = 8

DEFAULT_REQUEST_HEADERS = {
    "Accept": "text/html,application/xhtml+xml,image/avif,image/webp,image/*;q=0.9,*/*;q=0.8",
    "Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5",
}

# Only the web is ever fetched: without these handlers a file:, ftp:, s3: or data: URL that slips
# past every other check still cannot be downloaded.
DOWNLOAD_HANDLERS = {"file": None, "ftp": None, "s3": None, "data": None}
# Connections get their addresses from a resolver that refuses private ones (unless the site allows
# them): the address checked is the address connected to. See tuwen_crawler.resolver.
TWISTED_DNS_RESOLVER = "tuwen_crawler.resolver.PublicAddressResolver"

DOWNLOADER_MIDDLEWARES = {
    # After RedirectMiddleware (600) for requests, before it for responses: sees every 3xx first.
    "tuwen_crawler.middlewares.GuardMiddleware": 650,
}
ITEM_PIPELINES = {
    "tuwen_crawler.pipelines.LineagePipeline": 300,
}

LOG_LEVEL = _crawl.crawl_log_level
LOG_FORMAT = "%(asctime)s [%(name)s] %(levelname)s: %(message)s"

# tuwen's own knobs (read by the pipeline and middleware through crawler.settings).
TUWEN_NEAR_DUP_DISTANCE = _crawl.near_dup_distance
# Threads for decode/hash/resize + S3 + DB per image: Pillow releases the GIL while decoding and encoding,
# and the rest is waiting on I/O, so a few more threads than cores keeps both cores busy.
TUWEN_CRAWL_WORKERS = _crawl.crawl_workers
# Processes for the image work itself (decode, checks, hashes, model-ready copy), fed by those threads;
# 0 runs it in the threads. One per core: the work is CPU.
TUWEN_CRAWL_IMAGE_PROCESSES = _crawl.image_processes
TUWEN_MAX_SOURCE_PIXELS = _crawl.max_source_pixels
TUWEN_MAX_ASPECT_RATIO = _crawl.max_aspect_ratio
