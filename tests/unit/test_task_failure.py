"""fail_fast_on_bad_input: a bad setting or param fails a DAG task at once (no retries), with its message."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tuwen.config import ConfigError, Settings
from tuwen.crawl.sites import load_sites
from tuwen.domain import ParamError, resolve_partition
from tuwen.task_failure import fail_fast_on_bad_input


def test_a_bad_param_fails_the_task_with_its_message() -> None:
    context = {"params": {"date_from": "2026-11-22", "date_to": "2026-11-21"}}
    with pytest.raises(AirflowFailException) as caught, fail_fast_on_bad_input():
        resolve_partition(context)
    assert "PartitionError" in str(caught.value) and "date_to" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_bad_setting_fails_the_task_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUWEN_QC_MIN_PASS_RATE", "most")
    with pytest.raises(AirflowFailException, match="TUWEN_QC_MIN_PASS_RATE"), fail_fast_on_bad_input():
        Settings.from_env()


@pytest.mark.parametrize("error", [ParamError("param limit: must be an integer, got 'x'"),
                                   ConfigError("TUWEN_X: must be a number")])
def test_the_message_is_kept(error: ValueError) -> None:
    with pytest.raises(AirflowFailException) as caught, fail_fast_on_bad_input():
        raise error
    assert str(caught.value) == f"{type(error).__name__}: {error}"


@pytest.mark.parametrize("error", [ValueError("not an input error"), ConnectionError("database down"),
                                   KeyError("params")])
def test_other_errors_pass_through_untouched(error: Exception) -> None:
    with pytest.raises(type(error)) as caught, fail_fast_on_bad_input():
        raise error
    assert caught.value is error


def test_no_error_no_effect() -> None:
    with fail_fast_on_bad_input():
        value = dt.date(2026, 11, 21)
    assert value == dt.date(2026, 11, 21)


def test_a_malformed_sites_file_fails_the_task_with_the_file_named(tmp_path: Path) -> None:
    sites = tmp_path / "sites.yaml"
    sites.write_text("sites: [this is: not valid: yaml", encoding="utf-8")
    with pytest.raises(AirflowFailException, match="sites.yaml"), fail_fast_on_bad_input():
        load_sites(sites)
