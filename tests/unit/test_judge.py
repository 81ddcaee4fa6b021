"""The faithfulness judge's pure parts: its prompts, the sample rendered into them, the request key and
the parser of the verdict (untrusted model output)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuwen.config import REPO_ROOT, Settings
from tuwen.domain import ParamError
from tuwen.judge.keys import JudgeRunParams, judge_params, judge_request_key, judge_spec, param_flag
from tuwen.judge.prompts import (
    JudgePrompt,
    get_judge_prompt,
    load_judge_prompt_file,
    load_judge_prompts,
    render_prompt,
    render_sample,
)
from tuwen.judge.verdict import (
    CONTRADICTED,
    CONTRADICTED_SCHEMA,
    MAX_CONTRADICTED,
    MAX_STATEMENT_CHARS,
    MAX_STATEMENTS,
    MAX_TEXT_CHARS,
    STATEMENTS,
    VERDICT_SCHEMA,
    VERDICT_SHAPES,
    parse_verdict,
    response_format,
)
from tuwen.synthesis.prompts import PromptError

CONVERSATION = [
    {"from": "human", "value": "<image>\n图中的汽车是什么颜色？"},
    {"from": "gpt", "value": "图中的汽车是红色的。"},
    {"from": "human", "value": "  路边有几棵树？ "},
    {"from": "gpt", "value": "路边有三棵树。\n它们都很高。"},
]


# --- prompts and rendering ---------------------------------------------------------------------


def test_the_committed_judge_prompts_load_with_one_placeholder() -> None:
    prompts = load_judge_prompts(REPO_ROOT / "prompts")
    assert {"faithfulness.zh.v1", "faithfulness.en.v1"} <= set(prompts)
    zh = get_judge_prompt("zh", prompts_dir=REPO_ROOT / "prompts")
    assert zh.version >= 1 and zh.text.count("{sample}") == 1
    assert "图片标注审核员" in zh.text  # how the stand-in recognises a judge request
    assert "image annotation reviewer" in get_judge_prompt("en", 1, REPO_ROOT / "prompts").text
    assert not zh.text.startswith("---")  # the front matter is not part of the text (nor of its hash)


def test_the_latest_version_is_the_default_and_v1_stays_loadable() -> None:
    prompts_dir = REPO_ROOT / "prompts"
    for language in ("zh", "en"):
        latest = get_judge_prompt(language, prompts_dir=prompts_dir)
        assert latest.version == 2 and latest.verdict == CONTRADICTED
        assert '{"contradicted": []}' in latest.text  # the empty answer is spelled out
        v1 = get_judge_prompt(language, 1, prompts_dir)
        assert v1.verdict == STATEMENTS and v1.sha256 != latest.sha256
    # TUWEN_JUDGE_PROMPT_VERSION empty is None, which is the latest; set, it pins a version.
    empty = Settings.from_env({"TUWEN_JUDGE_PROMPT_VERSION": ""})
    assert JudgeRunParams.from_params({}, empty).prompt_version is None
    assert judge_spec(empty, JudgeRunParams(True), "s", "zh").prompt.id == "faithfulness.zh.v2"
    pinned = Settings.from_env({"TUWEN_JUDGE_PROMPT_VERSION": "1"})
    assert judge_spec(pinned, JudgeRunParams.from_params({}, pinned), "s", "zh").prompt.id == "faithfulness.zh.v1"


def test_a_version_without_a_declared_verdict_shape_is_refused(tmp_path: Path) -> None:
    version = max(VERDICT_SHAPES) + 1
    future = tmp_path / f"faithfulness.zh.v{version}.txt"
    future.write_text("请核对。\n{sample}", encoding="utf-8")
    with pytest.raises(PromptError, match="no verdict shape"):
        load_judge_prompt_file(future)


def test_a_judge_prompt_without_its_placeholder_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "faithfulness.zh.v2.txt"
    bad.write_text("---\nsource: test\n---\n请核对。\n", encoding="utf-8")
    with pytest.raises(PromptError, match="exactly once"):
        load_judge_prompt_file(bad)
    (tmp_path / "faithfulness.xx.v1.txt").write_text("{sample}", encoding="utf-8")
    with pytest.raises(PromptError, match="unknown language"):
        load_judge_prompt_file(tmp_path / "faithfulness.xx.v1.txt")
    with pytest.raises(PromptError, match="front matter"):
        (tmp_path / "x.zh.v1.txt").write_text("---\nversion: 3\n---\n{sample}", encoding="utf-8")
        load_judge_prompt_file(tmp_path / "x.zh.v1.txt")


def test_rounds_render_in_the_stand_in_contract_form() -> None:
    assert render_sample(CONVERSATION, "zh") == (
        "问：图中的汽车是什么颜色？\n答：图中的汽车是红色的。\n\n问：路边有几棵树？\n答：路边有三棵树。\n它们都很高。")
    english = [{"from": "human", "value": "What is this?\n<image>"}, {"from": "gpt", "value": " A red car. "}]
    assert render_sample(english, "en") == "Q: What is this?\nA: A red car."


def test_rendering_into_the_prompt_is_a_literal_replace() -> None:
    prompt = JudgePrompt("t.zh.v1", "t", "zh", 1, 'JSON: {"statements": []}\n{sample}', "0" * 64)
    braces = [{"from": "human", "value": "<image>\n{sample} {0} {x}?"}, {"from": "gpt", "value": "{statements}"}]
    rendered = render_prompt(prompt, braces)
    # The prompt's JSON braces survive, and a sample that itself says {sample} is not substituted again.
    assert rendered == 'JSON: {"statements": []}\n问：{sample} {0} {x}?\n答：{statements}'


def test_a_malformed_conversation_renders_without_raising() -> None:
    odd = [{"from": "gpt", "value": "只有回答"}, "not a turn", {"from": "human", "value": None},
           {"from": "human", "value": "<image>问"}]
    assert render_sample(odd, "zh") == "答：只有回答\n\n问：\n\n问：问"


# --- keys --------------------------------------------------------------------------------------


def _spec(settings_: Settings, sample: str = "tw-abc", language: str = "zh") -> str:
    return judge_spec(settings_, JudgeRunParams(enabled=True), sample, language).key


def test_the_key_is_stable_and_changes_with_everything_that_changes_the_answer() -> None:
    base = Settings()
    key = _spec(base)
    assert key == _spec(Settings()) and len(key) == 64
    variants = {
        "sample": _spec(base, sample="tw-abd"),
        "language (another prompt)": _spec(base, language="en"),
        "model": _spec(dataclasses.replace(base, judge_model="Qwen/Qwen2.5-VL-72B-Instruct")),
        "the VLM's model when the judge has none": _spec(dataclasses.replace(base, vlm_model="other")),
        "max_tokens": _spec(dataclasses.replace(base, judge_max_tokens=2048)),
        "structured": _spec(dataclasses.replace(base, judge_structured_output=False)),
        "seed": _spec(dataclasses.replace(base, seed=7)),
        "max_pixels": _spec(dataclasses.replace(base, max_pixels=base.max_pixels // 2)),
    }
    assert all(v != key for v in variants.values()), variants
    assert len(set(variants.values())) == len(variants)
    # What does not change the answer does not change the key: the endpoint's address, the synthesis
    # sampling temperature (the judge runs at 0), the batch size.
    same = dataclasses.replace(base, judge_base_url="http://judge:8000/v1", temperature=0.2, batch_size=7)
    assert _spec(same) == key
    assert judge_params(base)["temperature"] == 0.0


def test_the_key_follows_the_prompt_text_not_its_notes(tmp_path: Path) -> None:
    prompt = get_judge_prompt("zh", 1, REPO_ROOT / "prompts")
    noted = tmp_path / "faithfulness.zh.v1.txt"
    noted.write_text(f"---\nnotes: another note\n---\n{prompt.text}\n", encoding="utf-8")
    params = judge_params(Settings())
    assert judge_request_key("s", load_judge_prompt_file(noted), "m", params) == \
        judge_request_key("s", prompt, "m", params)
    edited = dataclasses.replace(prompt, sha256="f" * 64)
    assert judge_request_key("s", edited, "m", params) != judge_request_key("s", prompt, "m", params)


def test_the_judge_param_overrides_the_setting() -> None:
    off, on = Settings(), Settings(judge_enabled=True)
    assert JudgeRunParams.from_params({}, off).enabled is False
    assert JudgeRunParams.from_params({"judge": None}, on).enabled is True
    assert JudgeRunParams.from_params({"judge": False}, on).enabled is False
    assert JudgeRunParams.from_params({"judge": "true"}, off).enabled is True
    with pytest.raises(ParamError, match="param judge"):
        param_flag("maybe", "judge", False)


def test_the_judge_endpoint_defaults_to_the_vlm() -> None:
    base = Settings(vlm_base_url="http://vlm:8000/v1", vlm_model="m", vlm_api_key="k")
    assert base.judge_endpoint == ("http://vlm:8000/v1", "m", "k")
    own = dataclasses.replace(base, judge_base_url="http://judge:9/v1", judge_model="j", judge_api_key="jk")
    assert own.judge_endpoint == ("http://judge:9/v1", "j", "jk")


# --- the verdict -------------------------------------------------------------------------------


def test_the_response_format_is_vllms_json_schema_form() -> None:
    fmt = response_format(STATEMENTS)
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "tuwen_judge_verdict"
    assert fmt["json_schema"]["schema"] is VERDICT_SCHEMA
    item = VERDICT_SCHEMA["properties"]["statements"]["items"]
    assert item["properties"]["label"]["enum"] == ["supported", "contradicted", "unverifiable"]


def test_the_v2_response_format_asks_for_the_contradicted_statements_only() -> None:
    fmt = response_format(CONTRADICTED)
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "tuwen_judge_contradicted"
    schema = fmt["json_schema"]["schema"]
    assert schema is CONTRADICTED_SCHEMA and schema["required"] == ["contradicted"]
    assert schema["additionalProperties"] is False
    items = schema["properties"]["contradicted"]
    assert items["maxItems"] == MAX_CONTRADICTED == 10  # what the v2 prompt asks for
    assert items["items"] == {"type": "string", "minLength": 1, "maxLength": MAX_STATEMENT_CHARS}


VERDICT = {"statements": [{"text": "汽车是红色的", "label": "supported"},
                          {"text": "路边有三棵树", "label": "contradicted"},
                          {"text": "它们都很高", "label": "unverifiable"}]}


def test_json_verdict() -> None:
    verdict = parse_verdict(json.dumps(VERDICT, ensure_ascii=False))
    assert verdict.ok and verdict.form == "json"
    assert verdict.counts == {"supported": 1, "contradicted": 1, "unverifiable": 1}
    assert verdict.statements[1] == {"text": "路边有三棵树", "label": "contradicted"}


def test_fenced_and_embedded_json() -> None:
    body = json.dumps(VERDICT, ensure_ascii=False, indent=2)
    fenced = parse_verdict(f"好的，以下是核对结果：\n```json\n{body}\n```\n希望有帮助。")
    assert fenced.ok and fenced.form == "json_fenced" and fenced.count("contradicted") == 1
    embedded = parse_verdict(f"Here is my review {json.dumps(VERDICT)} as asked.")
    assert embedded.ok and embedded.form == "json_embedded" and len(embedded.statements) == 3
    # A stray brace before the verdict does not hide it.
    assert parse_verdict("Note {this}: " + json.dumps(VERDICT)).ok


def test_labels_are_normalised_and_zh_labels_accepted_in_json() -> None:
    verdict = parse_verdict('{"statements": [{"text": "a", "label": " Supported "}, {"text": "b", "label": "矛盾"}]}')
    assert verdict.ok and [s["label"] for s in verdict.statements] == ["supported", "contradicted"]


def test_plain_text_fallback_english() -> None:
    text = ("Sure, here is the check.\n"
            "supported: The car is red.\n"
            "- contradicted: There are three trees.\n"
            "2. Unverifiable: They are tall.\n"
            "[contradicted] The sign reads STOP.\n"
            "**supported**: It is daytime.\n"
            "That is all.")
    verdict = parse_verdict(text)
    assert verdict.ok and verdict.form == "text"
    assert [s["label"] for s in verdict.statements] == [
        "supported", "contradicted", "unverifiable", "contradicted", "supported"]
    assert verdict.statements[3]["text"] == "The sign reads STOP."


def test_plain_text_fallback_chinese() -> None:
    text = "核对如下：\n支持：汽车是红色的。\n- 矛盾：路边有三棵树。\n无法确认: 它们都很高。\n【矛盾】招牌上写着“停”。"
    verdict = parse_verdict(text)
    assert verdict.ok and verdict.counts == {"supported": 1, "contradicted": 2, "unverifiable": 1}
    assert verdict.statements[0]["text"] == "汽车是红色的。"


@pytest.mark.parametrize("garbage, reason", [
    ("", "empty"), (None, "empty"), ("   \n ", "empty"),
    ("I cannot help with that.", "no_verdict"),
    ("The image shows a supported claim: none.", "no_verdict"),  # a label word mid-sentence is not a line
    ('{"statement": []}', "no_verdict"),  # no "statements" key: not the verdict
    ('{"statements": "all good"}', "bad_shape"),
    ('{"statements": [{"text": "x", "label": "partly"}]}', "bad_label"),
    ('{"statements": [{"text": "", "label": "supported"}]}', "bad_statement"),
    ('{"statements": [["x", "supported"]]}', "bad_statement"),
    ("[" * 100_000, "no_verdict"),  # hostile nesting
    ("{" * 50_000, "no_verdict"),
])
def test_garbage_is_unparseable_with_a_reason(garbage: str | None, reason: str) -> None:
    verdict = parse_verdict(garbage)
    assert not verdict.ok and verdict.error is not None and verdict.error.startswith(reason), verdict.error
    assert verdict.statements == ()


def test_a_truncated_verdict_says_so() -> None:
    cut = json.dumps(VERDICT)[:40]
    verdict = parse_verdict(cut, finish_reason="length")
    assert not verdict.ok and verdict.error is not None and verdict.error.startswith("truncated")
    assert parse_verdict(json.dumps(VERDICT), finish_reason="length").ok  # complete is complete


def test_oversize_text_is_refused_before_any_parsing() -> None:
    huge = json.dumps(VERDICT) + " " * MAX_TEXT_CHARS
    verdict = parse_verdict(huge)
    assert not verdict.ok and verdict.error is not None and verdict.error.startswith("oversize")


def test_too_many_statements_json_and_text() -> None:
    many = {"statements": [{"text": f"s{i}", "label": "supported"} for i in range(MAX_STATEMENTS + 1)]}
    verdict = parse_verdict(json.dumps(many))
    assert not verdict.ok and verdict.error is not None and verdict.error.startswith("too_many_statements")
    at_bound = {"statements": many["statements"][:MAX_STATEMENTS]}
    assert parse_verdict(json.dumps(at_bound)).ok
    lines = "\n".join(f"supported: s{i}" for i in range(MAX_STATEMENTS + 1))
    text_verdict = parse_verdict(lines)
    assert not text_verdict.ok and text_verdict.error is not None
    assert text_verdict.error.startswith("too_many_statements")


def test_a_long_statement_is_cut_and_noted() -> None:
    long = {"statements": [{"text": "长" * 5000, "label": "contradicted"}]}
    verdict = parse_verdict(json.dumps(long, ensure_ascii=False))
    assert verdict.ok and len(verdict.statements[0]["text"]) == MAX_STATEMENT_CHARS
    assert verdict.notes == ("statement_cut",)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")))
def test_the_parser_never_raises(text: str) -> None:
    verdict = parse_verdict(text)
    assert verdict.ok or verdict.error
    assert len(verdict.statements) <= MAX_STATEMENTS
    assert all(len(s["text"]) <= MAX_STATEMENT_CHARS for s in verdict.statements)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=30).filter(str.strip),
                          st.sampled_from(["supported", "contradicted", "unverifiable"])), max_size=10))
def test_any_schema_valid_json_round_trips(items: list[tuple[str, str]]) -> None:
    body = {"statements": [{"text": t, "label": label} for t, label in items]}
    verdict = parse_verdict(json.dumps(body))
    assert verdict.ok
    assert [(s["text"], s["label"]) for s in verdict.statements] == [(t.strip(), lab) for t, lab in items]


# --- the v2 verdict: contradicted statements only -----------------------------------------------


def test_v2_json_verdicts() -> None:
    clean = parse_verdict('{"contradicted": []}', "stop", CONTRADICTED)
    assert clean.ok and clean.form == "json" and clean.statements == () and clean.shape == CONTRADICTED
    # Not asked is not zero: the stored n_supported / n_unverifiable stay NULL.
    assert clean.counts == {"supported": None, "contradicted": 0, "unverifiable": None}
    dirty = parse_verdict('{"contradicted": [" 路边有三棵树。 ", "招牌上写着「停」。"]}', "stop", CONTRADICTED)
    assert dirty.ok and dirty.n_contradicted == 2
    assert dirty.statements == ({"text": "路边有三棵树。", "label": "contradicted"},
                                {"text": "招牌上写着「停」。", "label": "contradicted"})
    assert dirty.counts == {"supported": None, "contradicted": 2, "unverifiable": None}
    # A model imitating v1's items is read too.
    assert parse_verdict('{"contradicted": [{"text": "a"}]}', None, CONTRADICTED).n_contradicted == 1
    mixed = '{"contradicted": [{"text": "a", "label": "supported"}, {"text": "b", "label": "矛盾"}]}'
    assert [s["text"] for s in parse_verdict(mixed, None, CONTRADICTED).statements] == ["b"]


def test_v2_fenced_and_embedded_json() -> None:
    fenced = parse_verdict('核对结果如下：\n```json\n{"contradicted": ["汽车是蓝色的。"]}\n```', None, CONTRADICTED)
    assert fenced.ok and fenced.form == "json_fenced" and fenced.n_contradicted == 1
    embedded = parse_verdict('Checked. {"contradicted": []} Nothing else.', None, CONTRADICTED)
    assert embedded.ok and embedded.form == "json_embedded" and embedded.n_contradicted == 0


def test_either_json_shape_is_read_whatever_was_asked() -> None:
    # A v1 object answering a v2 prompt is a full verdict (all three counts); and the other way round.
    full = parse_verdict(json.dumps(VERDICT, ensure_ascii=False), None, CONTRADICTED)
    assert full.ok and full.shape == STATEMENTS and full.counts == {"supported": 1, "contradicted": 1,
                                                                   "unverifiable": 1}
    short = parse_verdict('{"contradicted": ["x"]}', None, STATEMENTS)
    assert short.ok and short.shape == CONTRADICTED and short.counts["supported"] is None


@pytest.mark.parametrize("text", ["无矛盾", "无矛盾。", "- 无", "没有矛盾", "**未发现矛盾**", "none", "None.",
                                  "No contradictions found.", "矛盾：无", "contradicted: none", "矛盾：（无）",
                                  "Here is my check:\nnone\nThanks.", "supported: The car is red."])
def test_v2_plain_text_saying_nothing_is_contradicted(text: str) -> None:
    verdict = parse_verdict(text, "stop", CONTRADICTED)
    assert verdict.ok and verdict.form == "text" and verdict.n_contradicted == 0, verdict
    assert verdict.counts["supported"] is None


def test_v2_plain_text_contradicted_lines() -> None:
    text = ("核对如下：\n矛盾：画面一角还有一块醒目的紫色区域。\n- 矛盾：图中还写着「营业中」几个字。\n"
            "支持：画面以蓝色为主。\n无法确认：适合做海报。")
    verdict = parse_verdict(text, "stop", CONTRADICTED)
    assert verdict.ok and verdict.shape == CONTRADICTED and verdict.n_contradicted == 2
    assert [s["text"] for s in verdict.statements] == ["画面一角还有一块醒目的紫色区域。", "图中还写着「营业中」几个字。"]
    english = parse_verdict("contradicted: The picture carries the words 「EXIT」.\nnone", "stop", CONTRADICTED)
    assert english.n_contradicted == 1  # a stray "none" does not cancel a contradicted line
    # The same lines under v1's shape keep every label, as before.
    assert parse_verdict(text, "stop", STATEMENTS).counts == {"supported": 1, "contradicted": 2, "unverifiable": 1}


@pytest.mark.parametrize("garbage, reason", [
    ("", "empty"), (None, "empty"),
    ("I cannot help with that.", "no_verdict"),
    ("None of these statements is contradicted by the image, I think.", "no_verdict"),  # a sentence, not a line
    ("无矛盾之外还有很多话", "no_verdict"),
    ('{"contradicted": "none"}', "bad_shape"),
    ('{"contradicted": 3}', "bad_shape"),
    ('{"contradicted": [""]}', "bad_statement"),
    ('{"contradicted": [["x"]]}', "bad_statement"),
    ('{"contradicted": [{"label": "contradicted"}]}', "bad_statement"),
    ('{"contradicted": [null]}', "bad_statement"),
    ('{"contradicted": [' + '"x",' * MAX_STATEMENTS + '"x"]}', "too_many_statements"),
    ("[" * 100_000, "no_verdict"),
    ('{"contradicted": [' * 5_000, "no_verdict"),  # hostile nesting
    ('{"contradicted": ["' + "x" * MAX_TEXT_CHARS + '"]}', "oversize"),
])
def test_v2_garbage_is_unparseable_with_a_reason(garbage: str | None, reason: str) -> None:
    verdict = parse_verdict(garbage, "stop", CONTRADICTED)
    assert not verdict.ok and verdict.error is not None and verdict.error.startswith(reason), verdict.error
    assert verdict.statements == ()


def test_v2_truncated_and_long_statements() -> None:
    cut = parse_verdict('{"contradicted": ["路边有三棵', "length", CONTRADICTED)
    assert not cut.ok and cut.error is not None and cut.error.startswith("truncated")
    long = parse_verdict(json.dumps({"contradicted": ["长" * 5000]}, ensure_ascii=False), "stop", CONTRADICTED)
    assert long.ok and len(long.statements[0]["text"]) == MAX_STATEMENT_CHARS and long.notes == ("statement_cut",)
    assert not parse_verdict('{"contradicted": []}', "stop", "other").ok  # an unknown shape is no verdict


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")))
def test_the_v2_parser_never_raises(text: str) -> None:
    verdict = parse_verdict(text, None, CONTRADICTED)
    assert verdict.ok or verdict.error
    assert len(verdict.statements) <= MAX_STATEMENTS
    assert all(s["label"] == "contradicted" for s in verdict.statements) or verdict.shape == STATEMENTS


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30).filter(str.strip), max_size=MAX_CONTRADICTED))
def test_any_v2_schema_valid_json_round_trips(texts: list[str]) -> None:
    verdict = parse_verdict(json.dumps({"contradicted": texts}), "stop", CONTRADICTED)
    assert verdict.ok and verdict.n_contradicted == len(texts)
    assert [s["text"] for s in verdict.statements] == [t.strip() for t in texts]
