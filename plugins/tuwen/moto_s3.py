"""`python -m tuwen.moto_s3 --port N`: moto's S3 server process, the local stand-in for MinIO.

The same server as moto's own `moto_server` command, with two changes that matter when the crawler
writes a few hundred objects a second into it on a 2-core machine:

- moto 5.2 lists its own package directory (~170 `isdir` calls) on every request to find the
  service a request is for; the listing never changes while the server runs, so it is taken once.
  That was 40 % of the server's CPU per PUT (4.5 -> 2.7 ms).
- werkzeug's line per request on stderr is off (warnings and errors still show).
"""

from __future__ import annotations

import argparse
import logging

import moto.backends
from moto.server import main as moto_main


def _cache_module_listing() -> None:
    modules = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: modules  # read through the module by moto's dispatcher


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    _cache_module_listing()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    moto_main(["-H", args.host, "-p", str(args.port)])


if __name__ == "__main__":
    main()
