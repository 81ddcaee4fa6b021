"""The shared vocabulary of every stage, and the one parser of DAG and CLI params.

Task types, languages, the image placeholder and the lineage statuses are named here once; the
database's CHECK constraints, the DAGs' params, the checks and the writers all read them from here.
Params come from outside (the Airflow UI, the REST API, the command line): `param_date` and
`resolve_partition` turn them into dates or say, naming the param, why they cannot.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The seed dataset's task counts (llava-instruct-zh-600k): conversation : complex reasoning : description.
SEED_TASK_MIX = {"conversation": 247_431, "complex_reasoning": 194_646, "detail": 199_791}
TASK_TYPES: tuple[str, ...] = tuple(SEED_TASK_MIX)
LANGUAGES: tuple[str, ...] = ("zh", "en")
# LLaVA's placeholder for the image: exactly one per sample, in the first human turn.
IMAGE_TOKEN = "<image>"
HUMAN, GPT = "human", "gpt"

IMAGE_STATUSES = ("accepted", "rejected", "duplicate", "near_duplicate", "taken_down")
GENERATION_STATUSES = ("pending", "succeeded", "failed", "unparseable")
QC_STATUSES = ("pending", "passed", "failed", "taken_down")
# An accepted image's curation verdict (tuwen.curate): synthesis takes only `curated` images; `held` ones are
# kept back by a policy (the Chinese-text share, personal data) and a changed setting can release them.
CURATION_STATUSES = ("curated", "held", "rejected")


class ParamError(ValueError):
    """A DAG or CLI param is malformed; the message names the param."""


class PartitionError(ParamError):
    """The run's params name an impossible date range."""


def param_date(value: Any, name: str) -> dt.date | None:
    """A date param: a date, a datetime, or an ISO string (a timestamp's date part); empty is None."""
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ParamError(f"param {name} must be a date like 2026-11-20, got {value!r}") from None


def param_choices(value: Any, known: tuple[str, ...], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A list param whose items must come from `known`; empty means `default`."""
    if value in (None, "", [], ()):
        return default
    items = (value,) if isinstance(value, str) else tuple(value)
    unknown = sorted({str(v) for v in items} - set(known))
    if unknown:
        raise ParamError(f"param {name}: unknown {unknown}; known: {', '.join(known)}")
    return tuple(str(v) for v in items)


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
    try:
        day = param_date(value, name)
    except ParamError as exc:
        raise PartitionError(str(exc)) from None
    if day is None:
        raise PartitionError(f"param {name} must be a date like 2026-11-20, got {value!r}")
    return day


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
