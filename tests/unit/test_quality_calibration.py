"""The failure classes the real-data calibration found (docs/QUALITY.md), each reproduced by a case of
our own: the old checks got every one of these wrong. Also checks the calibration set's bookkeeping
(provenance and labels agree), since its figures are only as good as that."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tuwen.quality.checks import (
    QCConfig,
    SampleForQC,
    cut_by_its_own_style,
    ends_unfinished,
    is_bare_enumeration,
    is_meta_talk,
    is_non_answer,
    is_refusal,
    min_round_chars,
    off_task_reason,
    question_kind,
    run_checks,
)

CALIBRATION = Path(__file__).parent / "data" / "calibration"
CONFIG = QCConfig()


def _sample(task: str, language: str, *pairs: tuple[str, str], finish: str | None = "stop") -> SampleForQC:
    conversations = []
    for i, (question, answer) in enumerate(pairs):
        conversations.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + question})
        conversations.append({"from": "gpt", "value": answer})
    return SampleForQC(task, language, conversations, finish)


# ----------------------------------------------------------------------------- length: what was asked


def test_one_round_chinese_conversation_with_a_short_factual_answer_passes() -> None:
    # The old floor compared the total of all answers with 60 characters: every real one-round
    # conversation (「图中有三块比萨饼。」) failed it.
    sample = _sample("conversation", "zh", ("桌上有几只杯子？", "桌上有两只白色的杯子。"))
    assert run_checks(sample).passed


def test_a_concise_description_of_under_a_hundred_characters_passes() -> None:
    description = "一把红白相间的遮阳伞插在沙滩上，伞下放着两把躺椅，远处是平静的海面。"  # 34 characters
    sample = _sample("detail", "zh", ("请全面、详细地描述这张图片。", description))
    assert run_checks(sample).passed


@pytest.mark.parametrize(
    ("question", "answer", "language"),
    [
        ("图中有几个人？", "3", "zh"),
        ("How many chickens are there?", "2", "en"),
        ("Is there a bathroom in the master bedroom?", "yes", "en"),
        ("Who is the man on the right?", "Yao Ming", "en"),
    ],
)
def test_a_closed_question_has_no_length_floor(question: str, answer: str, language: str) -> None:
    assert question_kind(question) == "closed"
    assert run_checks(_sample("conversation", language, (question, answer)), CONFIG).passed


@pytest.mark.parametrize(
    ("question", "answer", "language"),
    [
        ("Describe this image as detailed as possible.", "a concert with a crowd", "en"),  # a caption fragment
        ("请详细描述这张图片。", "一条小巷。", "zh"),
        ("Can you write me a poem about this image?", "i love my dog", "en"),
        ("Explain why this image is funny.", "a cat in a suit", "en"),
        ("为什么这位老人要把伞放在地上？请结合画面中的天气和他的动作分析一下。", "因为下雨。", "zh"),
    ],
)
def test_an_open_request_answered_with_a_fragment_is_too_short(question: str, answer: str, language: str) -> None:
    assert question_kind(question) != "closed"
    assert "length.too_short" in run_checks(_sample("conversation", language, (question, answer))).reasons


def test_the_task_floor_holds_for_the_first_question_and_follow_ups_by_their_own() -> None:
    reasoning = "因为刚下过雨，所以地面是湿的。"
    assert "length.too_short" in run_checks(_sample("complex_reasoning", "zh", ("为什么地面是湿的？", reasoning))).reasons
    assert min_round_chars("现在几点？", None, "zh", CONFIG) == 0
    assert min_round_chars("现在几点？", "complex_reasoning", "zh", CONFIG) == CONFIG.min_round_chars_by_task[
        "complex_reasoning"]


def test_an_open_answer_shorter_than_half_its_question_is_too_short() -> None:
    question = "请解释一下画面里这些人为什么会排队，以及他们在等什么东西。"  # 29 characters
    floor = min_round_chars(question, None, "zh", CONFIG)
    assert floor == pytest.approx(CONFIG.min_answer_to_question_ratio * len(question))
    assert floor > CONFIG.min_round_chars_by_kind["open"]


# --------------------------------------------------------------------------- truncation: finish_reason first


@pytest.mark.parametrize("answer", ["答案：5", "他们在足球场上庆祝", "Singapore", "in the air", "knead the dough for 10 minutes"])
def test_a_complete_answer_without_a_full_stop_is_not_truncated(answer: str) -> None:
    assert not ends_unfinished(answer)
    for finish in ("stop", None):
        sample = _sample("conversation", "zh" if not answer.isascii() else "en", ("这是什么？", answer), finish=finish)
        assert "degeneration.truncated" not in run_checks(sample).reasons


@pytest.mark.parametrize(
    "answer",
    ["老人们聚在一起下棋，", "桌上摆着苹果、香蕉以及", "其中一位老人正准备", "the film was directed by Martin Scorsese and",
     "the walls were built bigger and stronger,"],
)
def test_an_answer_stopping_on_an_unfinished_marker_is_truncated(answer: str) -> None:
    assert ends_unfinished(answer)
    sample = _sample("conversation", "zh" if not answer.isascii() else "en", ("这是什么？", answer), finish=None)
    assert "degeneration.truncated" in run_checks(sample).reasons


def test_finish_reason_length_is_truncated_whatever_the_text() -> None:
    sample = _sample("conversation", "zh", ("桌上有几只杯子？", "桌上有两只白色的杯子。"), finish="length")
    assert run_checks(sample).reasons == ["degeneration.truncated"]


# ------------------------------------------------------------------------- language: glosses and names


def test_bracketed_english_glosses_are_not_foreign_language() -> None:
    answer = "海报上是蝙蝠侠（Batman）和小丑（The Joker），片名是《黑暗骑士》（The Dark Knight）。"
    assert run_checks(_sample("conversation", "zh", ("海报上是谁？", answer))).passed


def test_brand_names_are_not_foreign_language() -> None:
    answer = "货架上有 Intel、AMD、NVIDIA、Kingston、Samsung 和 Logitech 的配件。"
    assert run_checks(_sample("conversation", "zh", ("货架上有哪些品牌？", answer))).passed


def test_english_prose_in_a_chinese_answer_still_fails() -> None:
    answer = "图中 there is a small dog sleeping on the sofa near the window。"
    assert "language.cjk_ratio" in run_checks(_sample("conversation", "zh", ("图中有什么？", answer))).reasons


# ------------------------------------------------------------------- refusals, filler and non-answers


@pytest.mark.parametrize(
    "text",
    ["很抱歉，这个流程图无法被转换为一段可以运行的代码。", "对不起，这张表格里的数字我没有办法逐一核对。"],
)
def test_an_apology_followed_by_an_inability_is_a_refusal(text: str) -> None:
    assert is_refusal(text)


def test_an_apology_without_an_inability_is_not_a_refusal() -> None:
    assert not is_refusal("抱歉让你久等了，图中是一家面馆，门口挂着红灯笼，不能错过它的招牌牛肉面。")


@pytest.mark.parametrize(
    "answers",
    [["图中是一家面馆，门口挂着红灯笼。希望这些信息对你有帮助！"], ["图中是一家面馆。如果你还有其他问题，请随时问我。"],
     ["The shop sells noodles. I hope this helps!"], ["Here's the poem. Let me know if you'd like any changes."]],
)
def test_chatbot_filler_is_meta_talk(answers: list[str]) -> None:
    assert is_meta_talk(answers)


def test_ordinary_words_near_filler_are_not_meta_talk() -> None:
    assert not is_meta_talk(["墙上写着“希望工程”四个字，旁边是一所小学。"])
    assert not is_meta_talk(["The sign says HOPE in big letters."])


@pytest.mark.parametrize("answer", ["模型放弃回答", "模型拒绝回答", "无法回溯", "Hello!"])
def test_placeholder_and_greeting_answers_are_non_answers(answer: str) -> None:
    assert is_non_answer(answer, CONFIG)


# ------------------------------------------------------------------------------------- degeneration


def test_undecodable_bytes_are_degeneration() -> None:
    sample = _sample("conversation", "en", ("Who is wearing red?", " \ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd"))
    assert "degeneration.repetition" in run_checks(sample).reasons


def test_a_numbered_list_of_the_same_sentence_is_degeneration() -> None:
    answer = ("1. What is the name of this river? 2. What is the name of this river? "
              "3. What is the name of this river? 4. What is the name of this river?")
    sample = _sample("detail", "en", ("Describe this image as detailed as possible.", answer))
    assert "degeneration.repetition" in run_checks(sample).reasons


# ------------------------------------------------------------------------------ the calibration set


def test_calibration_labels_and_provenance_agree() -> None:
    sources = json.loads((CALIBRATION / "sources.json").read_text(encoding="utf-8"))["sources"]
    labels = [json.loads(line) for line in (CALIBRATION / "labels.jsonl").read_text(encoding="utf-8").splitlines()]
    counts = Counter(row["source"] for row in labels)
    assert counts == {source["id"]: source["count"] for source in sources}
    for source in sources:
        assert len(source["commit"]) == 40 and source["repo"].count("/") == 1 and source["paths"]
        indices = sorted(row["index"] for row in labels if row["source"] == source["id"])
        assert indices == list(range(source["count"]))
    classes = {"refusal", "meta_talk", "degeneration", "wrong_language", "truncated", "off_task"}
    for row in labels:
        assert (row["label"], row["class"] in classes) in {("keep", False), ("reject", True)}, row
    by_language = Counter(source["language"] for source in sources for _ in range(source["count"]))
    assert by_language["zh"] >= 90 and by_language["en"] >= 90


# ------------------------------------------------------------------------------ the demo's samples


@pytest.mark.parametrize("language", ["zh", "en"])
def test_the_standins_clean_answers_pass_every_check(language: str) -> None:
    """The demo's samples come from the stand-in without injected faults: the calibrated checks keep
    them all (as v1 did), so the demo's QC pass count does not move with the calibration."""
    import dataclasses
    import hashlib
    import io
    import random

    from PIL import Image

    from tuwen.local.standin_vlm.answers import analyse_image, compose_answer
    from tuwen.synthesis.parsing import parse_answer
    from tuwen.synthesis.prompts import description_instruction

    rng = random.Random(17)
    judged = 0
    for i in range(40):
        image = Image.new("RGB", (rng.randint(200, 900), rng.randint(200, 900)),
                          tuple(rng.randrange(256) for _ in range(3)))
        for _ in range(5):
            x, y = rng.randrange(image.width), rng.randrange(image.height)
            image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + rng.randint(20, 300), y + rng.randint(20, 300)))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG")
        sha256 = hashlib.sha256(buffer.getvalue()).hexdigest()
        features = dataclasses.replace(analyse_image(buffer.getvalue(), sha256),
                                       text=rng.choice(["", "人民公园管理处", "EXIT 出口", "川味小馆 营业时间 9:00-21:00"]))
        for task in ("conversation", "complex_reasoning", "detail"):
            text = compose_answer(task, language, features, random.Random(i))
            instruction = description_instruction(sha256, language) if task == "detail" else ""
            parsed = parse_answer(task, language, text, instruction)
            assert parsed.ok, parsed.error
            verdict = run_checks(SampleForQC(task, language, parsed.conversations, "stop"))
            assert verdict.passed, (task, verdict.reasons, parsed.conversations)
            judged += 1
    assert judged == 120


