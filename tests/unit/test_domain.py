"""resolve_partition: every kind of run maps to the crawl dates it should work on."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from tuwen.domain import Partition, PartitionError, resolve_partition

UTC = dt.UTC


def test_scheduled_run_uses_its_data_interval() -> None:
    context = {"data_interval_start": dt.datetime(2026, 11, 19, 1, tzinfo=UTC),
               "data_interval_end": dt.datetime(2026, 11, 20, 1, tzinfo=UTC), "params": {}}
    assert resolve_partition(context) == Partition(dt.date(2026, 11, 19), dt.date(2026, 11, 20))


def test_manual_run_of_a_cron_dag_has_a_zero_width_interval_meaning_that_day() -> None:
    ts = dt.datetime(2026, 11, 21, 15, 30, tzinfo=UTC)
    partition = resolve_partition({"data_interval_start": ts, "data_interval_end": ts, "params": {}})
    assert partition == Partition(dt.date(2026, 11, 21), dt.date(2026, 11, 22))
    assert partition.label == "2026-11-21"


def test_params_date_range_wins_and_is_inclusive() -> None:
    context = {"data_interval_start": dt.datetime(2026, 11, 1, tzinfo=UTC),
               "data_interval_end": dt.datetime(2026, 11, 2, tzinfo=UTC),
               "params": {"date_from": "2026-11-10", "date_to": "2026-11-12"}}
    partition = resolve_partition(context)
    assert partition.days() == [dt.date(2026, 11, 10), dt.date(2026, 11, 11), dt.date(2026, 11, 12)]
    assert partition.label == "2026-11-10..2026-11-12"
    only_from = resolve_partition({"params": {"date_from": "2026-11-10"}})
    assert only_from.days() == [dt.date(2026, 11, 10)]


def test_null_logical_date_uses_the_asset_event_partition() -> None:
    event = SimpleNamespace(extra={"partition": "2026-11-18"})
    context = {"logical_date": None, "data_interval_start": None, "data_interval_end": None, "params": {},
               "triggering_asset_events": {"tuwen://images/crawled": [event]}}
    assert resolve_partition(context).days() == [dt.date(2026, 11, 18)]


def test_null_logical_date_without_events_falls_back_to_yesterday() -> None:
    context = {"logical_date": None, "data_interval_start": None, "params": {}}
    assert resolve_partition(context, today=dt.date(2026, 11, 21)).days() == [dt.date(2026, 11, 20)]


@pytest.mark.parametrize(
    ("params", "message"),
    [({"date_from": "2026-11-12", "date_to": "2026-11-10"}, "before"), ({"date_from": "yesterday"}, "must be a date")],
)
def test_bad_date_params_are_clear_errors(params: dict, message: str) -> None:
    with pytest.raises(PartitionError, match=message):
        resolve_partition({"params": params})
