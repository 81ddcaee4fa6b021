"""The `faithfulness.judge` check: the faithfulness judge's verdict as a per-sample QC rule."""

from __future__ import annotations

from dataclasses import replace

from tuwen.quality.checks import CHECKS, QCConfig, SampleForQC, describe_checks, run_checks

GOOD = SampleForQC(
    "conversation",
    "zh",
    [
        {"from": "human", "value": "<image>\n路牌是什么颜色的？"},
        {"from": "gpt", "value": "路牌是蓝底白字的长方形金属牌，固定在一根灰色的立杆上，这是上海常见的道路指示牌样式。"},
    ],
    "stop",
)


def test_an_unjudged_sample_passes_and_says_it_was_not_judged() -> None:
    verdict = run_checks(GOOD)
    assert verdict.passed, verdict.reasons
    assert verdict.metrics["judged"] == 0.0 and "judge_contradicted" not in verdict.metrics


def test_a_judged_sample_without_contradictions_passes() -> None:
    verdict = run_checks(replace(GOOD, judge_contradicted=0))
    assert verdict.passed, verdict.reasons
    assert (verdict.metrics["judged"], verdict.metrics["judge_contradicted"]) == (1.0, 0.0)


def test_a_contradicted_statement_fails_the_sample() -> None:
    verdict = run_checks(replace(GOOD, judge_contradicted=1))
    assert verdict.reasons == ["faithfulness.judge"]
    assert verdict.metrics["judge_contradicted"] == 1.0


def test_the_limit_is_a_threshold_of_the_config() -> None:
    lenient = QCConfig(judge_max_contradicted=2)
    assert run_checks(replace(GOOD, judge_contradicted=1), lenient).passed
    assert run_checks(replace(GOOD, judge_contradicted=2), lenient).reasons == ["faithfulness.judge"]


def test_the_verdict_counts_even_when_other_checks_fail() -> None:
    broken = replace(GOOD, conversations=[{"from": "gpt", "value": "路牌是蓝色的。"}], judge_contradicted=3)
    reasons = run_checks(broken).reasons
    assert "faithfulness.judge" in reasons and "structure.roles" in reasons
    assert reasons == [name for name in CHECKS if name in reasons]  # registry order


def test_the_check_is_described_with_its_threshold() -> None:
    [spec] = [c for c in describe_checks(QCConfig(judge_max_contradicted=2)) if c["name"] == "faithfulness.judge"]
    assert spec["thresholds"] == {"judge_max_contradicted": 2}
    assert "unjudged" in spec["description"] or "not judged" in spec["description"]
