"""`privacy.personal_data`: an answer that repeats personal data fails, with only the check's name recorded."""

from __future__ import annotations

import pytest

from tuwen.quality.checks import QCConfig, SampleForQC, run_checks


def _detail(answer: str) -> SampleForQC:
    return SampleForQC("detail", "zh", [{"from": "human", "value": "<image>\n请详细描述这张图片。"},
                                        {"from": "gpt", "value": answer}], "stop")


BASE = "这是一张贴在小区公告栏上的寻物启事，白纸黑字，右上角用红笔圈出了悬赏金额，下方写着失主的联系方式："


# The ID number's check digit is right (GB 11643); the same digits with another last digit are an order number.
@pytest.mark.parametrize("contact", ["手机 139 0123 4567。", "身份证号 11010519491231002X。", "邮箱 li.na@example.cn。"])
def test_an_answer_that_repeats_personal_data_fails(contact: str) -> None:
    verdict = run_checks(_detail(BASE + contact))
    assert verdict.reasons == ["privacy.personal_data"]
    assert not any(contact.strip("。") in str(value) for value in verdict.metrics.values())


@pytest.mark.parametrize("contact", ["座机 010-6552 3180。", "订单号 110105194912310021。", "快递单号 7712345678901234。"])
def test_numbers_that_are_not_personal_data_pass(contact: str) -> None:
    verdict = run_checks(_detail(BASE + contact))
    assert verdict.passed, verdict.reasons


def test_the_check_can_be_switched_off_by_its_threshold() -> None:
    sample = _detail(BASE + "手机 13901234567。")
    assert run_checks(sample, QCConfig(reject_personal_data=False)).passed
