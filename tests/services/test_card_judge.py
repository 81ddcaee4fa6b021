"""The dataset card of a real release reads the faithfulness judge's calls on its samples: the share
judged and the judge's extra tokens per sample; without any judgement it says the judge did not run."""

from __future__ import annotations

from tests.services.test_export import seed
from tests.services.test_qc_faithfulness import insert_judgement
from tuwen.config import Settings
from tuwen.release.export import ReleaseParams, write_release
from tuwen.resources import Resources


def card_section(resources: Resources, name: str) -> str:
    result = write_release(resources, ReleaseParams(name=name, include_images=False))
    card = (result.local_path / "README.md").read_text(encoding="utf-8")
    return card[card.index("## 忠实度评审 / Faithfulness judge"):card.index("## 图片中的文字")]


def test_the_card_says_the_judge_did_not_run_without_judgements(settings: Settings, resources: Resources) -> None:
    seed(settings, 10, with_images=False)
    section = card_section(resources, "no-judge")
    assert "评审未运行 / the faithfulness judge did not run" in section and "judged:" not in section


def test_the_card_counts_judged_samples_and_the_judges_tokens(settings: Settings, resources: Resources) -> None:
    passed = seed(settings, 10, with_images=False)
    for sample_id in passed[:4]:  # 900 prompt + 120 completion tokens each (insert_judgement's)
        insert_judgement(settings, sample_id, contradicted=0)
    insert_judgement(settings, passed[4], status="failed", error_type="timeout")  # asked, no verdict
    section = card_section(resources, "judged")
    n = len(passed)
    assert f"judged: 4 of {n} released samples ({100 * 4 / n:.2f}%)" in section
    assert "judge model(s): `judge-model`." in section
    assert f"(5 judge calls): prompt {5 * 900 / n:.1f}, completion {5 * 120 / n:.1f};" in section
