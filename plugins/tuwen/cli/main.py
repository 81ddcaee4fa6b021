"""The `tuwen` command: local services, the lineage schema, the demo, a crawl or OCR by hand, releases and takedowns."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import logging
import sys
from pathlib import Path

from tuwen.config import ConfigError, Settings

# Commands that run the local development stack (`tuwen.local`), which the production image leaves out.
LOCAL_COMMANDS = ("services", "up", "down", "demo")


def local_package_present() -> bool:
    return importlib.util.find_spec("tuwen.local") is not None


def _local_errors() -> tuple[type[Exception], ...]:
    """The local stack's own errors, whose message says what to do (none without the local package)."""
    if not local_package_present():
        return ()
    from tuwen.local.airflow_stack import AirflowRunError
    from tuwen.local.services import ServiceError

    return (ServiceError, AirflowRunError)


def _services(args: argparse.Namespace, settings: Settings) -> int:
    from tuwen.local.stack import LocalStack

    stack = LocalStack(settings)
    if args.action == "up":
        for line in stack.up():
            print(line)
    elif args.action == "down":
        for line in stack.down():
            print(line)
    else:
        for service in stack.services():
            print(f"{service.name}: {'up' if service.is_up() else 'down'} ({service.health_url})")
    return 0


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from tuwen.db.migrate import downgrade, upgrade

    if args.action == "upgrade":
        upgrade(settings.database_url, args.revision or "head")
    else:
        downgrade(settings.database_url, args.revision or "base")
    print(f"lineage schema: {args.action} done")
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from tuwen.local.demo import run_demo

    run_demo(settings, release=args.release)
    return 0