# ----------------------------------------------------- off-task: an answer to some other question (checks v3)
# The v2 calibration missed these (docs/QUALITY.md): model answers that are fluent but do not answer what
# was asked. Each case is ours; each rule must hold in Chinese as in English.


@pytest.mark.parametrize(
    ("question", "answer", "language", "rule"),
    [
        ("站台上有几个人？", "站台上的人都穿着厚外套。", "zh", "count"),
        ("How many trophies did the captain lift?", "Lionel Messi.", "en", "count"),
        ("这只猫在睡觉吗？", "2019年拍摄于杭州。", "zh", "yes_no"),
        ("Did the ship reach the harbour?", "1997's Titanic.", "en", "yes_no"),
        ("门是什么颜色的？", "一扇木门。", "zh", "colour"),
        ("What colour is the kite?", "A kite over the beach.", "en", "colour"),
        ("哪个部门的员工工资最高？", "12,000。", "zh", "bare_number"),
        ("Which team won the match?", " 3,500. ", "en", "bare_number"),
        ("请把这张流程图写成一段 Python 代码。", "第一步烧水，第二步泡茶，第三步倒茶，第四步端上桌。", "zh", "no_code"),
        ("Can you turn this mock-up into an HTML page?", "1. Add a header. 2. Add a joke. 3. Add a footer.", "en", "no_code"),
        ("Explain why this cartoon is funny.", "a penguin in a business suit holding a briefcase", "en", "fragment"),
        ("What happened to the car?", "1998's Beetle.", "en", "fragment"),
        ("请为这款杯子写一段广告。", "我们可以为这款杯子写一段广告。", "zh", "echo"),
        ("We made these lamps. Can you help us write an advertisement?", "We can help you write an advertisement.",
         "en", "echo"),
        ("我的多肉植物怎么了？", "我的多肉叶子发黄了，已经养了三年。", "zh", "persona"),
        ("What is wrong with my bike?", "My bike has been parked outside for ten years.", "en", "persona"),
        ("Explain why this poster is funny.", "Monday morning is when I'm most tired.", "en", "persona"),
    ],
)
def test_an_answer_to_another_question_is_off_task(question: str, answer: str, language: str, rule: str) -> None:
    assert off_task_reason(question, answer, language, CONFIG) == rule
    assert "conversation.off_task" in run_checks(_sample("conversation", language, (question, answer))).reasons


