"""LineagePipeline: judge each image, store the keepers in S3, record everything in Postgres.

Per image URL (the first sighting carries the bytes or the failure):
  1. inspect_and_normalize in an image worker process (tuwen_crawler.image_pool: decode, checks,
     SHA-256, pHash, model-ready copy);
  2. exact duplicate? (SHA-256 already in `image`) -> no upload;
  3. near duplicate of an accepted image, as far as the in-memory index knows? -> no upload;
  4. else upload raw/ and model/ (content-addressed; skipped when the key exists), then insert the
     image under the advisory lock, deciding 2 and 3 there against the database (a near duplicate
     gets an image row marked near_duplicate);
  5. one image_source row per mention (url, page_url), upserted.
Counts per outcome/reason are kept per distinct URL (as the fixture manifest states them) and written
to crawl_run at close with Scrapy's stats. A storage or database failure stops the crawl and marks
the run failed: losing lineage silently is worse than stopping.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.spiders import Spider
from sqlalchemy.exc import SQLAlchemyError

from tuwen.config import Settings
from tuwen.crawl.images import ImageDecision, ImageLimits, turbojpeg
from tuwen.db.session import get_engine
from tuwen.storage import ObjectStore, StorageError, model_key, raw_key
from tuwen_crawler import lineage
from tuwen_crawler.image_pool import ImageProcessPool
from tuwen_crawler.items import FetchedImage, ImageMention, Mention, UnfetchedImage
from tuwen_crawler.lineage import Sighting, Verdict
from tuwen_crawler.outcomes import OUTCOMES

logger = logging.getLogger(__name__)

NOAI_TOKENS = ("noai", "noimageai")


def summarize(verdicts: dict[str, Verdict]) -> dict[str, Any]:
    """Counts per distinct image URL, shaped like the fixture manifest's expected_counts."""
    by_outcome = Counter(v.outcome for v in verdicts.values())
    by_reason = Counter(v.reason for v in verdicts.values() if v.reason)
    by_pair = Counter(f"{v.outcome}/{v.reason}" for v in verdicts.values() if v.reason)
    return {
        "images_total": len(verdicts),
        "by_outcome": {name: by_outcome.get(name, 0) for name in OUTCOMES},
        "by_reason": dict(sorted(by_reason.items())),
        "by_outcome_reason": dict(sorted(by_pair.items())),
        "fetched_urls": sum(1 for v in verdicts.values() if v.outcome != "not_fetched"),
    }


