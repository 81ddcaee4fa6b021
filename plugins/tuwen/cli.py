"""The `tuwen` command: local services, the lineage schema, the demo, status."""

from __future__ import annotations

import argparse
import logging
import sys

from tuwen.config import ConfigError, Settings


def _services(args: argparse.Namespace, settings: Settings) -> int:
    from tuwen.localstack import LocalStack

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
    from tuwen.demo import run_demo

    run_demo(settings, release=args.release)
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args, Settings.from_env())
    except ConfigError as exc:
        print(f"tuwen: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a clear one-paragraph message instead of a traceback for users
        from tuwen.services import ServiceError

        known = (ServiceError,)
        try:
            from tuwen.airflow_local import AirflowRunError

            known = (*known, AirflowRunError)
        except ImportError:
            pass
        if isinstance(exc, known):
            print(f"tuwen: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
