"""The stand-in's injected contradictions and its rule-based judging (tuwen.local.standin_vlm.judging).

These test the judge's PLUMBING against a stand-in that knows its own phrasing, not a model's
judgement: the stand-in writes answers from cheap measurements, can slip in a false sentence of a
known kind, and labels a sample's sentences by re-measuring the image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
from pathlib import Path

from PIL import Image

from tuwen.domain import GPT, HUMAN, IMAGE_TOKEN
from tuwen.judge.verdict import CONTRADICTED, parse_verdict
from tuwen.local.standin_vlm.answers import ImageFeatures, analyse_image, compose_answer
from tuwen.local.standin_vlm.judging import (
    INJECTION_KINDS,
    contradicted_only,
    draw_injection,
    judge_language,
    judge_sample,
    label_statement,
    plan_injection,
    render_judgement,
    sample_answers,
    split_statements,
    unlabelled,
)
from tuwen.synthesis.parsing import parse_answer
from tuwen.synthesis.prompts import description_instruction, read_prompt_text

PROMPTS = Path(__file__).resolve().parents[2] / "prompts" / "judge"
OCR_TEXTS = ["", "人民公园管理处", "EXIT 出口", "川味小馆 营业时间 9:00-21:00"]


def judge_prompt(language: str, version: int = 1) -> str:
    return read_prompt_text(PROMPTS / f"faithfulness.{language}.v{version}.txt")[1]


def render_sample(conversations: list[dict[str, str]], language: str) -> str:
    """The contract with tuwen.judge: rounds as 问：…\\n答：… (zh) / Q: …\\nA: … (en), a blank line apart."""
    q, a = ("问：", "答：") if language == "zh" else ("Q: ", "A: ")
    rounds = []
    for human, gpt in zip(conversations[::2], conversations[1::2], strict=True):
        assert (human["from"], gpt["from"]) == (HUMAN, GPT)
        rounds.append(f"{q}{human['value'].replace(IMAGE_TOKEN, '').strip()}\n{a}{gpt['value']}")
    return judge_prompt(language).replace("{sample}", "\n\n".join(rounds))


def random_features(rng: random.Random) -> ImageFeatures:
    image = Image.new("RGB", (rng.randint(200, 900), rng.randint(200, 900)), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(5):
        x, y = rng.randrange(image.width), rng.randrange(image.height)
        image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + rng.randint(20, 300), y + rng.randint(20, 300)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    sha256 = hashlib.sha256(buffer.getvalue()).hexdigest()
    return dataclasses.replace(analyse_image(buffer.getvalue(), sha256), text=rng.choice(OCR_TEXTS))


def run_corpus(rate: float, images: int = 60) -> dict[str, int]:
    """Write (image × task × language) samples at `rate`, parse them as synthesis does, judge them."""
    rng = random.Random(29)
    counts = {"samples": 0, "injected": 0, "caught": 0, "clean": 0, "clean_flagged": 0}
    kinds: set[str] = set()
    for i in range(images):
        features = random_features(rng)
        for language in ("zh", "en"):
            for task in ("conversation", "complex_reasoning", "detail"):
                key = f"{features.sha256}:{task}:{language}"
                extra_rng = draw_injection(key, rate)
                injection = plan_injection(features, language, extra_rng) if extra_rng else None
                text = compose_answer(task, language, features, random.Random(i),
                                      injection.statement if injection else None, extra_rng)
                instruction = description_instruction(features.sha256, language) if task == "detail" else ""
                parsed = parse_answer(task, language, text, instruction)
                assert parsed.ok, (parsed.error, text)
                statements = judge_sample(render_sample(parsed.conversations, language), language, features)
                contradicted = {s["text"] for s in statements if s["label"] == "contradicted"}
                counts["samples"] += 1
                if injection is None:
                    counts["clean"] += 1
                    counts["clean_flagged"] += bool(contradicted)
                    assert not contradicted, (task, language, contradicted, features)
                else:
                    kinds.add(injection.kind)
                    counts["injected"] += 1
                    counts["caught"] += injection.statement in contradicted
                    # The injected sentence is the only one the judge should call contradicted.
                    assert contradicted <= {injection.statement}, (contradicted, injection)
    if rate:
        assert kinds == set(INJECTION_KINDS)
    return counts


def test_injected_contradictions_are_caught_and_clean_answers_pass() -> None:
    counts = run_corpus(0.3)
    assert 0.2 < counts["injected"] / counts["samples"] < 0.4, counts
    assert counts["caught"] / counts["injected"] >= 0.9, counts  # the stand-in itself gets 1.0
    assert counts["clean_flagged"] / counts["clean"] <= 0.05, counts  # and 0.0


def test_rate_zero_injects_nothing_and_leaves_answers_unchanged() -> None:
    assert all(draw_injection(f"key-{i}", 0.0) is None for i in range(1000))
    features = random_features(random.Random(3))
    for task in ("conversation", "complex_reasoning", "detail"):
        assert compose_answer(task, "zh", features, random.Random(5)) == compose_answer(
            task, "zh", features, random.Random(5), None, None)
    counts = run_corpus(0.0, images=10)
    assert counts["injected"] == 0 and counts["clean_flagged"] == 0


def test_a_higher_rate_marks_a_superset_of_a_lower_rates_requests() -> None:
    low = {i for i in range(2000) if draw_injection(f"k{i}", 0.1)}
    high = {i for i in range(2000) if draw_injection(f"k{i}", 0.3)}
    assert low < high and 150 < len(low) < 250 and 500 < len(high) < 700


def test_each_kind_of_injection_is_false_by_the_stand_ins_own_measurements() -> None:
    features = random_features(random.Random(8))
    seen = {}
    for i in range(200):
        injection = plan_injection(features, "zh", random.Random(i))
        seen[injection.kind] = injection.statement
        assert label_statement(injection.statement, "zh", features) == "contradicted"
    assert set(seen) == set(INJECTION_KINDS)


def test_judge_requests_are_recognised_by_the_prompts_opening() -> None:
    assert judge_language(judge_prompt("zh")) == "zh"
    assert judge_language(judge_prompt("en")) == "en"
    assert judge_language("详细描述这张照片的场景。") is None


def test_sample_rounds_are_read_from_the_rendered_prompt_and_questions_are_not_judged() -> None:
    prompt = judge_prompt("zh").replace("{sample}", "问：图里有什么颜色？\n答：画面以红色为主。\n第二行。\n\n问：多大？\n答：640×480。")
    assert sample_answers(prompt, "zh") == ["画面以红色为主。\n第二行。", "640×480。"]
    assert split_statements("It is 1.33 wide. Second one!\n第三句。第四句；第五") == [
        "It is 1.33 wide.", "Second one!", "第三句。", "第四句；", "第五"]


def test_labels_from_measurements() -> None:
    features = dataclasses.replace(
        random_features(random.Random(1)),
        width=640, height=480, colours=(("red", 0.5), ("white", 0.3)), regions={"top": "red", "bottom": "white",
                                                                               "left": "red", "right": "red"},
        text="EXIT 出口")
    assert label_statement("画面以红色为主。", "zh", features) == "supported"
    assert label_statement("画面以蓝色为主。", "zh", features) == "contradicted"
    assert label_statement("The picture is mostly Blue.", "en", features) == "contradicted"
    assert label_statement("用深色（如黑色或深灰色）文字对比度最高。", "zh", features) == "unverifiable"
    assert label_statement("Overall the colours are muted, close to black and white.", "en", features) == "unverifiable"
    assert label_statement("图片分辨率为640×480，约30.7万像素。", "zh", features) == "supported"
    assert label_statement("这张图片的尺寸是640×960像素。", "zh", features) == "contradicted"
    assert label_statement("It is 1280 by 960 pixels.", "en", features) == "unverifiable"  # a rescaled copy
    assert label_statement("常见手机竖屏约为1080×2400像素。", "zh", features) == "unverifiable"
    assert label_statement("图中有文字「EXIT」。", "zh", features) == "supported"
    assert label_statement("图中有文字「欢迎光临」。", "zh", features) == "contradicted"
    assert label_statement("The text 「RED」 is there.", "en", dataclasses.replace(features, text="RED")) == "supported"
    assert label_statement("适合做海报。", "zh", features) == "unverifiable"


def test_json_and_plain_text_renderings() -> None:
    statements = [{"text": "画面以红色为主。", "label": "supported"}, {"text": "写着「X」。", "label": "contradicted"},
                  {"text": "适合做海报。", "label": "unverifiable"}]
    assert json.loads(render_judgement(statements, "zh", as_json=True)) == {"statements": statements}
    assert render_judgement(statements, "zh", as_json=False) == "支持：画面以红色为主。\n矛盾：写着「X」。\n无法确认：适合做海报。"
    assert render_judgement(statements, "en", as_json=False).splitlines()[1] == "contradicted: 写着「X」。"
    assert unlabelled(render_judgement(statements, "zh", as_json=True)) == "画面以红色为主。\n写着「X」。\n适合做海报。"
    assert unlabelled(render_judgement(statements, "en", as_json=False)) == "画面以红色为主。\n写着「X」。\n适合做海报。"


def test_at_most_twenty_statements_keeping_the_contradicted_ones() -> None:
    features = dataclasses.replace(random_features(random.Random(2)), colours=(("red", 1.0),),
                                   regions=dict.fromkeys(("top", "bottom", "left", "right"), "red"))
    answer = "适合做海报。" * 30 + "画面以蓝色为主。"
    statements = judge_sample(judge_prompt("zh").replace("{sample}", f"问：怎样？\n答：{answer}"), "zh", features)
    assert len(statements) == 20 and statements[-1] == {"text": "画面以蓝色为主。", "label": "contradicted"}


def test_prompt_v2_is_told_apart_by_its_json_example() -> None:
    for language in ("zh", "en"):
        assert judge_language(judge_prompt(language, 2)) == language  # still a judge request
        assert contradicted_only(judge_prompt(language, 2))
        assert not contradicted_only(judge_prompt(language, 1))
    # The marker in the sample's own text is not the prompt asking for v2.
    quoted = judge_prompt("zh", 1).replace("{sample}", '问：写了什么？\n答：写着{"contradicted": []}。')
    assert not contradicted_only(quoted)


def test_v2_renderings_hold_the_contradicted_statements_only() -> None:
    statements = [{"text": "画面以红色为主。", "label": "supported"}, {"text": "写着「X」。", "label": "contradicted"},
                  {"text": "适合做海报。", "label": "unverifiable"}]
    assert json.loads(render_judgement(statements, "zh", True, True)) == {"contradicted": ["写着「X」。"]}
    assert render_judgement(statements, "zh", False, True) == "矛盾：写着「X」。"
    assert render_judgement(statements, "en", False, True) == "contradicted: 写着「X」。"
    clean = statements[:1]
    assert render_judgement(clean, "zh", True, True) == '{"contradicted": []}'
    assert render_judgement(clean, "zh", False, True) == "无矛盾"
    assert render_judgement(clean, "en", False, True) == "none"
    # What the stand-in says, the judge's parser reads: JSON and both plain-text forms.
    for as_json in (True, False):
        for language in ("zh", "en"):
            dirty = parse_verdict(render_judgement(statements, language, as_json, True), "stop", CONTRADICTED)
            assert dirty.ok and [s["text"] for s in dirty.statements] == ["写着「X」。"]
            empty = parse_verdict(render_judgement(clean, language, as_json, True), "stop", CONTRADICTED)
            assert empty.ok and empty.n_contradicted == 0
    # The 'malformed' fault takes the labels (and the none line) away: nothing left to parse as a verdict.
    for rendered in (render_judgement(statements, "zh", False, True), render_judgement(clean, "en", False, True),
                     render_judgement(clean, "zh", True, True)):
        assert not parse_verdict(unlabelled(rendered), "stop", CONTRADICTED).ok
    many = [{"text": f"写着「{i}」。", "label": "contradicted"} for i in range(25)]
    assert len(json.loads(render_judgement(many, "zh", True, True))["contradicted"]) == 10  # v2 asks for <= 10
