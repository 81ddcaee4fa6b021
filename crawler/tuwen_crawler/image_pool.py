"""ImageProcessPool: the crawler's image work (decode, checks, hashes, model-ready copy) in worker processes.

Decoding, hashing and resizing release the GIL only in parts; with the reactor, the S3 client and the
database driver all in one interpreter the crawl process topped out at one core. Worker processes take
the image work off the GIL, and a decoder that blows up on hostile bytes takes down a worker, not the
crawl.

Each worker has a connection of its own: a pipeline thread takes an idle worker, sends it the bytes and
reads the decision back on that connection. concurrent.futures' ProcessPoolExecutor, used before, moves
every job through a shared queue with a feeder thread and every result through a manager thread; for a
190 KB photo and its 200 KB model copy that cost 0.8-1.0 ms of CPU per image, against 0.4 ms here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import queue
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from tuwen.crawl.images import ImageDecision, ImageLimits, inspect_and_normalize, warm_up

logger = logging.getLogger(__name__)

Work = Callable[[bytes, str | None, ImageLimits], ImageDecision]


def _serve(conn: Connection, work: Work) -> None:
    """A worker's life: import and warm the image code, then answer jobs until told to stop."""
    warm_up()
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the crawl process is gone
            return
        if job is None:
            return
        try:
            conn.send((True, work(*job)))
        except Exception as exc:  # a bug in the image code: the caller raises it, as a thread would
            conn.send((False, exc))


class _Worker:
    def __init__(self, context: Any, work: Work) -> None:
        self.conn, child = context.Pipe(duplex=True)
        # spawn, not fork: forking a process that runs threads (reactor, pools) can deadlock.
        self.process = context.Process(target=_serve, args=(child, work), daemon=True, name="tuwen-image")
        self.process.start()
        child.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # a dead worker has nobody listening
            self.conn.send(None)
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class WorkerDied(RuntimeError):
    """The worker handling an image exited (killed for memory, a decoder crash)."""


class ImageProcessPool:
    """inspect_and_normalize in `processes` worker processes, called from the pipeline's threads;
    `processes=0` keeps the work in the calling thread."""

    def __init__(self, processes: int, work: Work = inspect_and_normalize) -> None:
        self.processes = processes
        self.work = work  # a module-level function (spawned workers import it); tests swap in their own
        self._context = multiprocessing.get_context("spawn")
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Spawn the workers now; each imports and runs the image code once, in the background. A spawned
        worker takes about a second to be ready, which the first images would otherwise wait for while
        the crawl is still fetching robots.txt and its first pages."""
        with self._lock:
            while len(self._workers) < self.processes:
                self._add_worker()

    def _add_worker(self) -> None:
        """Spawn one worker and make it available (the caller holds the lock)."""
        worker = _Worker(self._context, self.work)
        self._workers.append(worker)
        self._idle.put(worker)

    def _run(self, job: tuple[bytes, str | None, ImageLimits]) -> ImageDecision:
        if len(self._workers) < self.processes:
            self.start()
        worker = self._idle.get()
        try:
            worker.conn.send(job)
            ok, result = worker.conn.recv()
        except (EOFError, OSError) as exc:
            self._replace(worker)
            raise WorkerDied(f"image worker {worker.process.pid} exited ({worker.process.exitcode})") from exc
        self._idle.put(worker)
        if not ok:
            raise result
        return result

    def _replace(self, dead: _Worker) -> None:
        with self._lock:
            dead.process.join(timeout=10)
            dead.conn.close()
            if dead in self._workers:
                self._workers.remove(dead)
            self._add_worker()

    def inspect(self, data: bytes, content_type: str | None, limits: ImageLimits) -> ImageDecision:
        if self.processes <= 0:
            return self.work(data, content_type, limits)
        for attempt in (1, 2):
            try:
                return self._run((data, content_type, limits))
            except WorkerDied as exc:
                # Killed for memory, or a decoder crash on these bytes: a fresh worker tries once more,
                # then the bytes are called corrupt.
                logger.warning("%s; %s", exc, "trying once more" if attempt == 1 else "rejected as corrupt")
        return ImageDecision(accepted=False, reason="corrupt", sha256=hashlib.sha256(data).hexdigest(),
                             n_bytes=len(data))

    def shutdown(self) -> None:
        with self._lock:
            workers, self._workers = self._workers, []
            self._idle = queue.SimpleQueue()
        for worker in workers:
            worker.stop()