class LineagePipeline:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.settings = Settings.from_env()
        scrapy_settings = crawler.settings
        self.limits = ImageLimits.from_settings(
            self.settings,
            max_source_pixels=scrapy_settings.getint("TUWEN_MAX_SOURCE_PIXELS"),
            max_aspect=scrapy_settings.getfloat("TUWEN_MAX_ASPECT_RATIO"),
        )
        self.near_distance = scrapy_settings.getint("TUWEN_NEAR_DUP_DISTANCE")
        self.workers = ThreadPoolExecutor(max_workers=scrapy_settings.getint("TUWEN_CRAWL_WORKERS"),
                                          thread_name_prefix="tuwen-image")
        self.accepted_hashes = lineage.AcceptedHashes()  # loaded on the first look, then topped up
        self.image_processes = ImageProcessPool(scrapy_settings.getint("TUWEN_CRAWL_IMAGE_PROCESSES"))
        self.engine = get_engine(self.settings.database_url, pre_ping=False)  # see _db
        self.store = ObjectStore(self.settings)
        self.crawl_run_id: int | None = None
        self.verdicts: dict[str, Verdict] = {}  # this run's verdict per image URL
        self.known: dict[str, Verdict] = {}  # verdicts from earlier runs of a resumed job
        self.pending: dict[str, list[Mention]] = defaultdict(list)  # mentions waiting for their verdict
        self.resumed_known = 0  # URLs whose verdict came from an earlier run of the job
        self.error: str | None = None
        self._closing: asyncio.Future[None] | None = None  # the close started by an infrastructure failure

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        # Scrapy leaves its loggers at NOTSET and filters in its handler, so every response and item
        # built a DEBUG record ("Crawled", "Scraped from") only for the handler to drop it.
        logging.getLogger("scrapy").setLevel(crawler.settings.get("LOG_LEVEL"))
        pipeline = cls(crawler)
        crawler.signals.connect(pipeline.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(pipeline.spider_error, signal=signals.spider_error)
        return pipeline

    @property
    def spider(self) -> Spider:
        assert self.crawler.spider is not None
        return self.crawler.spider

    # -- lifecycle -------------------------------------------------------------------------
    def open_spider(self) -> None:
        spider: Any = self.spider
        # The workers need libjpeg-turbo's library: a machine without it fails here, with the package to
        # install, rather than in every worker.
        turbojpeg()
        self.image_processes.start()
        self.store.ensure_bucket()
        earlier_runs = self._db(lineage.job_crawl_runs, spider.site.name, spider.job_key) if spider.job_key else []
        # A run of this job still 'running' died without closing (this process owns the JOBDIR now).
        self._db(lineage.fail_running_runs, earlier_runs, "the crawl process died; its job was resumed")
        self.known = self._db(lineage.verdicts_from_runs, earlier_runs)
        spider.known_image_urls = set(self.known)
        # Not retried (it inserts a new run); the pool's connections are all new at this point anyway.
        self.crawl_run_id = lineage.create_crawl_run(
            self.engine, spider=spider.name, site=spider.site.name,
            seeds=list(spider.site.start_urls) + list(spider.site.sitemaps),
            settings={"site": spider.site.as_dict(), "job_key": spider.job_key, "crawl_key": spider.crawl_key,
                      "jobdir": self.crawler.settings.get("JOBDIR"), "resumed_from_runs": earlier_runs,
                      "resumed_after_crash": spider.resumed_after_crash,
                      "near_dup_distance": self.near_distance, "limits": self.limits.__dict__,
                      "user_agent": self.crawler.settings.get("USER_AGENT")},
            partition_date=spider.partition_date, dag_id=spider.dag_id, run_id=spider.airflow_run_id,
        )
        logger.info("crawl_run %s opened for site %s (partition %s)", self.crawl_run_id, spider.site.name,
                    spider.partition_date)

    def close_spider(self) -> None:
        # Mentions whose URL never got a verdict in this process: a resumed job's earlier run has it.
        leftovers = {url: mentions for url, mentions in self.pending.items() if mentions}
        rows = []
        for url, mentions in leftovers.items():
            verdict = self.verdicts.get(url) or self.known.get(url) or Verdict("not_fetched", "crawl_interrupted")
            rows += [self._source_row(m, verdict) for m in mentions]
            self.verdicts.setdefault(url, verdict)
        self.pending.clear()
        try:
            self._db(lineage.upsert_sources, rows)
        except SQLAlchemyError as exc:
            self.error = self.error or f"recording leftover mentions failed: {exc}"
        self.workers.shutdown(wait=True)
        self.image_processes.shutdown()

    def spider_error(self, failure: Any, response: Any, spider: Spider) -> None:
        self.crawler.stats.inc_value("tuwen/spider_errors")
        self.error = self.error or f"spider error on {getattr(response, 'url', '?')}: {failure.getErrorMessage()}"

    def spider_closed(self, spider: Spider, reason: str) -> None:
        if self.crawl_run_id is None:
            return
        counts = summarize(self.verdicts)
        counts["resumed_known"] = self.resumed_known
        counts["pages"] = dict(getattr(spider, "page_counts", {}))
        failed = self.error is not None or reason not in ("finished",)
        error = self.error or (None if reason == "finished" else f"spider closed: {reason}")
        stats = dict(self.crawler.stats.get_stats())
        stats["finish_reason"] = reason
        self._db(lineage.close_crawl_run, self.crawl_run_id, status="failed" if failed else "succeeded",
                                stats=stats, counts=counts, error=error)
        logger.info("crawl_run %s closed (%s): %s", self.crawl_run_id, reason, counts["by_outcome"])

    # -- items -----------------------------------------------------------------------------
    async def process_item(self, item: Any) -> Any:
        try:
            if isinstance(item, FetchedImage):
                verdict = await self._in_thread(self._judge_fetched, item)
                item.body = b""  # the bytes live in S3 now; keep them out of logs and memory
                await self._settle(item.mention, verdict, first_recorded=True)
            elif isinstance(item, UnfetchedImage):
                await self._settle(item.mention, Verdict(item.outcome, item.reason, None, item.http_status,
                                                         item.content_type))
            elif isinstance(item, ImageMention):
                await self._mention(item.mention)
        except (StorageError, SQLAlchemyError) as exc:
            # Infrastructure is down: stop rather than drop lineage on the floor.
            self.error = self.error or f"{type(exc).__name__}: {exc}"
            logger.error("stopping the crawl: %s\n%s", exc, traceback.format_exc())
            self.crawler.stats.inc_value("tuwen/pipeline_errors")
            if self._closing is None:
                # Not awaited: closing waits for the items in progress, this one included, so awaiting
                # it here would deadlock the crawl in "Closing spider" until the task's timeout.
                self._closing = asyncio.ensure_future(
                    self.crawler.engine.close_spider_async(reason="pipeline_error"))
        return item

    def _db(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A lineage read or write on the crawler's engine, run once more if it met a connection that
        died (the engine has no pre-ping: a round trip per checkout, several per image)."""
        return lineage.retry_on_disconnect(write, self.engine, *args, **kwargs)

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.wrap_future(self.workers.submit(fn, *args))

    def _source_row(self, mention: Mention, verdict: Verdict) -> dict[str, Any]:
        assert self.crawl_run_id is not None
        spider: Any = self.spider
        return lineage.source_params(mention, verdict, site=spider.site.name, crawl_run_id=self.crawl_run_id)

    # The verdict/pending bookkeeping runs on the reactor thread between awaits, so a mention can
    # never slip between "no verdict yet" and "verdict set"; only the database I/O goes to threads.
    async def _settle(self, mention: Mention, verdict: Verdict, *, first_recorded: bool = False) -> None:
        """Record the URL's verdict and every mention that waited for it (and the first, unless done)."""
        self.verdicts[mention.url] = verdict
        waiting = self.pending.pop(mention.url, [])
        mentions = waiting if first_recorded else [mention, *waiting]
        if mentions:
            await self._in_thread(self._db, lineage.upsert_sources, [self._source_row(m, verdict) for m in mentions])

    async def _mention(self, mention: Mention) -> None:
        verdict = self.verdicts.get(mention.url)
        if verdict is None and mention.url in self.known:
            # A resumed job: the URL was judged by an earlier run and is not fetched again.
            verdict = self.verdicts[mention.url] = self.known[mention.url]
            self.resumed_known += 1
        if verdict is None:
            self.pending[mention.url].append(mention)
            return
        await self._in_thread(self._db, lineage.upsert_sources, [self._source_row(mention, verdict)])

    def _judge_fetched(self, item: FetchedImage) -> Verdict:
        """Decide the URL's verdict and record it with its first mention (one transaction)."""
        spider: Any = self.spider
        assert self.crawl_run_id is not None
        sighting = Sighting(item.mention, spider.site.name, self.crawl_run_id, item.http_status, item.content_type)
        tags = " ".join(item.x_robots_tag).lower()
        if any(token in tags for token in NOAI_TOKENS):
            return self._db(lineage.record_unstored_rejection, "noai", sighting)
        decision = self.image_processes.inspect(item.body, item.content_type, self.limits)
        if not decision.accepted:
            return self._db(lineage.record_rejected_image, decision, sighting, crawl_date=spider.partition_date)
        assert decision.model is not None and decision.phash is not None
        okey = raw_key(decision.sha256, decision.original_ext)
        mkey = model_key(decision.sha256, decision.model.ext)
        known = self._db(lineage.verdict_for_known_bytes, decision.sha256, sighting)
        if known is not None:
            if known.outcome == "accepted":
                # Seen again with the same bytes: make sure its objects are still in the store (one HEAD),
                # so a recrawl repairs a bucket that lost objects instead of leaving rows without them.
                self._upload(item.body, decision, okey, mkey)
            return known
        uploaded = False
        hint = self.accepted_hashes.search(decision.phash, self.near_distance)
        if not hint.candidates:
            # Upload before the insert so a row with keys always has its objects. Bytes the database
            # has never seen are put without asking the store first (at most a crashed run's
            # leftover gets the same bytes again).
            self._upload(item.body, decision, okey, mkey, check_store=False)
            uploaded = True
        verdict, inserted, referenced = self._db(
            lineage.record_accepted_image, decision, sighting, original_key=okey, model_key=mkey, crawl_date=spider.partition_date,
            near_distance=self.near_distance, index=self.accepted_hashes, earlier=hint,
        )
        if inserted and not uploaded:
            # The near duplicate seen before taking the lock was gone once we held it (taken down meanwhile).
            self._upload(item.body, decision, okey, mkey, check_store=False)
        if not referenced:
            # No accepted row holds this sha's keys (a near duplicate, or bytes taken down), so whatever
            # is stored there goes: our own upload that lost a race to a near-identical image, or one a
            # crawl killed between its upload and its commit left behind. The bucket holds exactly the
            # accepted images. (An exact duplicate of an accepted image shares its keys: they stay.)
            for key in (okey, mkey):
                self.store.remove(key)
            if uploaded:
                self.crawler.stats.inc_value("tuwen/orphan_uploads_removed")
        return verdict

    def _upload(self, original: bytes, decision: ImageDecision, okey: str, mkey: str, *,
                check_store: bool = True) -> None:
        """Put the original, then the model copy; with `check_store`, skipped when the model copy
        (written last, so it only exists once both are stored) is already there: one HEAD instead of
        two PUTs for bytes seen before."""
        assert decision.model is not None
        stats = self.crawler.stats
        if check_store and self.store.exists(mkey):
            stats.inc_value("tuwen/s3/skipped_existing")
            return
        self.store.put_bytes(okey, original, content_type=decision.original_mime)
        self.store.put_bytes(mkey, decision.model.data, content_type=decision.model.mime)
        stats.inc_value("tuwen/s3/uploaded", 2)
