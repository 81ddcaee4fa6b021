"""Progress lines for long work: done/total, rate, ETA, at a steady cadence.

A batch of hundreds of VLM calls or an export of 600k samples is silent for minutes otherwise; a
line every `every_s` seconds (not every N items, so slow and fast work read the same) tells an
operator in the Airflow task log that it moves, how fast, and when it will end.

    progress = Progress("synthesis batch 3", total=len(jobs), log=log)
    for ...:
        progress.advance(tokens=512)
    progress.finish()

or, for a stream whose length is not known ahead: `for row in progress_iter(rows, "export r1", log): ...`
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

DEFAULT_EVERY_S = 10.0


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Counts work done and logs a progress line at most every `every_s` seconds, plus a final one."""

    def __init__(self, label: str, total: int | None = None, log: logging.Logger | None = None,
                 every_s: float = DEFAULT_EVERY_S, unit: str = "items",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.log = log or logging.getLogger("tuwen.progress")
        self.every_s = every_s
        self.unit = unit
        self.clock = clock
        self.started = clock()
        self.last_line = self.started
        self.done = 0
        self.counters: Counter[str] = Counter()  # e.g. tokens, or errors by type

    def advance(self, n: int = 1, **counters: int) -> None:
        self.done += n
        for name, value in counters.items():
            if value:
                self.counters[name] += value
        now = self.clock()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now if now is not None else self.clock()) - self.started, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.label}: {self.done}"]
        if self.total is not None:
            share = 100.0 * self.done / self.total if self.total else 100.0
            parts[0] += f"/{self.total} {self.unit} ({share:.1f}%)"
        else:
            parts[0] += f" {self.unit}"
        parts.append(f"{rate:.2f}/s")
        if self.total is not None and self.done < self.total:
            parts.append(f"ETA {format_duration((self.total - self.done) / rate) if rate > 0 else '?'}")
        parts.append(f"elapsed {format_duration(elapsed)}")
        for name, value in sorted(self.counters.items()):
            parts.append(f"{name}={value}" + (f" ({value / elapsed:.0f}/s)" if name.endswith("tokens") else ""))
        return ", ".join(parts)

    def finish(self) -> str:
        line = self.line()
        self.log.info("%s (finished)", line)
        return line


def progress_iter(items: Iterable[T], label: str, log: logging.Logger | None = None, total: int | None = None,
                  every_s: float = DEFAULT_EVERY_S, unit: str = "items") -> Iterator[T]:
    """Yield `items` unchanged, logging progress as they pass and a final line at the end."""
    progress = Progress(label, total=total, log=log, every_s=every_s, unit=unit)
    for item in items:
        yield item
        progress.advance()
    progress.finish()
