"""Which crawl dates a DAG run works on.

One tested function for every kind of run: scheduled and backfill runs carry a data interval;
manual runs may give an explicit date range in params; manual and asset-triggered runs can have a
null `logical_date` and no interval, and then fall back to the asset event's partition or, last,
to the day before the run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class PartitionError(ValueError):
    """The run's params name an impossible date range."""


@dataclass(frozen=True)
class Partition:
    start: dt.date  # inclusive
    end: dt.date  # exclusive

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise PartitionError(f"empty partition: {self.start} .. {self.end}")

    @property
    def label(self) -> str:
        last = self.end - dt.timedelta(days=1)
        return self.start.isoformat() if last == self.start else f"{self.start.isoformat()}..{last.isoformat()}"

    def days(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i) for i in range((self.end - self.start).days)]


def _as_date(value: Any, name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise PartitionError(f"param {name} must be a date like 2026-11-20, got {value!r}") from None


def resolve_partition(context: Mapping[str, Any], today: dt.date | None = None) -> Partition:
    """The crawl-date range for a run, from its context (a plain mapping, so it is testable)."""
    params = context.get("params") or {}
    date_from, date_to = params.get("date_from"), params.get("date_to")
    if date_from or date_to:
        start = _as_date(date_from or date_to, "date_from")
        last = _as_date(date_to or date_from, "date_to")
        if last < start:
            raise PartitionError(f"date_to {last} is before date_from {start}")
        return Partition(start, last + dt.timedelta(days=1))

    start_ts, end_ts = context.get("data_interval_start"), context.get("data_interval_end")
    if start_ts is not None and end_ts is not None:
        start, end = _as_date(start_ts, "data_interval_start"), _as_date(end_ts, "data_interval_end")
        # A zero-width interval (manual run of a cron-scheduled DAG) means that one day.
        return Partition(start, max(end, start + dt.timedelta(days=1)))

    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            partition = (getattr(event, "extra", None) or {}).get("partition")
            if partition:
                day = _as_date(partition, "asset event partition")
                return Partition(day, day + dt.timedelta(days=1))

    day = (today or dt.datetime.now(dt.UTC).date()) - dt.timedelta(days=1)
    return Partition(day, day + dt.timedelta(days=1))
