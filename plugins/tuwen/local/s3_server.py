"""`python -m tuwen.local.s3_server --port N --data-dir DIR`: the local stand-in for MinIO.

moto's own S3 implementation (the WSGI app its `moto_server` command serves), keeping its objects in
DIR across restarts as MinIO does (`tuwen.local.s3_disk`), with changes that matter when the crawler
writes a few hundred objects a second into it on a 2-core machine (measurements: docs/BENCHMARKS.md):

- It is served by uvicorn instead of werkzeug's development server. Werkzeug answers every request with
  `Connection: close`, so each S3 call would pay a new TCP connection and a new server thread; uvicorn
  keeps connections alive.
- moto's app is called on uvicorn's event loop, once the whole request body has arrived. moto never
  waits on anything, so a thread per request would buy no concurrency (the GIL runs one at a time) and
  cost hops between the loop and the thread for every chunk of a body. Bodies are at most a multipart
  part (the minio client sends 5 MiB parts), so buffering is cheap. Writing what a request changed to
  disk is the exception: creating a file can wait on the filesystem's journal, so it runs in one
  writer thread while the loop serves other requests, and the answer is sent once it is written.
- moto 5.2 lists its own package directory (~170 `isdir` calls) on every request to find the service a
  request is for. The listing never changes while the server runs, so it is taken once.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import moto.backends
import uvicorn
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

from tuwen.local.s3_disk import DiskMirror

logger = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _cache_module_listing() -> None:
    modules = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: modules  # read through the module by moto's dispatcher


def wsgi_environ(scope: dict[str, Any], body: bytes) -> dict[str, Any]:
    """The WSGI environ (PEP 3333) of an ASGI HTTP request whose body has been read."""
    server_host, server_port = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": server_host,
        "SERVER_PORT": str(server_port or 0),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if scope.get("client"):
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = scope["client"][0], str(scope["client"][1])
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        key = {"content-length": "CONTENT_LENGTH", "content-type": "CONTENT_TYPE"}.get(
            name, "HTTP_" + name.upper().replace("-", "_"))
        # Repeated headers are one comma-separated value in WSGI.
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def inline_wsgi(app: WSGIApp, take_changes: Callable[[], Callable[[], None] | None] | None = None
                ) -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    """An ASGI app that reads the whole body, then calls the WSGI `app` on the event loop itself.

    With `take_changes`: once the app has answered, the function it returns (what the request changed,
    to be written to disk) runs in one writer thread, in request order, before the answer is sent; a
    failure there answers 500."""
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-disk") if take_changes else None

    async def asgi(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started[:] = [status, headers]

        try:
            result = app(wsgi_environ(scope, b"".join(chunks)), start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            status, headers = started
            write = take_changes() if take_changes is not None else None
            if write is not None:
                await asyncio.get_running_loop().run_in_executor(writer, write)
        except Exception:  # the app's bug or a failed disk write: a 500, as any WSGI server answers, logged
            logger.exception("moto failed on %s %s", scope["method"], scope["path"])
            status, headers, body = "500 Internal Server Error", [("Content-Type", "text/plain")], b"moto failed\n"
        await send({"type": "http.response.start", "status": int(status.split(" ", 1)[0]),
                    "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]})
        await send({"type": "http.response.body", "body": body})

    return asgi


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, help="keep buckets and objects here across restarts "
                                                       "(default: in memory only)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto_server does: some responses embed it
    _cache_module_listing()
    app = DomainDispatcherApplication(create_backend_app)
    take_changes = None
    if args.data_dir is not None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        mirror = DiskMirror(args.data_dir)
        started = time.perf_counter()
        loaded = mirror.load()
        logger.info("loaded %d objects from %s in %.1fs", loaded, args.data_dir, time.perf_counter() - started)
        mirror.install()
        take_changes = mirror.take_changes
    uvicorn.run(inline_wsgi(app, take_changes), host=args.host, port=args.port, log_level="warning",
                access_log=False, lifespan="on")


if __name__ == "__main__":
    main()
