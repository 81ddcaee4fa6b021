"""The dataset card renders from its facts alone (templates/card.md.j2): every fact it must state is
there, Markdown-breaking text is escaped, and the same facts give the same bytes."""

from __future__ import annotations

import datetime as dt
import json

from tuwen.release.card import CardFacts, render_card
from tuwen.synthesis.prompts import DETAIL_INSTRUCTIONS

NAMES = {"all": "llava_instruct_zh_1234k.json", "jsonl": "llava_instruct_zh_1234k.jsonl",
         "conversation": "conversation_500k.json", "complex_reasoning": "complex_reasoning_400k.json",
         "detail": "detail_334k.json"}
PARAMS = {"name": "tuwen-x", "languages": ["zh"], "task_types": ["conversation", "complex_reasoning", "detail"],
          "mix": {"detail": 1, "conversation": 5}, "max_samples": 1000, "date_from": "2026-11-01"}


def facts(**changes: object) -> CardFacts:
    base = CardFacts(
        release="tuwen-x", params=dict(PARAMS),
        manifest={"samples": 1_234_567, "data_files": NAMES,
                  "images": {"layout": "both", "count": 1_234_567, "checksums": "images.sha256",
                             "shards": [{"file": "images-00000.tar"}, {"file": "images-00001.tar"}]},
                  "english_mix": {"file": "llava_instruct_zh_with_en_1384k.json", "records_zh": 1_234_567,
                                  "records_en": 150_000, "source": "en.json", "source_sha256": "ab" * 32,
                                  "share_en": 0.1083}},
        tasks=[{"task_type": "conversation", "samples": 500_000, "avg_rounds": 4.5},
               {"task_type": "detail", "samples": 334_567, "avg_rounds": 1.0}],
        prompts=[{"id": "conversation.zh.v1", "version": 1, "sha256": "c" * 64, "task_type": "conversation",
                  "language": "zh", "samples": 500_000, "text": "你是一个 ```code``` AI"},
                 {"id": "detail.zh.v1", "version": 1, "sha256": "d" * 64, "task_type": "detail", "language": "zh",
                  "samples": 3, "text": None}],
        models=[{"model": "Qwen/Qwen2.5-VL-32B-Instruct", "sampling": {"temperature": 0.7, "top_p": 0.9},
                 "task_type": "conversation", "samples": 10, "prompt_tokens": 1234, "completion_tokens": 999,
                 "latency_ms": 12_345.6}],
        finish_reasons=[("stop", 10), ("length", 2)], sites=[("news.example.cn", 10), ("xn--fsqu00a.cn", 3)],
        sources={"pages": 5, "urls": 7, "crawl_runs": 2},
        dates={"crawl": (dt.date(2026, 11, 1), dt.date(2026, 11, 3)), "generation": (None, None)},
        ocr={"zh_text": 3, "no_zh_text": 4, "unknown": 1, "measured": 7, "avg": 12.345, "p50": 10, "p90": 30},
        qc_runs=[{"id": 3, "suite": "tuwen_samples", "suite_version": "1", "scope": {"languages": ["zh"]},
                  "min_pass_rate": 0.8, "n_samples": 100, "n_passed": 80, "n_failed": 20, "pass_rate": 0.8,
                  "success": True, "day": dt.date(2026, 11, 4),
                  "checks": [{"name": "language.cjk_ratio", "version": 1, "description": "a <b> | c",
                              "thresholds": {"min": 0.3}}],
                  "failed_reasons": {"language.cjk_ratio": 5, "other": 3}}],
        images={"avg_width": 640.4, "avg_height": 480.6})
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def test_the_card_states_every_fact() -> None:
    card = render_card(facts())
    assert card.startswith("# tuwen-x\n\n") and card.endswith("\n```\n")
    assert "| 日常对话 | 500,000 | 4.50 | `conversation_500k.json` |" in card
    assert "| Complex Reasoning | 0 | 0.00 | `complex_reasoning_400k.json` |" in card  # a task with no samples
    assert "全部任务 / all tasks: `llava_instruct_zh_1234k.json` (1,234,567), JSONL: `llava_instruct_zh_1234k.jsonl`" in card
    assert "English share 10.83%" in card and "任务配比 / task mix requested: `{\"conversation\": 5, \"detail\": 1}`, max_samples 1000" in card
    assert "2 个 tar 分片" in card and "图片目录 / image folder: `images/` (1,234,567 files)." in card
    assert "mean size 640×481 px" in card
    assert ("| `Qwen/Qwen2.5-VL-32B-Instruct` | conversation | 10 | `{\"temperature\": 0.7, \"top_p\": 0.9}` | "
            "123.4 / 99.9 | 1.23 s |") in card
    assert "结束原因 / finish reasons: `stop` 10, `length` 2" in card and "generated between – and –." in card
    assert "~~~~text\n你是一个 ```code``` AI\n~~~~" in card  # a prompt holding ``` is fenced with ~~~~
    assert "prompt file missing from prompts/" in card
    assert "```text\n" + "\n".join(DETAIL_INSTRUCTIONS["zh"]) + "\n```" in card
    assert "| news.example.cn | 10 |" in card
    assert "| `language.cjk_ratio` v1 | a &lt;b> \\| c | `{\"min\": 0.3}` | 5 | 5.00% |" in card
    assert "| `other` | – | – | 3 | 3.00% |" in card and "gate passed" in card
    assert "mean 12.3, median 10, p90 30 (over 7 images)." in card
    assert 'TUWEN_X = {"annotation_path": "$DATA/llava_instruct_zh_1234k.json", "data_path": "$DATA"}' in card
    assert "--dataset tuwen-x\n" in card and "`--dataset_use tuwen_x`; JSONL 亦可" in card
    assert "```json\n" + json.dumps(PARAMS, ensure_ascii=False, indent=1, sort_keys=True) + "\n```\n" in card


def test_a_release_without_images_qc_or_mix_says_so() -> None:
    manifest = {"samples": 0, "data_files": {"all": "llava_instruct_zh_0.json", "conversation": "conversation_0.json"},
                "images": {"layout": "none", "count": 0}, "english_mix": None}
    card = render_card(facts(params={"name": "r", "languages": ["zh"], "task_types": ["conversation"], "mix": None},
                             manifest=manifest, qc_runs=[], models=[], finish_reasons=[], prompts=[],
                             ocr={"zh_text": 0, "no_zh_text": 0, "unknown": 0, "measured": 0, "avg": None,
                                  "p50": None, "p90": None}))
    assert "this release ships without image files" in card and "tar" not in card.split("## 使用方法")[0]
    assert "no QC run is recorded for these samples." in card
    assert "结束原因 / finish reasons: –" in card and "OCR characters per image: –\n" in card
    assert "与英文数据混合 / mixed with English:" not in card
    assert "task mix requested" not in card and "`--dataset_use tuwen_x`." in card


def test_same_facts_same_bytes() -> None:
    assert render_card(facts()) == render_card(facts())


def test_the_card_states_the_curation_counts_by_reason() -> None:
    card = render_card(facts(curation={"by_status": {"curated": 90, "held": 6, "rejected": 4},
                                       "by_reason": {"personal_data.mobile": 2, "qr_code": 3, "zh_share": 4}}))
    assert "## 图片筛选 / Image curation" in card
    assert "curated 90; held 6; rejected 4." in card
    assert "`personal_data.mobile` 2, `qr_code` 3, `zh_share` 4." in card
    assert "## 图片筛选" not in render_card(facts())  # a release from before curation says nothing of it
