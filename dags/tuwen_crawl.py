"""
### tuwen_crawl — fetch the day's images from the configured sites

Runs daily. For every site in the sites file (`TUWEN_SITES_FILE`, YAML) one mapped task runs
`scrapy crawl site` as a subprocess (Twisted's reactor cannot restart inside a worker). The spider
stores each image content-addressed by SHA-256 in the object store and records `image` and
`image_source` rows, plus a `crawl_run` row with its stats, in the lineage database. Images are
labelled with this run's data-interval date: that date is the partition `tuwen_synthesize` works on.
Then the day's images are curated (tuwen.curate): `plan_curation` sizes `curate`, N mapped tasks in the
pool `curate` that share the partition through `FOR UPDATE SKIP LOCKED` claims, OCR each image that has
no text yet (switch: `TUWEN_OCR_ENABLED`) and record each one's verdict (curated / held / rejected, with
reasons and scores); `select_images` applies the Chinese-text share (`TUWEN_CURATE_ZH_SHARE`). Synthesis
takes only curated images (`TUWEN_CURATE_ENABLED=false`: the tasks only OCR, every image counts).

**Params** (manual runs): `sites` — names of sites to crawl (empty: all in the sites file);
`date_from`/`date_to` — label the images with this date instead of the run's interval.

Emits the asset `tuwen://images/crawled` with the partition date in the event's extra.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, get_current_context, task

CRAWLED_IMAGES = Asset("tuwen://images/crawled")


@dag(
    dag_id="tuwen_crawl",
    schedule=CronDataIntervalTimetable("0 1 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=2)},
    params={
        "sites": Param([], type="array", description="site names from the sites file; empty = all"),
        "date_from": Param(None, type=["null", "string"], format="date", description="partition date override"),
        "date_to": Param(None, type=["null", "string"], format="date", description="partition date override"),
    },
    tags=["tuwen"],
    doc_md=__doc__,
)
def tuwen_crawl() -> None:
    @task
    def list_sites() -> list[str]:
        from tuwen.config import Settings
        from tuwen.crawl.sites import load_sites
        from tuwen.domain import ParamError
        from tuwen.task_failure import fail_fast_on_bad_input

        wanted = get_current_context()["params"].get("sites") or []
        with fail_fast_on_bad_input():
            names = list(load_sites(Settings.from_env().sites_file))
            unknown = sorted(set(wanted) - set(names))
            if unknown:
                raise ParamError(f"param sites: unknown {unknown}; the sites file has {names}")
        return [n for n in names if not wanted or n in wanted]

    @task(max_active_tis_per_dagrun=4)
    def crawl_site(site: str) -> dict:
        from tuwen.config import Settings
        from tuwen.crawl.run import run_crawl
        from tuwen.domain import resolve_partition
        from tuwen.resources import Resources
        from tuwen.task_failure import fail_fast_on_bad_input

        context = get_current_context()
        with fail_fast_on_bad_input():
            partition = resolve_partition(context)
            settings = Settings.from_env()
        summary = run_crawl(
            Resources.from_settings(settings), site, partition.start,
            dag_id=context["dag"].dag_id, run_id=context["run_id"],
        )
        return summary.as_dict()

    @task
    def plan_curation(summaries: list[dict]) -> list[dict]:
        from tuwen.config import Settings
        from tuwen.curate.run import plan_curation as plan
        from tuwen.domain import resolve_partition
        from tuwen.resources import Resources
        from tuwen.task_failure import fail_fast_on_bad_input

        with fail_fast_on_bad_input():
            partition = resolve_partition(get_current_context())
            settings = Settings.from_env()
        return plan(Resources.from_settings(settings), partition.start)

    # N mapped tasks share the partition through FOR UPDATE SKIP LOCKED claims (no image done twice), in
    # the pool `curate`, so Celery workers spread them; OCR runs inside them where an image has none.
    @task(pool="curate")
    def curate(slot: dict) -> dict:
        from tuwen.config import Settings
        from tuwen.curate.run import curate_pending
        from tuwen.domain import resolve_partition
        from tuwen.resources import Resources
        from tuwen.task_failure import fail_fast_on_bad_input

        context = get_current_context()
        with fail_fast_on_bad_input():
            partition = resolve_partition(context)
            settings = Settings.from_env()
        ti = context["ti"]
        ids = {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "map_index": ti.map_index}
        return curate_pending(Resources.from_settings(settings), partition.start, lineage_ids=ids).as_dict()

    @task(outlets=[CRAWLED_IMAGES])
    def select_images(summaries: list[dict], curated: list[dict]) -> dict:
        """The Chinese-text share over the day's curated images (tuwen.curate.policy), then the asset."""
        from tuwen.config import Settings
        from tuwen.curate.queries import counts
        from tuwen.curate.run import apply_zh_policy
        from tuwen.domain import resolve_partition
        from tuwen.resources import Resources
        from tuwen.task_failure import fail_fast_on_bad_input

        context = get_current_context()
        with fail_fast_on_bad_input():
            partition = resolve_partition(context)
            settings = Settings.from_env()
        resources = Resources.from_settings(settings)
        policy = apply_zh_policy(resources, partition.start)
        context["outlet_events"][CRAWLED_IMAGES].extra = {"partition": partition.start.isoformat()}
        return {"partition": partition.label, "crawls": list(summaries),
                "ocr_images": sum(c.get("ocr_images", 0) for c in curated),
                "curated_images": sum(c.get("images", 0) for c in curated), "policy": policy,
                "curation": counts(resources.engine, partition.start)}

    summaries = crawl_site.expand(site=list_sites())
    select_images(summaries, curate.expand(slot=plan_curation(summaries)))


tuwen_crawl()