@pytest.mark.parametrize(
    ("question", "answer", "language"),
    [
        ("图中有几个人？", "3", "zh"),
        ("桌上有几只杯子？", "桌上放着两只白色的瓷杯。", "zh"),
        ("How many people are on the bench?", "Just an old man feeding pigeons.", "en"),
        ("窗外在下雨吗？", "窗玻璃上挂满了水珠，地面湿漉漉的。", "zh"),  # restates: a yes, in other words
        ("图片左右两侧的颜色有区别吗？", "左侧和右侧都以灰色为主，亮度相近。", "zh"),
        ("这个人是骑摩托车还是自行车？", "摩托车。", "zh"),  # an alternative question, not a yes/no one
        ("Is the fisherman wearing a hat?", "Only a knitted headband.", "en"),
        ("Is the road busy?", "Cars are queuing at the lights.", "en"),  # no shared word, but a statement
        ("Do you have anything to say to the boy?", "I would tell him to hold the railing.", "en"),
        ("门是什么颜色的？", "深红色，门把手是铜的。", "zh"),
        ("Which year was the bridge opened?", "1932", "en"),  # a year is a number
        ("这块牌子写的是哪一年？", "1998年。", "zh"),
        ("Who is the man on the right?", "Yao Ming", "en"),
        ("请把这张流程图写成一段 Python 代码。", "def brew():\n    boil_water()\n    add_tea()", "zh"),
        ("How should I cook this?", "Boil the noodles for three minutes. Drain them. Add the sauce.", "en"),
        ("Can you read the flowchart and explain it?", "1. Boil water. 2. Add the tea bag. 3. Wait three minutes.", "en"),
        ("Describe this image.", "A young boy stands on a ledge looking out over the city.", "en"),
        ("What happened at the end of the film?", "The ship sank.", "en"),  # an irregular past is a verb
        ("请描述这张图片。", "一位老人坐在公园的长椅上喂鸽子，身后是一片金黄的银杏树。", "zh"),
        ("What do you think about my outfit?", "I'm impressed: your jacket matches the shoes.", "en"),  # asked
        ("Write a short poem in the voice of the cat.", "I am the queen of this sunny sill,\nmy naps are long.", "en"),
        ("Analyse the match and predict who will win.",
         "I'm not sure anyone can tell from one photo, but the team in red looks stronger in attack.", "en"),
    ],
)
def test_near_misses_of_off_task_pass(question: str, answer: str, language: str) -> None:
    assert off_task_reason(question, answer, language, CONFIG) is None
    assert "conversation.off_task" not in run_checks(_sample("conversation", language, (question, answer))).reasons


