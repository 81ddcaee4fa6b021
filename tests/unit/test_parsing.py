"""Raw model answers → LLaVA conversations: the seed formats, hand-written malformed answers, properties."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuwen.synthesis.parsing import MAX_ANSWER_CHARS, ParseResult, parse_answer

DETAIL_INSTRUCTION = "请详细描述这张图片。"
PARSE_ERRORS = {"empty_answer", "refusal", "no_markers", "unbalanced_turns", "empty_turns", "invalid_characters",
                "answer_too_long"}
TASKS = ("conversation", "complex_reasoning", "detail")


def llava(*values: str) -> list[dict[str, str]]:
    """Expected conversation: alternating human/gpt values, <image> before the first question."""
    turns = []
    for index, value in enumerate(values):
        role = "human" if index % 2 == 0 else "gpt"
        turns.append({"from": role, "value": f"<image>\n{value}" if index == 0 else value})
    return turns


def parse(task_type: str, text: str, language: str = "zh") -> ParseResult:
    return parse_answer(task_type, language, text, DETAIL_INSTRUCTION if task_type == "detail" else "")


def assert_parsed(result: ParseResult, *values: str, notes: list[str] | None = None) -> None:
    assert result.error is None
    assert result.ok
    assert result.conversations == llava(*values)
    assert result.rounds == len(values) // 2
    assert result.notes == (notes or [])


def assert_rejected(result: ParseResult, error: str) -> None:
    assert not result.ok
    assert result.error == error
    assert result.conversations == []
    assert result.rounds == 0


# --- the seed prompts' own formats ---------------------------------------------------------------


def test_seed_conversation_format() -> None:
    text = (
        "用户:图中有几个人？\n\n助手:图中有三个人，两个站着，一个坐在长椅上。\n\n"
        "用户:他们在做什么？\n\n助手:站着的两人在交谈，坐着的人在看报纸。\n\n"
    )
    assert_parsed(
        parse("conversation", text),
        "图中有几个人？",
        "图中有三个人，两个站着，一个坐在长椅上。",
        "他们在做什么？",
        "站着的两人在交谈，坐着的人在看报纸。",
    )


def test_seed_conversation_format_five_rounds_with_multi_paragraph_answers() -> None:
    rounds = [(f"问题{i}是什么？", f"第一段回答{i}。\n\n第二段：补充说明{i}。") for i in range(1, 6)]
    text = "".join(f"用户:{q}\n\n助手:{a}\n\n" for q, a in rounds)
    result = parse("conversation", text)
    assert_parsed(result, *[value for pair in rounds for value in pair])
    assert result.rounds == 5


def test_seed_complex_reasoning_format() -> None:
    text = "问题:为什么这条街上的行人都打着伞？\n\n回答:从地面的积水和行人的衣着来看，刚刚下过雨，而且天空仍然阴沉。\n\n"
    assert_parsed(
        parse("complex_reasoning", text),
        "为什么这条街上的行人都打着伞？",
        "从地面的积水和行人的衣着来看，刚刚下过雨，而且天空仍然阴沉。",
    )


def test_seed_detail_format() -> None:
    text = "这张图片展示了一家面馆的门面。门口挂着红色招牌，上面写着“老王牛肉面”。\n\n门前停着两辆电动车。"
    assert_parsed(parse("detail", text), DETAIL_INSTRUCTION, text)


def test_model_copied_the_literal_backslash_n_of_the_format_line() -> None:
    text = r"用户:图里是什么动物？\n\n助手:是一只橘猫，路径写作C:\new。\n\n用户:它在哪里？\n\n助手:在窗台上。\n\n"
    assert_parsed(
        parse("conversation", text),
        "图里是什么动物？",
        r"是一只橘猫，路径写作C:\new。",
        "它在哪里？",
        "在窗台上。",
        notes=["unescaped_literal_newlines"],
    )


# --- malformed answers, written by hand ----------------------------------------------------------


def test_bold_markers_with_full_width_colons_inside() -> None:
    text = "**用户：** 图中的招牌写着什么？\n\n**助手：** 招牌上写着“**欢迎光临**”四个大字。"
    assert_parsed(parse("conversation", text), "图中的招牌写着什么？", "招牌上写着“**欢迎光临**”四个大字。")


def test_bold_markers_with_colon_outside() -> None:
    text = "**用户**：桌上有几个杯子？\n**助手**：桌上有两个白色的杯子。"
    assert_parsed(parse("conversation", text), "桌上有几个杯子？", "桌上有两个白色的杯子。")


def test_heading_markers_with_content_on_the_next_line() -> None:
    text = "### 用户:\n图片是在哪里拍的？\n\n### 助手:\n看起来是在一个地铁站里，墙上有线路图。\n"
    assert_parsed(parse("conversation", text), "图片是在哪里拍的？", "看起来是在一个地铁站里，墙上有线路图。")


def test_heading_markers_without_colon() -> None:
    text = "### 用户\n这是什么季节？\n\n### 助手\n树叶都变黄了，应该是秋天。"
    assert_parsed(parse("conversation", text), "这是什么季节？", "树叶都变黄了，应该是秋天。")


def test_preamble_is_dropped() -> None:
    text = "好的，以下是根据这张图片设计的对话：\n\n用户：图中有猫吗？\n助手：有，沙发上趴着一只黑猫。"
    assert_parsed(
        parse("conversation", text),
        "图中有猫吗？",
        "有，沙发上趴着一只黑猫。",
        notes=["dropped_preamble"],
    )


def test_trailing_note_after_separator_is_dropped() -> None:
    text = "用户：墙上贴着什么？\n助手：一张红色的春联。\n\n---\n\n注：以上对话均基于图片中可见的内容。"
    assert_parsed(
        parse("conversation", text),
        "墙上贴着什么？",
        "一张红色的春联。",
        notes=["dropped_trailing_note"],
    )


def test_trailing_summary_line_is_dropped() -> None:
    text = "问题：这家店为什么排长队？\n回答：招牌显示正在做开业促销，所以吸引了很多顾客。\n\n以上是根据图片设计的问题和回答。"
    assert_parsed(
        parse("complex_reasoning", text),
        "这家店为什么排长队？",
        "招牌显示正在做开业促销，所以吸引了很多顾客。",
        notes=["dropped_trailing_note"],
    )


def test_note_at_the_end_without_blank_line() -> None:
    text = "用户：路牌上写的是哪条路？\n助手：写的是“中山路”。\n注：路牌部分被树枝遮挡。"
    assert_parsed(
        parse("conversation", text),
        "路牌上写的是哪条路？",
        "写的是“中山路”。",
        notes=["dropped_trailing_note"],
    )


def test_advice_paragraph_in_the_middle_is_content() -> None:
    answer = "可以先关闭电源。\n\n注意：更换灯泡前要等灯泡冷却。\n\n然后再拧下旧灯泡。"
    text = f"问题：怎样安全地更换图中的灯泡？\n回答：{answer}"
    assert_parsed(parse("complex_reasoning", text), "怎样安全地更换图中的灯泡？", answer)


def test_an_answer_that_is_only_a_note_is_kept() -> None:
    text = "用户：图中的文字是什么意思？\n助手：注：这是古文，意思是“学而时习之”。"
    assert_parsed(parse("conversation", text), "图中的文字是什么意思？", "注：这是古文，意思是“学而时习之”。")


def test_more_than_five_rounds_keeps_the_first_five() -> None:
    pairs = [(f"第{i}个问题？", f"第{i}个回答。") for i in range(1, 8)]
    text = "\n".join(f"用户：{q}\n助手：{a}" for q, a in pairs)
    assert_parsed(
        parse("conversation", text),
        *[value for pair in pairs[:5] for value in pair],
        notes=["truncated_to_5_rounds"],
    )


def test_complex_reasoning_keeps_one_round() -> None:
    text = "问题：为什么地面是湿的？\n回答：刚下过雨。\n\n问题：行人为什么拿着伞？\n回答：因为还在下小雨。"
    assert_parsed(
        parse("complex_reasoning", text),
        "为什么地面是湿的？",
        "刚下过雨。",
        notes=["truncated_to_1_round"],
    )


def test_round_with_empty_answer_is_dropped() -> None:
    text = "用户：图中有几辆车？\n助手：三辆。\n用户：车是什么颜色？\n助手：\n用户：车停在哪里？\n助手：停在路边的停车位上。"
    assert_parsed(
        parse("conversation", text),
        "图中有几辆车？",
        "三辆。",
        "车停在哪里？",
        "停在路边的停车位上。",
        notes=["dropped_empty_round"],
    )


def test_unanswered_last_question_is_dropped() -> None:
    text = "用户：图中的人在做什么？\n助手：在放风筝。\n用户：风筝是什么形状的？"
    assert_parsed(
        parse("conversation", text),
        "图中的人在做什么？",
        "在放风筝。",
        notes=["dropped_unanswered_question"],
    )


def test_refusal_without_markers() -> None:
    assert_rejected(parse("conversation", "抱歉，我无法查看这张图片。"), "refusal")


def test_refusal_in_an_answer_rejects_the_sample() -> None:
    text = "用户：图中的人是谁？\n助手：作为一个AI助手，我无法识别真实人物的身份。"
    assert_rejected(parse("conversation", text), "refusal")


def test_refusal_in_a_later_round() -> None:
    text = "用户：图中有什么？\n助手：一座桥。\n用户：桥叫什么名字？\n助手：很抱歉，我无法确定这座桥的名字。"
    assert_rejected(parse("conversation", text), "refusal")


def test_answer_marker_word_inside_a_sentence_does_not_split() -> None:
    answer = "要回答这个问题，需要先看招牌。招牌上的回答：营业到晚上十点。\n回答问题的关键在于营业时间。"
    text = f"问题：这家店晚上九点还开着吗？\n回答：{answer}"
    assert_parsed(parse("complex_reasoning", text), "这家店晚上九点还开着吗？", answer)


def test_option_lines_in_a_chinese_answer_do_not_split() -> None:
    answer = "图中是一道选择题：\nA：北京\nB：上海\n正确答案是A。"
    text = f"问题：图中的题目应该选哪个？\n回答：{answer}"
    assert_parsed(parse("complex_reasoning", text), "图中的题目应该选哪个？", answer)


def test_short_question_answer_markers() -> None:
    text = "问：为什么这些树都向一边倾斜？\n答：这里常年刮西北风，树木长期受风力影响向东南方向倾斜。"
    assert_parsed(
        parse("complex_reasoning", text),
        "为什么这些树都向一边倾斜？",
        "这里常年刮西北风，树木长期受风力影响向东南方向倾斜。",
    )


def test_numbered_bold_markers() -> None:
    text = "**问题1：** 这个路口为什么设置了两个红绿灯？\n\n**回答1：** 因为这是一个五岔路口。"
    assert_parsed(
        parse("complex_reasoning", text), "这个路口为什么设置了两个红绿灯？", "因为这是一个五岔路口。"
    )


def test_answer_wrapped_in_a_code_fence() -> None:
    text = "```text\n用户:图中的时钟显示几点？\n\n助手:时钟显示下午三点十分。\n```"
    assert_parsed(parse("conversation", text), "图中的时钟显示几点？", "时钟显示下午三点十分。")


def test_bold_wrapping_the_whole_question_line() -> None:
    text = "**用户：图中是什么地方？**\n助手：这是杭州西湖的断桥。"
    assert_parsed(parse("conversation", text), "图中是什么地方？", "这是杭州西湖的断桥。")


def test_two_questions_in_a_row_are_merged() -> None:
    text = "用户：图中有几个人？\n用户：他们穿着什么颜色的衣服？\n助手：有两个人，都穿着蓝色校服。"
    assert_parsed(
        parse("conversation", text),
        "图中有几个人？\n\n他们穿着什么颜色的衣服？",
        "有两个人，都穿着蓝色校服。",
        notes=["merged_consecutive_turns"],
    )


def test_empty_marker_before_a_question_is_dropped() -> None:
    text = "用户：\n用户：图中的狗是什么品种？\n助手：看起来是一只柯基。"
    assert_parsed(
        parse("conversation", text),
        "图中的狗是什么品种？",
        "看起来是一只柯基。",
        notes=["dropped_empty_turn"],
    )


def test_answer_before_the_first_question_is_dropped() -> None:
    text = "助手：你好，我来描述这张图片。\n用户：图中有什么水果？\n助手：有苹果和香蕉。"
    assert_parsed(
        parse("conversation", text),
        "图中有什么水果？",
        "有苹果和香蕉。",
        notes=["dropped_leading_answer"],
    )


def test_marker_variants_ai_assistant_and_brackets() -> None:
    text = "【用户】：照片里的建筑有多少层？\n【AI助手】：大约有十二层。\n提问者：楼顶上有什么？\n视觉AI助手：楼顶上有一个水塔。"
    assert_parsed(
        parse("conversation", text),
        "照片里的建筑有多少层？",
        "大约有十二层。",
        "楼顶上有什么？",
        "楼顶上有一个水塔。",
    )


def test_blank_lines_and_round_headings_are_formatting() -> None:
    text = "### 第一轮\n\n**用户：**\n\n图中是什么节日？\n\n**助手：**\n\n春节，门上贴着福字。\n\n### 第二轮\n\n**用户：**\n\n有人在放鞭炮吗？\n\n**助手：**\n\n没有看到放鞭炮的人。"
    assert_parsed(
        parse("conversation", text),
        "图中是什么节日？",
        "春节，门上贴着福字。",
        "有人在放鞭炮吗？",
        "没有看到放鞭炮的人。",
    )


def test_image_token_written_by_the_model_is_removed() -> None:
    text = "用户：<image>\n图中有几盏灯？\n助手：有四盏灯。"
    assert_parsed(parse("conversation", text), "图中有几盏灯？", "有四盏灯。", notes=["removed_image_token"])


def test_no_markers() -> None:
    assert_rejected(parse("conversation", "图中有一只猫在睡觉，旁边有一个毛线球。"), "no_markers")


def test_empty_answer() -> None:
    assert_rejected(parse("conversation", ""), "empty_answer")
    assert_rejected(parse("complex_reasoning", "  \n\n "), "empty_answer")
    assert_rejected(parse("detail", "\n"), "empty_answer")


def test_only_questions() -> None:
    result = parse("conversation", "用户：图中有什么？\n用户：是什么颜色？")
    assert_rejected(result, "unbalanced_turns")
    assert result.notes == ["merged_consecutive_turns", "dropped_unanswered_question"]


def test_every_round_empty() -> None:
    assert_rejected(parse("conversation", "用户：\n助手：好的。\n用户：图中有什么？\n助手："), "empty_turns")


def test_detail_with_preamble_and_trailing_note() -> None:
    text = "好的，以下是对这张图片的详细描述：\n\n画面中央是一座**红色**的寺庙，屋檐下挂着三盏灯笼。\n\n注：部分文字因分辨率较低无法辨认。"
    assert_parsed(
        parse("detail", text),
        DETAIL_INSTRUCTION,
        "画面中央是一座**红色**的寺庙，屋檐下挂着三盏灯笼。",
        notes=["dropped_preamble", "dropped_trailing_note"],
    )


def test_detail_keeps_a_content_lead_in() -> None:
    text = "这是一张街景照片，包括以下元素：\n1. 一辆公交车\n2. 两个行人"
    assert_parsed(parse("detail", text), DETAIL_INSTRUCTION, text)


def test_detail_refusal_and_empty_after_preamble() -> None:
    assert_rejected(parse("detail", "抱歉，我无法描述这张图片。"), "refusal")
    assert_rejected(parse("detail", "好的，"), "empty_answer")


def test_detail_instruction_gets_the_image_token_once() -> None:
    result = parse_answer("detail", "zh", "一只白色的狗。", "<image>\n请描述这张图片。")
    assert result.conversations[0] == {"from": "human", "value": "<image>\n请描述这张图片。"}


def test_english_conversation() -> None:
    text = "Sure, here is the conversation:\n\n**User:** What is on the table?\n\n**Assistant:** A laptop and a cup of **green** tea."
    assert_parsed(
        parse("conversation", text, "en"),
        "What is on the table?",
        "A laptop and a cup of **green** tea.",
        notes=["dropped_preamble"],
    )


def test_english_reasoning_and_refusal() -> None:
    assert_parsed(
        parse(
            "complex_reasoning",
            "Q: Why is the road closed?\nA: The sign says there is construction ahead.",
            "en",
        ),
        "Why is the road closed?",
        "The sign says there is construction ahead.",
    )
    assert_rejected(parse("complex_reasoning", "I'm sorry, but I can't help with that.", "en"), "refusal")
    assert_rejected(
        parse("conversation", "User: Who is this?\nAssistant: As an AI, I cannot identify people.", "en"),
        "refusal",
    )


def test_english_detail_preamble() -> None:
    text = "Certainly! Here is a detailed description of the image:\nA red bus is parked beside a bakery."
    result = parse_answer("detail", "en", text, "Describe the following image in detail.")
    assert result.conversations == [
        {"from": "human", "value": "<image>\nDescribe the following image in detail."},
        {"from": "gpt", "value": "A red bus is parked beside a bakery."},
    ]
    assert result.notes == ["dropped_preamble"]


@pytest.mark.parametrize(
    ("task_type", "language", "instruction", "message"),
    [
        ("caption", "zh", "", "unknown task type"),
        ("conversation", "fr", "", "unknown language"),
        ("detail", "zh", " ", "needs instruction_for_detail"),
    ],
)
def test_caller_errors_raise(task_type: str, language: str, instruction: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_answer(task_type, language, "用户：你好\n助手：你好", instruction)


# --- properties ----------------------------------------------------------------------------------

# Content is built from words that can never look like a marker, a note, a preamble or a refusal,
# so the expected conversation is exactly the generated pairs.
ZH_WORDS = ["图片", "中间", "两只", "小猫", "红色", "汽车", "停在", "路边", "招牌", "上面", "写着", "欢迎光临",
            "天空", "蓝色", "行人", "正在", "过马路", "左侧", "右侧", "商店", "门口", "三个", "孩子", "玩耍"]  # fmt: skip
EN_WORDS = ["the", "image", "shows", "red", "car", "parked", "near", "tree", "two", "people", "walking",
            "street", "sign", "reads", "welcome", "building", "blue", "sky", "left", "right"]  # fmt: skip
LABELS = {
    ("conversation", "zh"): (["用户", "提问者", "User"], ["助手", "AI助手", "Assistant"]),
    ("conversation", "en"): (["User", "Human", "user"], ["Assistant", "AI", "AI Assistant"]),
    ("complex_reasoning", "zh"): (["问题", "问"], ["回答", "答"]),
    ("complex_reasoning", "en"): (["Question", "Q"], ["Answer", "A"]),
}
MARKER_STYLES = [
    "{}:", "{}：", "{}: ", "{} ：", "**{}：**", "**{}:** ", "**{}**：", "**{}**: ", "### {}:", "## {}：\n",
    "【{}】：", "- **{}：** ", "**{}：**\n", "### {}\n", "**{}**\n", "{}：\n\n", "{}2：", "**{}1:**",
]  # fmt: skip
SEPARATORS = ["\n", "\n\n", "\n\n\n", "\n\n---\n\n", "\n\n### 第{}轮\n\n", "\n\n**Round {}**\n\n"]
PREAMBLES = {
    "zh": ["", "好的，以下是根据图片设计的内容：\n\n"],
    "en": ["", "Sure, here is the conversation:\n\n"],
}
TRAILERS = {
    "zh": [
        "",
        "\n\n注：以上内容基于图片。",
        "\n\n---\n\n以上是根据图片生成的问答。",
        "\n\n希望以上内容对你有帮助！",
    ],
    "en": ["", "\n\nNote: this is based on the image.", "\n\nI hope this helps!"],
}


@st.composite
def content(draw: st.DrawFn, language: str) -> str:
    words, joiner = (ZH_WORDS, "") if language == "zh" else (EN_WORDS, " ")
    end_marks = ["。", "？", "！", ""] if language == "zh" else [".", "?", "!", ""]

    def line() -> str:
        text = joiner.join(draw(st.lists(st.sampled_from(words), min_size=1, max_size=8)))
        if draw(st.booleans()) and len(text) > 1:
            cut = draw(st.integers(1, len(text) - 1))
            text = f"{text[:cut]}**{text[cut:]}**"  # bold inside the content is kept
        return text + draw(st.sampled_from(end_marks))

    lines = [line() for _ in range(draw(st.integers(1, 3)))]
    return "".join(line + draw(st.sampled_from(["\n", "\n\n"])) for line in lines[:-1]) + lines[-1]


@st.composite
def rendered_answer(draw: st.DrawFn, task_type: str, language: str) -> tuple[str, list[tuple[str, str]]]:
    pairs = draw(st.lists(st.tuples(content(language), content(language)), min_size=1, max_size=8))
    human_labels, gpt_labels = LABELS[(task_type, language)]
    parts = []
    for index, (question, answer) in enumerate(pairs):
        if index:
            parts.append(draw(st.sampled_from(SEPARATORS)).format(index + 1))
        parts.append(
            draw(st.sampled_from(MARKER_STYLES)).format(draw(st.sampled_from(human_labels))) + question
        )
        parts.append(draw(st.sampled_from(["\n", "\n\n"])))
        parts.append(draw(st.sampled_from(MARKER_STYLES)).format(draw(st.sampled_from(gpt_labels))) + answer)
    text = (
        draw(st.sampled_from(PREAMBLES[language]))
        + "".join(parts)
        + draw(st.sampled_from(TRAILERS[language]))
    )
    if draw(st.booleans()):
        text = f"```text\n{text}\n```"
    return text, pairs


def check_llava_shape(result: ParseResult) -> None:
    roles = [turn["from"] for turn in result.conversations]
    assert roles == ["human", "gpt"] * result.rounds
    whole = "".join(turn["value"] for turn in result.conversations)
    assert whole.count("<image>") == 1
    assert result.conversations[0]["value"].startswith("<image>\n")


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    task_type=st.sampled_from(["conversation", "complex_reasoning"]),
    language=st.sampled_from(["zh", "en"]),
)
def test_parser_recovers_the_rendered_pairs(data: st.DataObject, task_type: str, language: str) -> None:
    text, pairs = data.draw(rendered_answer(task_type, language))
    result = parse_answer(task_type, language, text, "")
    limit = 5 if task_type == "conversation" else 1
    expected = pairs[:limit]
    assert result.ok, (result.error, result.notes)
    assert result.rounds == len(expected)
    assert result.conversations == llava(*[value for pair in expected for value in pair])
    assert ("truncated_to_5_rounds" in result.notes or "truncated_to_1_round" in result.notes) == (
        len(pairs) > limit
    )
    check_llava_shape(result)


@settings(max_examples=200, deadline=None)
@given(
    task_type=st.sampled_from(["conversation", "complex_reasoning", "detail"]),
    language=st.sampled_from(["zh", "en"]),
    text=st.text(max_size=400),
)
def test_any_text_gives_a_valid_conversation_or_a_reason(task_type: str, language: str, text: str) -> None:
    result = parse_answer(task_type, language, text, "请描述这张图片。")
    if result.ok:
        assert result.error is None
        assert 1 <= result.rounds <= (5 if task_type == "conversation" else 1)
        assert all(turn["value"].strip() for turn in result.conversations)
        check_llava_shape(result)
    else:
        assert result.error in PARSE_ERRORS
        assert result.conversations == []


@settings(max_examples=100, deadline=None)
@given(data=st.data(), language=st.sampled_from(["zh", "en"]))
def test_parsing_is_deterministic(data: st.DataObject, language: str) -> None:
    text, _ = data.draw(rendered_answer("conversation", language))
    assert parse_answer("conversation", language, text, "") == parse_answer(
        "conversation", language, text, ""
    )


# --- hostile answers: bounded time, a reason on the item -----------------------------------------

# Shapes that made a pattern backtrack over a run of blanks (the trailing-note pattern was cubic:
# 800 blanks and one letter took seconds, 8,000 most of an hour), for each pattern that reads blanks.
BLANK_RUNS = [
    " " * 6000 + "x",
    "用户：你好\n助手：好的\n\n" + " " * 6000 + "x",
    "\t " * 3000 + "注",
    "以下是描述：" + " " * 6000 + "x",
    "\\n" * 3000 + "x",
    " \\n" * 3000 + "x",
    "- " * 3000 + "x",
    "第" + " " * 6000 + "x",
    "**" + " " * 6000 + "用户",
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", BLANK_RUNS, ids=range(len(BLANK_RUNS)))
@pytest.mark.parametrize("task_type", TASKS)
def test_long_runs_of_blanks_parse_in_linear_time(task_type: str, text: str) -> None:
    started = time.perf_counter()
    for language in ("zh", "en"):
        result = parse_answer(task_type, language, text, DETAIL_INSTRUCTION)
        assert result.ok or result.error in PARSE_ERRORS
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("bad", ["\x00", "\ud800", "\udfff", "a\udc80b"])
@pytest.mark.parametrize("task_type", TASKS)
def test_nul_or_a_lone_surrogate_is_refused_with_a_reason(task_type: str, bad: str) -> None:
    text = f"用户：这是什么？{bad}\n助手：一张图片。" if task_type != "detail" else f"一张图片{bad}。"
    result = parse(task_type, text.replace("用户", "问题").replace("助手", "回答") if task_type == "complex_reasoning"
                   else text)
    assert not result.ok and result.error == "invalid_characters" and result.conversations == []


def test_an_answer_over_the_cap_is_refused_before_any_pattern_reads_it() -> None:
    answer = "用户：这是什么？\n助手：" + "很长的回答。" * (MAX_ANSWER_CHARS // 6)
    assert len(answer) > MAX_ANSWER_CHARS
    assert parse("conversation", answer).error == "answer_too_long"
    assert parse("conversation", answer[:MAX_ANSWER_CHARS]).ok  # at the cap it is still an answer


# Pieces of answers that exercise every pattern: markers in each dress, blanks, literal \n, notes,
# headings, fences, refusals, and characters no store takes.
HOSTILE_PIECES = st.sampled_from([
    "用户：", "助手：", "**用户**：", "## 助手", "【问题】", "回答:", "User:", "Assistant:", "Q:", "A:", "> ", "- ",
    "\n", "\n\n", "\r", " ", "  ", "\t", "\u3000", "\\n", "注：", "以上是", "好的，", "以下是描述：", "Note:", "---",
    "```", "第一轮", "Round 1", "**", "__", "抱歉，我无法", "I'm sorry, but I can't", "<image>", "你好", "x", "\x00",
    "\ud800",
])


@pytest.mark.timeout(120)
@settings(max_examples=150, deadline=None)
@given(task_type=st.sampled_from(TASKS), language=st.sampled_from(["zh", "en"]),
       pieces=st.lists(HOSTILE_PIECES, max_size=60), blanks=st.integers(0, 4000), where=st.integers(0, 60))
def test_fuzzed_hostile_answers_never_raise_and_parse_in_bounded_time(
        task_type: str, language: str, pieces: list[str], blanks: int, where: int) -> None:
    pieces.insert(min(where, len(pieces)), " " * blanks)  # one long run of blanks somewhere
    text = "".join(pieces)
    started = time.perf_counter()
    result = parse_answer(task_type, language, text, DETAIL_INSTRUCTION)
    assert time.perf_counter() - started < 0.5
    if result.ok:
        check_llava_shape(result)
    else:
        assert result.error in PARSE_ERRORS and result.conversations == []
