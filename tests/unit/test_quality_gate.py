"""The Great Expectations gate over a partition's gate frame (GX Core 1.x, ephemeral context)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tuwen.domain import SEED_TASK_MIX, TASK_TYPES
from tuwen.quality.checks import CHECKS, SampleVerdict
from tuwen.quality.gate import GateConfig, build_gate_frame, check_column, run_gate

ROUNDS = {"conversation": 5, "complex_reasoning": 1, "detail": 1}


def _records(count: int, mix: dict[str, int], failing: dict[str, int] | None = None):
    """`count` samples with task types in proportion to `mix`; `failing` = {check name: how many fail it}."""
    total = sum(mix.values())
    tasks = [task for task in TASK_TYPES for _ in range(round(count * mix[task] / total))][:count]
    failures = [name for name, n in (failing or {}).items() for _ in range(n)]
    records = []
    for index, task in enumerate(tasks):
        reasons = [failures[index]] if index < len(failures) else []
        verdict = SampleVerdict(passed=not reasons, reasons=reasons, metrics={"rounds": float(ROUNDS[task])})
        records.append((f"s{index:05d}", task, verdict))
    return records


@pytest.fixture(scope="module")
def good_frame() -> pd.DataFrame:
    return build_gate_frame(_records(600, SEED_TASK_MIX, {"degeneration.truncated": 12, "refusal": 6}))


@pytest.fixture(scope="module")
def good_result(good_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory):
    return run_gate(
        good_frame, GateConfig(), partition="2024-05-01", data_docs_dir=tmp_path_factory.mktemp("docs")
    )


def test_build_gate_frame_columns() -> None:
    verdict = SampleVerdict(False, ["structure.roles", "refusal"], {"rounds": 2.0})
    frame = build_gate_frame([("a", "conversation", verdict), ("b", "detail", SampleVerdict(True, [], {}))])
    assert list(frame.columns[:6]) == [
        "sample_id",
        "task_type",
        "rounds",
        "roles_ok",
        "has_single_image_in_first_turn",
        "passed",
    ]
    assert {check_column(name) for name in CHECKS} <= set(frame.columns)
    first = frame.iloc[0]
    assert not first["roles_ok"] and first["has_single_image_in_first_turn"] and not first["passed"]
    assert not first["ok_refusal"] and first["ok_degeneration_truncated"]
    assert frame["rounds"].tolist() == [2, 0]


def test_good_partition_passes(good_result) -> None:
    assert good_result.success, good_result.failed_expectations
    assert good_result.failed_expectations == []
    assert good_result.skipped == []
    assert good_result.row_count == 600
    assert good_result.pass_rate == pytest.approx(582 / 600)
    assert good_result.check_pass_rates["degeneration.truncated"] == pytest.approx(588 / 600)
    assert good_result.check_pass_rates["structure.roles"] == 1.0
    assert sum(good_result.task_mix.values()) == pytest.approx(1.0)


def test_validation_result_is_json_and_names_rules(good_result) -> None:
    text = json.dumps(good_result.validation_result)
    rules = {r["expectation_config"]["meta"]["rule"] for r in good_result.validation_result["results"]}
    assert {
        "pass_rate.overall",
        "structure.roles_ok",
        "task_mix.kl_divergence",
        "conversation.mean_rounds",
    } <= rules
    assert {f"pass_rate.{name}" for name in CHECKS} <= rules
    assert {f"task_mix.{task}" for task in TASK_TYPES} <= rules
    assert "tuwen_samples" in text


def test_data_docs_site_is_built(good_result) -> None:
    index = good_result.data_docs_index
    assert isinstance(index, Path) and index.is_file()
    validation_pages = list(index.parent.glob("validations/**/*.html"))
    assert validation_pages, "the validation result page is part of the site"
    page = validation_pages[0].read_text(encoding="utf-8")
    assert "rounds" in page and "passed" in page
    assert "tuwen_samples" in index.read_text(encoding="utf-8")


def test_low_pass_rate_fails_and_names_the_rules() -> None:
    frame = build_gate_frame(_records(600, SEED_TASK_MIX, {"language.cjk_ratio": 150, "meta_talk": 20}))
    result = run_gate(frame, GateConfig(min_pass_rate=0.8))
    assert not result.success
    assert result.pass_rate == pytest.approx(430 / 600)
    assert "pass_rate.overall" in result.failed_expectations
    assert "pass_rate.language.cjk_ratio" in result.failed_expectations
    assert "pass_rate.meta_talk" not in result.failed_expectations  # 20/600 fail: 96.7% ≥ 90%


def test_wrong_task_mix_fails() -> None:
    frame = build_gate_frame(_records(600, {"conversation": 8, "complex_reasoning": 1, "detail": 1}))
    result = run_gate(frame, GateConfig())
    assert not result.success
    assert {"task_mix.conversation", "task_mix.complex_reasoning", "task_mix.detail"} <= set(
        result.failed_expectations
    )
    assert "task_mix.kl_divergence" in result.failed_expectations
    assert "pass_rate.overall" not in result.failed_expectations
    assert result.task_mix["conversation"] == pytest.approx(0.8, abs=0.01)


def test_structural_rule_catches_a_passed_row_with_bad_roles(good_frame: pd.DataFrame) -> None:
    broken = good_frame.copy()
    passed_conversations = broken.index[broken["passed"] & (broken["task_type"] == "conversation")]
    first, second = passed_conversations[:2]
    broken.loc[first, "roles_ok"] = False  # passed stays True: checks and database disagree
    broken.loc[second, "rounds"] = 7
    broken.loc[2, "sample_id"] = broken.loc[3, "sample_id"]
    result = run_gate(broken, GateConfig())
    assert not result.success
    assert {"structure.roles_ok", "structure.rounds.conversation", "structure.unique_sample_id"} <= set(
        result.failed_expectations
    )


def test_shallow_conversations_fail_mean_rounds(good_frame: pd.DataFrame) -> None:
    shallow = good_frame.copy()
    shallow.loc[shallow["task_type"] == "conversation", "rounds"] = 2
    result = run_gate(shallow, GateConfig(min_conversation_mean_rounds=3.0))
    assert result.failed_expectations == ["conversation.mean_rounds"]


def test_small_partition_skips_distribution_rules_and_says_so() -> None:
    frame = build_gate_frame(_records(30, {"conversation": 1, "complex_reasoning": 0, "detail": 0}))
    result = run_gate(frame, GateConfig())
    assert result.success
    assert result.skipped and "30 passed rows" in result.skipped[0]
    rules = {r["expectation_config"]["meta"]["rule"] for r in result.validation_result["results"]}
    assert not any(rule.startswith("task_mix") for rule in rules)
    assert result.data_docs_index is None


def test_empty_partition_fails() -> None:
    result = run_gate(build_gate_frame([]), GateConfig())
    assert not result.success
    assert "table.row_count" in result.failed_expectations