def test_a_chinese_noun_phrase_for_a_description_is_caught_by_the_length_floor() -> None:
    # Chinese verbs carry no mark a rule can see, so the fragment rule is English-only; a Chinese noun
    # phrase answering 描述 / 解释 is short, and the length floor of what was asked catches it.
    for question, answer in (("请描述这张图片。", "一只狼和一只羊。"), ("解释一下这张漫画为什么好笑。", "一只穿西装的企鹅")):
        assert "length.too_short" in run_checks(_sample("conversation", "zh", (question, answer))).reasons


# ------------------------------------------------------ degeneration: repeats a short answer hides (v3)


@pytest.mark.parametrize(
    ("answer", "language"),
    [
        ("It's a sunny beach, and it's also a nice place to read a book in the shade. "
         "It's a nice place to read a book in the shade.", "en"),
        ("图中是一条老街，也是一个适合周末散步的好地方。图中是一条老街，是一个适合周末散步的好地方。", "zh"),
    ],
)
def test_a_long_sentence_said_twice_is_degeneration(answer: str, language: str) -> None:
    sample = _sample("conversation", language, ("What is this place?" if language == "en" else "这是什么地方？", answer))
    assert "degeneration.repetition" in run_checks(sample).reasons


def test_parallel_sentences_and_a_refrain_are_not_degeneration() -> None:
    parallel = "左侧以绿色为主，两边亮度相近。上方以绿色为主，两边亮度相近。整体光线柔和，像是清晨拍摄的。"
    assert run_checks(_sample("detail", "zh", ("请描述这张图片。", parallel))).passed
    song = ("Verse:\nShe walks the pier in a yellow coat,\nCounting the gulls and the fishing boats.\n"
            "Chorus:\nOh the sea, the sea is calling me home tonight,\nVerse:\nThe nets are dry and the lamps are lit,\n"
            "Chorus:\nOh the sea, the sea is calling me home tonight.")
    assert run_checks(_sample("conversation", "en", ("Write a song about this picture.", song))).passed