def _up(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses
    from pathlib import Path

    from tuwen.local.airflow_stack import StackOptions, stack_up
    from tuwen.local.services import RUN_DIR
    from tuwen.local.stack import airflow_metadata_url

    options = StackOptions.from_env()
    overrides = {k: v for k, v in (("executor", args.executor), ("workers", args.workers), ("port", args.port))
                 if v is not None}
    options = dataclasses.replace(options, **overrides)
    for line in stack_up(settings, Path(args.run_dir or RUN_DIR), airflow_metadata_url(), options):
        print(line, flush=True)
    return 0


def _down(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from tuwen.local.airflow_stack import stack_down
    from tuwen.local.services import RUN_DIR
    from tuwen.local.stack import airflow_metadata_url

    for line in stack_down(settings, Path(args.run_dir or RUN_DIR), airflow_metadata_url()):
        print(line)
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from tuwen.cli.status import print_status
    from tuwen.resources import Resources

    report = print_status(Resources.from_settings(settings), hours=args.hours, store_sample=args.store_sample)
    # Non-zero when the store lost objects, so a scheduled `tuwen status` is noticed.
    return 1 if report.store.missing_images else 0


def _takedown(args: argparse.Namespace, settings: Settings) -> int:
    from tuwen.db.session import get_engine
    from tuwen.release.takedowns import TakedownError, add_takedown, releases_with_takedowns

    engine = get_engine(settings.database_url)
    if args.action == "add":
        # `is not None`: an empty value given on purpose (--domain "") is refused with a message below.
        kind, value = next((k, v) for k, v in (("url", args.url), ("domain", args.domain),
                                               ("image_sha256", args.image_sha256)) if v is not None)
        try:
            result = add_takedown(engine, kind, value, args.reason)
        except TakedownError as exc:
            print(f"tuwen: {exc}", file=sys.stderr)
            return 2
        print(f"takedown {result.takedown_id} ({result.kind} {result.value}): {result.images} images, "
              f"{result.samples} samples taken down; excluded from every later release")
        if result.releases:
            print(f"already shipped in: {', '.join(result.releases)} (see `tuwen takedown releases`)")
        return 0
    hits = releases_with_takedowns(engine)
    for hit in hits:
        print(f"{hit.release}\tpublished {hit.published_at:%Y-%m-%d %H:%M}\ttakedown {hit.takedown_id} "
              f"{hit.kind} {hit.value}\t{hit.samples} samples")
    if not hits:
        print("no published release contains taken-down items")
    return 0


def _releases(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import text

    from tuwen.db.session import get_engine
    from tuwen.release.takedowns import TakedownError, normalize, urls_matching

    engine = get_engine(settings.database_url)
    where, binds = "", {}
    if args.sample:
        where, binds = "WHERE ei.sample_id = :v", {"v": args.sample}
    elif args.image_sha256:
        where, binds = "WHERE i.sha256 = :v", {"v": args.image_sha256.lower()}
    elif args.url:
        try:
            url = normalize("url", args.url)
        except TakedownError as exc:
            print(f"tuwen: {exc}", file=sys.stderr)
            return 2
        # Any spelling of the URL (case, IDN, fragment, escapes): the stored URLs are compared in normal form.
        where = "WHERE ei.image_id = ANY(:v)"
        with engine.connect() as conn:
            binds = {"v": urls_matching(conn, url)}
    with engine.connect() as conn:
        if where:
            rows = conn.execute(text(f"""
                SELECT e.name, e.version, e.status, e.published_at, ei.sample_id, ei.file, ei.position
                FROM export_item ei JOIN export e ON e.id = ei.export_id JOIN image i ON i.id = ei.image_id
                {where} ORDER BY e.name, e.version, ei.position"""), binds).all()
            for row in rows:
                print(f"{row.name}\t{row.status}\t{row.sample_id}\t{row.file}\t#{row.position}"
                      + (f"\tversion {row.version}" if row.version > 1 or row.status == "superseded" else ""))
        else:
            rows = conn.execute(text("SELECT name, version, status, n_samples, published_at, local_path FROM export "
                                     "ORDER BY created_at DESC, name, version DESC")).all()
            for row in rows:
                print(f"{row.name}\t{row.status}\t{row.n_samples} samples\t{row.published_at or '-'}\t"
                      f"{row.local_path or '-'}" + (f"\tversion {row.version}" if row.version > 1 else ""))
    if not rows:
        print("no matching release")
    return 0


def _crawl(args: argparse.Namespace, settings: Settings) -> int:
    from tuwen.crawl.run import CrawlError, run_crawl
    from tuwen.resources import Resources

    try:
        summary = run_crawl(Resources.from_settings(settings), args.site, args.partition_date, args.dag_id,
                            args.run_id, args.timeout_s, jobdir=args.jobdir)
    except CrawlError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(json.dumps(summary.as_dict(), ensure_ascii=False, indent=1, default=str))
    return 0


def _ocr(args: argparse.Namespace, settings: Settings) -> int:
    from tuwen.crawl.ocr import ocr_pending
    from tuwen.resources import Resources

    print(ocr_pending(Resources.from_settings(settings), args.partition_date, args.limit, threads=args.threads))
    return 0


def _curate(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from tuwen.curate.queries import counts
    from tuwen.curate.run import apply_zh_policy, curate_pending
    from tuwen.resources import Resources

    resources = Resources.from_settings(settings)
    result: dict = {"filters": curate_pending(resources, args.partition_date, args.limit).as_dict()}
    if args.partition_date:
        result["policy"] = apply_zh_policy(resources, args.partition_date)
    result["counts"] = counts(resources.engine, args.partition_date)
    print(json.dumps(result, ensure_ascii=False, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuwen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("services", help="start/stop/show the local services (PostgreSQL, S3 server, "
                                        "stand-in VLM, fixture site)")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=_services)
    p = sub.add_parser("db", help="migrate the lineage schema")
    p.add_argument("action", choices=["upgrade", "downgrade"])
    p.add_argument("revision", nargs="?")
    p.set_defaults(func=_db)
    p = sub.add_parser("demo", help="run crawl -> synthesize -> check -> export through Airflow on local services")
    p.add_argument("--release", default="tuwen-demo")
    p.set_defaults(func=_demo)
    p = sub.add_parser("takedown", help="remove a URL, domain or image from later releases; list affected releases")
    takedown = p.add_subparsers(dest="action", required=True)
    add = takedown.add_parser("add", help="record a takedown and apply it now")
    what = add.add_mutually_exclusive_group(required=True)
    what.add_argument("--url", help="an image URL or a page URL")
    what.add_argument("--domain", help="a host; its subdomains are included")
    what.add_argument("--image-sha256", help="SHA-256 of the image's original bytes")
    add.add_argument("--reason", help="why (kept with the takedown)")
    takedown.add_parser("releases", help="published releases that contain taken-down items")
    p.set_defaults(func=_takedown)
    p = sub.add_parser("releases", help="list releases, or those containing a sample, image or URL")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--sample")
    which.add_argument("--image-sha256")
    which.add_argument("--url")
    p.set_defaults(func=_releases)
    p = sub.add_parser("up", help="start the local services and a running Airflow (api-server, scheduler, "
                                  "dag-processor, triggerer; LocalExecutor or Celery workers)")
    p.add_argument("--executor", choices=["local", "celery"], help="default: TUWEN_AIRFLOW_EXECUTOR or local")
    p.add_argument("--workers", type=int, help="Celery workers (default: TUWEN_AIRFLOW_WORKERS or 2)")
    p.add_argument("--port", type=int, help="UI / REST API port (default: TUWEN_AIRFLOW_PORT or 8080)")
    p.add_argument("--run-dir", help="pid files, logs and AIRFLOW_HOME (default: .run)")
    p.set_defaults(func=_up)
    p = sub.add_parser("down", help="stop exactly what `tuwen up` started")
    p.add_argument("--run-dir", help="the run dir given to `tuwen up` (default: .run)")
    p.set_defaults(func=_down)
    p = sub.add_parser("crawl", help="crawl one site of the sites file now (what the tuwen_crawl DAG's task does)")
    p.add_argument("--site", required=True)
    p.add_argument("--partition-date", required=True, type=dt.date.fromisoformat)
    p.add_argument("--dag-id")
    p.add_argument("--run-id")
    p.add_argument("--jobdir", type=Path, help="resumable crawl state directory")
    p.add_argument("--timeout-s", type=float, default=3 * 3600)
    p.set_defaults(func=_crawl)
    p = sub.add_parser("ocr", help="OCR accepted images that have no OCR text yet")
    p.add_argument("--partition-date", type=dt.date.fromisoformat)
    p.add_argument("--limit", type=int)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=_ocr)
    p = sub.add_parser("curate", help="curate accepted images (filters, then the Chinese-text policy of the day)")
    p.add_argument("--partition-date", type=dt.date.fromisoformat)
    p.add_argument("--limit", type=int)
    p.set_defaults(func=_curate)
    p = sub.add_parser("status", help="today's counts, queue depth, error rates, last release, lost objects")
    p.add_argument("--hours", type=int, default=24, help="window for rates and counts (default 24)")
    p.add_argument("--store-sample", type=int, default=200,
                   help="accepted images whose objects are looked for in the bucket (default 200; 0: skip); "
                        "exit status 1 when some are missing")
    p.set_defaults(func=_status)
    args = parser.parse_args(argv)
    if args.command in LOCAL_COMMANDS and not local_package_present():
        print(f"tuwen: `tuwen {args.command}` runs the local development stack (package tuwen.local), which this "
              "installation does not include (the production image leaves it out); use a repository checkout",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations report through our own lines
    try:
        return args.func(args, Settings.from_env())
    except ConfigError as exc:
        print(f"tuwen: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a clear one-paragraph message instead of a traceback for users
        if isinstance(exc, _local_errors()):
            print(f"tuwen: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
