"""`python -m tuwen.moto_s3 --port N`: moto's S3 server process, the local stand-in for MinIO.

moto's own S3 implementation (the WSGI app its `moto_server` command serves), with two changes that
matter when the crawler writes a few hundred objects a second into it on a 2-core machine:

- It is served by uvicorn (through a2wsgi, both already installed with Airflow) instead of werkzeug's
  development server. Werkzeug answers every request with `Connection: close`, so each S3 call paid a
  new TCP connection and a new server thread; uvicorn keeps connections alive.
- moto 5.2 lists its own package directory (~170 `isdir` calls) on every request to find the service a
  request is for. The listing never changes while the server runs, so it is taken once.

Together: 4.5 -> ~2.2 ms of server CPU per PUT, and less on the client.
"""

from __future__ import annotations

import argparse
import os

import moto.backends
import uvicorn
from a2wsgi import WSGIMiddleware
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

# Requests served at once (a2wsgi's thread pool); above the crawler's and exporter's upload threads.
THREADS = 32


def _cache_module_listing() -> None:
    modules = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: modules  # read through the module by moto's dispatcher


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto_server does: some responses embed it
    _cache_module_listing()
    app = DomainDispatcherApplication(create_backend_app)
    uvicorn.run(WSGIMiddleware(app, workers=THREADS), host=args.host, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
