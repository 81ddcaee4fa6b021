"""The export DAG's params: one parse (the gate's scope plus the release-only params), names and the
English source checked before the gate runs, and default names that never collide."""

from __future__ import annotations

import datetime as dt

import pytest

from tuwen.domain import ParamError
from tuwen.quality.scope import ReleaseScope
from tuwen.release.params import (
    MAX_NAME_CHARS,
    ReleaseParams,
    check_english_json,
    check_release_name,
    default_release_name,
    release_params_for_run,
)

DAG_PARAMS = {"date_from": "2026-11-01", "date_to": "2026-11-03", "languages": ["zh", "en"],
              "task_types": ["detail", "conversation"], "min_pass_rate": 0.5, "mix": {"detail": "2"},
              "max_samples": "", "images": "tar", "overwrite": False}


@pytest.mark.parametrize("name", ["tuwen-2026-11-20", "r1", "Tuwen_v2.1", "a" * MAX_NAME_CHARS])
def test_safe_release_names_are_accepted(name: str) -> None:
    assert check_release_name(name) == name and ReleaseParams(name=name).name == name


@pytest.mark.parametrize("name", ["", "two\nlines", "nul\x00byte", "with space", "a/b", "..", "x..y", ".hidden",
                                  "-flag", "a" * 300, "发布", "tab\tname", "semi;colon"])
def test_unsafe_release_names_are_refused_naming_the_param(name: str) -> None:
    with pytest.raises(ParamError, match="param release"):
        ReleaseParams(name=name)
    if name:  # an empty param means the run's default name
        with pytest.raises(ParamError, match="param release"):
            release_params_for_run({"release": name}, "manual__x")


def test_the_release_params_and_the_gate_scope_come_from_one_parse() -> None:
    scope = ReleaseScope.from_params(DAG_PARAMS)
    release = ReleaseParams.from_params("r", DAG_PARAMS)
    assert release.scope == ReleaseScope(scope.date_from, scope.date_to, scope.languages, scope.task_types)
    assert ReleaseParams.from_params("r", DAG_PARAMS, scope) == release
    assert (release.mix, release.max_samples, release.images, release.overwrite) == ({"detail": 2}, None, "tar", False)
    assert "overwrite" not in release.as_json()  # what happens to a published name is not the contents


@pytest.mark.parametrize(("params", "param"), [
    ({"date_from": "yesterday"}, "date_from"),
    ({"task_types": ["caption"]}, "task_types"),
    ({"languages": ["fr"]}, "languages"),
    ({"qc_statuses": ["taken_down"]}, "qc_statuses"),
    ({"max_samples": "ten"}, "max_samples"),
    ({"max_samples": 0}, "max_samples"),
    ({"max_samples": 2.5}, "max_samples"),
    ({"shard_max_files": -1}, "shard_max_files"),
    ({"mix": {"detail": "lots"}}, "mix"),
    ({"mix": [1, 2]}, "mix"),
    ({"images": "zip"}, "images"),
    ({"overwrite": "maybe"}, "overwrite"),
    ({"date_from": "2026-11-05", "date_to": "2026-11-01"}, "date_to"),
])
def test_bad_params_raise_one_error_type_naming_the_param(params: dict, param: str) -> None:
    with pytest.raises(ParamError, match=f"param {param}"):
        ReleaseParams.from_params("r", params)


def test_default_names_are_unique_per_run_and_need_no_logical_date() -> None:
    morning = release_params_for_run({}, "manual__2026-12-07T06:11:55.123456+00:00", None)
    evening = release_params_for_run({}, "manual__2026-12-07T18:02:01.000001+00:00", None)
    assert morning.name != evening.name
    assert morning.name.startswith("tuwen-manual__2026-12-07T06-11-55")
    long = default_release_name("manual__" + "x" * 400)
    assert len(long) <= MAX_NAME_CHARS and long != default_release_name("manual__" + "x" * 399 + "y")
    assert default_release_name(None, dt.date(2026, 11, 20)) == "tuwen-2026-11-20"
    with pytest.raises(ParamError, match="param release"):
        default_release_name(None, None)


@pytest.mark.parametrize("value", ["/etc/passwd", "../../etc/passwd", "file:///etc/passwd", "inputs/../secrets.json",
                                   "exports/other/llava.json", "inputs/", "inputs/a b.json", "inputs/x\n.json",
                                   "s3://tuwen/raw/ab.jpg", "/work/main/inputs/en.json"])
def test_english_json_outside_the_bucket_inputs_is_refused(value: str) -> None:
    with pytest.raises(ParamError, match="param english_json"):
        ReleaseParams.from_params("r", {"english_json": value})


def test_english_json_is_an_object_key_under_inputs() -> None:
    assert check_english_json("inputs/llava_instruct_150k.json") == "inputs/llava_instruct_150k.json"
    assert check_english_json("s3://tuwen/inputs/en/v1.json") == "inputs/en/v1.json"
    assert check_english_json("") is None
    assert ReleaseParams(name="r", english_json="s3://tuwen/inputs/en.json").english_json == "inputs/en.json"
