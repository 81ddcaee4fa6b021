"""The dataset card's faithfulness-judge section: the share judged, the judge's pass rate at the gate and
its extra tokens per sample against the samples' own — or one line saying the judge did not run."""

from __future__ import annotations

from tests.unit.test_card import facts
from tuwen.release.card import render_card

JUDGE = {"calls": 1_300_000, "judged": 1_200_000, "prompt_tokens": 2_469_134_000, "completion_tokens": 185_185_050,
         "models": ["Qwen/Qwen2.5-VL-72B-Instruct", "judge-b"], "gate_judged": 1_250_000, "gate_contradicted": 50_000}


def section(card: str) -> str:
    return card[card.index("## 忠实度评审 / Faithfulness judge"):card.index("## 图片中的文字")]


def test_without_judgements_the_card_says_the_judge_did_not_run() -> None:
    text = section(render_card(facts()))
    assert "评审未运行 / the faithfulness judge did not run" in text
    assert "|" not in text and "judged:" not in text  # no empty table, no zero rows


def test_the_card_states_the_share_judged_the_pass_rate_and_the_extra_tokens() -> None:
    f = facts(judge=JUDGE)
    f.models = [{**f.models[0], "samples": 1_234_567, "prompt_tokens": 1_234_567_000, "completion_tokens": 740_740_200}]
    text = section(render_card(f))
    assert "judge model(s): `Qwen/Qwen2.5-VL-72B-Instruct`, `judge-b`." in text
    assert "judged: 1,200,000 of 1,234,567 released samples (97.20%)" in text
    assert "96.00% of 1,250,000 judged samples had no contradicted statement; the 50,000 others were dropped." in text
    assert "(1,300,000 judge calls): prompt 2000.0, completion 150.0; the samples' own: prompt 1000.0, completion 600.0" in text
    assert "(+200.00% prompt, +25.00% completion)" in text
    assert render_card(f) == render_card(f)  # same facts, same bytes