@pytest.mark.parametrize("answer", ["1.a. 1.b. 1.c. 1.d. 1.e. 1.f.", "一、二、三、四、五、", "a) b) c) d)"])
def test_an_answer_of_list_labels_only_is_degeneration(answer: str) -> None:
    assert is_bare_enumeration(answer, CONFIG.loop_min_repeats)
    sample = _sample("conversation", "en", ("Answer question 2.b step by step.", answer))
    assert "degeneration.repetition" in run_checks(sample).reasons


@pytest.mark.parametrize("answer", ["2", "1. Flour. 2. Sugar. 3. Eggs. 4. Butter.", "第一、二、三层都是商铺。"])
def test_a_number_or_a_real_list_is_not_a_bare_enumeration(answer: str) -> None:
    assert not is_bare_enumeration(answer, CONFIG.loop_min_repeats)


# --------------------------------------------- truncation when nothing says why generation stopped (v3)


@pytest.mark.parametrize(
    ("answer", "language"),
    [
        ("1. Bring the water to a boil. 2. Add the rice. 3. Stir it once. 4. Cover the pot", "en"),
        ("首先把水烧开。然后放入面条。接着煮三分钟。最后把面条捞出来放进", "zh"),
        ("ecause the road is icy, the driver slows down. The car behind him does the same. "
         "Nobody wants to slide into the ditch.", "en"),  # lost its first letter
    ],
)
def test_an_answer_breaking_its_own_style_is_cut_when_finish_reason_is_unknown(answer: str, language: str) -> None:
    question = "How do I cook this?" if language == "en" else "这个怎么做？"
    assert cut_by_its_own_style(answer, CONFIG.truncation_min_sentences)
    assert "degeneration.truncated" in run_checks(_sample("conversation", language, (question, answer), finish=None)).reasons
    # finish_reason stop says the model ended there itself: the style alone is not enough.
    assert "degeneration.truncated" not in run_checks(_sample("conversation", language, (question, answer))).reasons


@pytest.mark.parametrize(
    "answer",
    ["The Marina Bay Sands is a hotel in Singapore. 2. It has a rooftop pool",  # one sentence before: no habit
     "主要有以下几点：\n1. 价格便宜\n2. 交通方便\n3. 环境安静",  # the list never used 。
     "iPhone 15 is on the table. It is blue. A charger lies next to it."],
)
def test_short_or_consistent_answers_are_not_cut_by_style(answer: str) -> None:
    assert not cut_by_its_own_style(answer, CONFIG.truncation_min_sentences)
