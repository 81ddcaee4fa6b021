"""The consumer loaders catch what each real trainer would drop, crash on or mis-align — so that a clean
round trip in test_export means something."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuwen.release.trainer_formats import (
    check_record,
    iter_json_array,
    load_llamafactory,
    load_llava,
    load_qwen_finetune,
)

GOOD = {"id": "ok", "image": "images/ok.jpg",
        "conversations": [{"from": "human", "value": "<image>\n图里有什么？"}, {"from": "gpt", "value": "一只猫。"}]}


def _turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"from": f, "value": v} for f, v in pairs]


BAD = {
    "gpt_first": _turns(("gpt", "<image>\n嗨"), ("human", "问")),
    "odd_turns": _turns(("human", "<image>\n问"), ("gpt", "答"), ("human", "再问")),
    "two_images": _turns(("human", "<image>\n<image>\n问"), ("gpt", "答")),
    "image_in_gpt": _turns(("human", "问"), ("gpt", "<image> 答")),
    "no_image": _turns(("human", "问"), ("gpt", "答")),
    "unknown_role": _turns(("human", "<image>\n问"), ("assistant", "答")),
}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ok.jpg").write_bytes(b"jpeg")
    records = [GOOD] + [{"id": name, "image": "images/ok.jpg", "conversations": turns} for name, turns in BAD.items()]
    records.append({**GOOD, "id": "missing_file", "image": "images/missing.jpg"})
    (tmp_path / "data.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                         encoding="utf-8")
    info = {"d": {"file_name": "data.json", "formatting": "sharegpt",
                  "columns": {"messages": "conversations", "images": "image"},
                  "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return tmp_path


def test_common_rules_flag_every_bad_record() -> None:
    assert check_record(GOOD) == []
    for name, turns in BAD.items():
        assert check_record({**GOOD, "conversations": turns}), name
    assert check_record({**GOOD, "image": "/abs/path.jpg"})
    assert check_record({**GOOD, "extra": 1})


def test_llava_rules(dataset: Path) -> None:
    report = load_llava(dataset / "data.json", dataset)
    assert report.ids == ["ok"]
    dropped = dict(report.dropped)
    # LLaVA skips a leading gpt turn and then asserts alternation; unknown roles are a KeyError.
    assert {"gpt_first", "odd_turns", "two_images", "no_image", "unknown_role", "missing_file"} <= set(dropped)
    assert "KeyError" in dropped["unknown_role"] and "FileNotFoundError" in dropped["missing_file"]
    # preprocess_multimodal moved the placeholder to the front of its turn.
    assert report.loaded[0]["conversations"][0]["value"] == "<image>\n图里有什么？"


@pytest.mark.parametrize("name", ["data.json", "data.jsonl"])
def test_qwen_finetune_rules(dataset: Path, name: str) -> None:
    report = load_qwen_finetune(dataset / name, dataset)
    # Qwen only counts placeholders: odd turn counts and unknown roles (read as assistant) load silently,
    # which is why exports also hold every record to check_record.
    assert report.ids == ["ok", "odd_turns", "unknown_role"]
    assert "not consumed" in dict(report.dropped)["gpt_first"]
    dropped = dict(report.dropped)
    assert "more <image> placeholders" in dropped["two_images"]
    assert "not consumed" in dropped["image_in_gpt"] and "not consumed" in dropped["no_image"]
    assert report.loaded[0]["messages"][0]["content"] == [{"type": "image", "image": "images/ok.jpg"},
                                                          {"type": "text", "text": "图里有什么？"}]


def test_llamafactory_rules(dataset: Path) -> None:
    report = load_llamafactory(dataset, "d")
    # The placeholder count is over all messages, so one in the answer loads (and would be trained on as
    # the answer's image tokens): only check_record catches it.
    assert report.ids == ["ok", "image_in_gpt"]
    dropped = dict(report.dropped)
    assert "invalid role tag" in dropped["gpt_first"] and "invalid role tag" in dropped["unknown_role"]
    assert "invalid message count" in dropped["odd_turns"]
    assert "2 <image> tokens for 1 images" in dropped["two_images"]
    assert "media not found" in dropped["missing_file"]


def test_iter_json_array_streams_across_chunks(tmp_path: Path) -> None:
    records = [{"id": str(i), "v": "图" * i, "nested": {"q": "]},{"}} for i in range(50)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    assert list(iter_json_array(path, chunk_chars=17)) == records
    path.write_text("[]", encoding="utf-8")
    assert list(iter_json_array(path)) == []
    path.write_text('[{"id": 1}, {"id"', encoding="utf-8")
    with pytest.raises(ValueError, match="truncated"):
        list(iter_json_array(path, chunk_chars=8))
