"""ImageProcessPool: the crawler's image work (decode, checks, hashes, model-ready copy) in worker processes.

Decoding, hashing and resizing release the GIL only in parts; with the reactor, the S3 client and the
database driver all in one interpreter the crawl process topped out at one core. Worker processes take
the image work off the GIL, and a decoder that blows up on hostile bytes takes down a worker, not the
crawl.

Each worker has a connection of its own: a pipeline thread takes an idle worker, sends it the bytes and
reads the decision back on that connection (concurrent.futures' shared queues and their feeder and
manager threads cost twice the CPU per image; see docs/BENCHMARKS.md).

Every job is bounded (the `job_*` fields of ImageLimits), by the operating system where it can be:
- CPU time: before each job the worker moves its own RLIMIT_CPU soft limit to the CPU it has used so far
  plus the job's allowance; the kernel ends a worker that runs past it with SIGXCPU (`decode_timeout`).
- Memory: the worker's address space is capped (RLIMIT_AS) at what it uses once warmed up plus the
  job's allowance; an allocation over it fails, and the image is `decode_memory`.
- Wall time: the parent waits for the answer with a deadline (poll on the connection, no extra round
  trip) and kills a worker that has not answered (`decode_timeout`), which also covers a worker
  stuck without using CPU.
A killed worker is replaced; the image gets its reason and the rest of the crawl goes on. With
`processes=0` the work runs in the calling thread and only the structural checks bound it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import multiprocessing
import os
import queue
import resource
import select
import signal
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from tuwen.crawl.images import ImageDecision, ImageLimits, inspect_and_normalize, warm_up

logger = logging.getLogger(__name__)

Work = Callable[[bytes, str | None, ImageLimits], ImageDecision]
WarmUp = Callable[[], None]
Job = tuple[bytes, str | None, ImageLimits]

# A spawned worker imports and warms up the image code before it says it is ready; on a crowded
# machine that has taken tens of seconds. The jobs' wall deadline starts only after it.
WORKER_START_SECONDS = 300.0
READY = "ready"


def _address_space() -> int | None:
    """This process's virtual memory size in bytes (Linux), None where /proc is not there."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


class _JobLimits:
    """The worker side of the limits: RLIMIT_CPU moved before each job, RLIMIT_AS set once per allowance."""

    def __init__(self) -> None:
        # A worker ended by SIGXCPU would otherwise write a core file of its whole address space.
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        self.warm_size = _address_space()
        self.memory_allowance: int | None = None
        self.cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]

    def apply(self, limits: ImageLimits) -> None:
        """Two system calls per job (getrusage, setrlimit); a third when the memory allowance changes."""
        if self.warm_size is not None and limits.job_memory_bytes != self.memory_allowance:
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            cap = self.warm_size + limits.job_memory_bytes
            resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
            self.memory_allowance = limits.job_memory_bytes
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(used.ru_utime + used.ru_stime) + max(1, limits.job_cpu_seconds)
        hard = self.cpu_hard
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _serve(conn: Connection, work: Work, warm: WarmUp) -> None:
    """A worker's life: import and warm the image code, then answer jobs until told to stop."""
    warm()
    job_limits = _JobLimits()  # measured after warming up: the libraries' own memory is the baseline
    conn.send(READY)
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the crawl process is gone
            return
        if job is None:
            return
        data, content_type, limits = job
        job_limits.apply(limits)
        try:
            answer: tuple[bool, Any] = (True, work(data, content_type, limits))
        except MemoryError:
            answer = (True, _rejection(data, "decode_memory"))
        except Exception:  # a bug in the image code: the parent logs it and records the image
            answer = (False, traceback.format_exc())
        conn.send(answer)


def _rejection(data: bytes, reason: str) -> ImageDecision:
    return ImageDecision(accepted=False, reason=reason, sha256=hashlib.sha256(data).hexdigest(), n_bytes=len(data))


class _Worker:
    def __init__(self, context: Any, work: Work, warm: WarmUp) -> None:
        self.conn, child = context.Pipe(duplex=True)
        # spawn, not fork: forking a process that runs threads (reactor, pools) can deadlock.
        self.process = context.Process(target=_serve, args=(child, work, warm), daemon=True, name="tuwen-image")
        self.process.start()
        child.close()
        # One poll() system call per job for the wall-time deadline (Connection.poll builds a selector
        # each time).
        self.answer = select.poll()
        self.answer.register(self.conn.fileno(), select.POLLIN)
        self.ready = False  # its READY message read

    def wait_until_ready(self) -> bool:
        """Read the worker's READY message once; False when it did not come in WORKER_START_SECONDS."""
        if not self.ready:
            if not self.answers_within(WORKER_START_SECONDS):
                return False
            self.conn.recv()  # READY (EOFError if the worker died starting)
            self.ready = True
        return True

    def answers_within(self, seconds: float) -> bool:
        """Whether the worker's answer (or its exit) is readable within `seconds`."""
        return bool(self.answer.poll(max(0, math.ceil(seconds * 1000))))

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # a dead worker has nobody listening
            self.conn.send(None)
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class WorkerDied(RuntimeError):
    """The worker handling an image exited; `reason` is the image's when the exit says why (a limit)."""

    def __init__(self, message: str, reason: str | None) -> None:
        super().__init__(message)
        self.reason = reason


def _reason_for_exit(exitcode: int | None) -> str | None:
    """The image's reason for a worker's exit: SIGXCPU is its CPU limit; a SIGKILL we did not send is the
    kernel's out-of-memory killer. Anything else (a decoder crash) says nothing about the limits."""
    if exitcode == -signal.SIGXCPU:
        return "decode_timeout"
    if exitcode == -signal.SIGKILL:
        return "decode_memory"
    return None


class ImageProcessPool:
    """inspect_and_normalize in `processes` worker processes, called from the pipeline's threads;
    `processes=0` keeps the work in the calling thread."""

    def __init__(self, processes: int, work: Work = inspect_and_normalize, warm: WarmUp = warm_up) -> None:
        self.processes = processes
        # Module-level functions (spawned workers import them); tests swap in their own.
        self.work = work
        self.warm = warm
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
        worker = _Worker(self._context, self.work, self.warm)
        self._workers.append(worker)
        self._idle.put(worker)

    def _run(self, job: Job) -> ImageDecision:
        if len(self._workers) < self.processes:
            self.start()
        worker = self._idle.get()
        limits = job[2]
        try:
            if not worker.wait_until_ready():
                worker.process.kill()
                self._replace(worker)
                raise WorkerDied(f"image worker {worker.process.pid} did not start in {WORKER_START_SECONDS} s; "
                                 "killed", None)
            worker.conn.send(job)
            if not worker.answers_within(limits.job_wall_seconds):
                worker.process.kill()
                self._replace(worker)
                raise WorkerDied(f"image worker {worker.process.pid} gave no answer in {limits.job_wall_seconds} s; "
                                 "killed", "decode_timeout")
            ok, result = worker.conn.recv()
        except (EOFError, OSError) as exc:
            self._replace(worker)
            exitcode = worker.process.exitcode
            raise WorkerDied(f"image worker {worker.process.pid} exited ({exitcode})",
                             _reason_for_exit(exitcode)) from exc
        self._idle.put(worker)
        if not ok:
            raise _ImageCodeError(result)
        return result

    def _replace(self, dead: _Worker) -> None:
        with self._lock:
            dead.process.join(timeout=10)
            dead.conn.close()
            if dead in self._workers:
                self._workers.remove(dead)
            self._add_worker()

    def inspect(self, data: bytes, content_type: str | None, limits: ImageLimits) -> ImageDecision:
        """The image's decision; never raises for anything in `data`: a worker over a limit, a worker
        that died twice on these bytes and an error in the image code each become a rejection."""
        try:
            if self.processes <= 0:
                return self.work(data, content_type, limits)
            for attempt in (1, 2):
                try:
                    return self._run((data, content_type, limits))
                except WorkerDied as exc:
                    if exc.reason is not None:  # over a limit: trying again would only spend it again
                        logger.warning("%s; image %s rejected as %s", exc, _digest(data), exc.reason)
                        return _rejection(data, exc.reason)
                    # A decoder crash on these bytes: a fresh worker tries once more, then they are corrupt.
                    logger.warning("%s; %s", exc, "trying once more" if attempt == 1 else "rejected as corrupt")
        except _ImageCodeError as exc:
            logger.error("the image code failed on image %s; rejected as corrupt:\n%s", _digest(data), exc)
        except MemoryError:
            return _rejection(data, "decode_memory")
        except Exception:
            logger.exception("the image code failed on image %s; rejected as corrupt", _digest(data))
        return _rejection(data, "corrupt")

    def shutdown(self) -> None:
        with self._lock:
            workers, self._workers = self._workers, []
            self._idle = queue.SimpleQueue()
        for worker in workers:
            worker.stop()


class _ImageCodeError(RuntimeError):
    """An exception in a worker's image code, carried back as its formatted traceback."""


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
