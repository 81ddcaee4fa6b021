"""Prompt files as versioned data, and the description task's human instructions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuwen.config import REPO_ROOT
from tuwen.domain import TASK_TYPES
from tuwen.synthesis.prompts import (
    DETAIL_INSTRUCTIONS,
    LANGUAGES,
    Prompt,
    PromptError,
    description_instruction,
    get_prompt,
    load_prompt_file,
    load_prompts,
)

PROMPTS_DIR = REPO_ROOT / "prompts"

# The seed card's three prompts (llava-instruct-zh-600k), copied from between its ```text fences.
# "\\n" is a literal backslash-n: the card's format lines contain those two characters, not newlines.
SEED_CONVERSATION_ZH = (
    "设计一个你和一个询问这张照片的人之间的对话。答案应该是视觉AI助手看到图像并回答问题的语气。\n"
    "你需要提出不同的问题并给出相应的答案。问题可以包括询问图像视觉内容的问题,包括对象类型、对象计数、"
    "对象动作、对象位置、对象之间的相对位置等。必须是有明确答案的问题,即\n"
    "(1) 人们可以在图像中明确看到问题所问的内容,并且可以自信地回答;\n"
    "(2) 人们可以从图像中肯定地确定它不在图像中。\n"
    "问题还可以包括与图像中的内容相关的复杂问题,例如,询问图像中对象的背景知识,要求讨论图像中发生的事件等。"
    "同样,不要问不确定的细节。\n"
    "在回答复杂问题时要提供详细的答案。例如,给出详细的例子或推理步骤,使内容更具说服力和组织性。"
    "如有必要,您可以包含多个段落。最多不超过5轮对话。\n"
    "以 用户:...\\n\\n助手:...\\n\\n用户:...\\n\\n助手:...\\n\\n 的格式返回。"
)
SEED_COMPLEX_REASONING_ZH = (
    "设计一个关于这张照片的问题,并提供详细的答案。必须是除了描述场景以外的复杂问题。\n"
    "要回答这些问题,首先需要理解视觉内容,然后根据背景知识进行推理,来解释事情为什么会这样发生,"
    "或者为用户的请求提供指导和帮助。你可以通过不在问题中包含视觉内容的细节来使问题具有挑战性,"
    "这样回答问题时必须先根据视觉内容进行推理。\n"
    "以 问题:...\\n\\n回答:...\\n\\n 的格式返回。"
)
SEED_DETAIL_ZH = (
    "详细描述这张照片的场景。包括对象计数、对象位置、对象之间的相对位置等详细信息。\n"
    "当图片中存在文字时,需要将文字提取出来进行描述。描述应尽可能全面,尽量覆盖所有对象。"
)


@pytest.fixture(scope="module")
def prompts() -> dict[str, Prompt]:
    return load_prompts(PROMPTS_DIR)


def test_version_1_zh_is_the_seed_prompts_verbatim(prompts: dict[str, Prompt]) -> None:
    assert prompts["conversation.zh.v1"].text == SEED_CONVERSATION_ZH
    assert prompts["complex_reasoning.zh.v1"].text == SEED_COMPLEX_REASONING_ZH
    assert prompts["detail.zh.v1"].text == SEED_DETAIL_ZH


def test_seed_format_lines_keep_literal_backslash_n(prompts: dict[str, Prompt]) -> None:
    conversation = prompts["conversation.zh.v1"].text
    assert conversation.endswith("以 用户:...\\n\\n助手:...\\n\\n用户:...\\n\\n助手:...\\n\\n 的格式返回。")
    assert conversation.count("\\n") == 8
    assert conversation.count("\n") == 6  # real line breaks: the card's seven lines
    assert prompts["complex_reasoning.zh.v1"].text.endswith("以 问题:...\\n\\n回答:...\\n\\n 的格式返回。")


def test_english_version_1_mirrors_the_chinese_format_lines(prompts: dict[str, Prompt]) -> None:
    conversation = prompts["conversation.en.v1"].text
    assert conversation.startswith("Design a conversation between you and a person asking about this photo.")
    assert conversation.endswith(
        "Return in the format: User: ...\\n\\nAssistant: ...\\n\\nUser: ...\\n\\nAssistant: ...\\n\\n"
    )
    assert prompts["complex_reasoning.en.v1"].text.endswith(
        "Return in the format: Question: ...\\n\\nAnswer: ...\\n\\n"
    )
    assert prompts["detail.en.v1"].text.startswith("Describe the scene in this photo in detail.")
    for prompt in prompts.values():
        assert "text\n" not in prompt.text[:5], "the card's leftover fence label must not leak into a prompt"


def test_every_task_and_language_has_version_1(prompts: dict[str, Prompt]) -> None:
    for task_type in TASK_TYPES:
        for language in LANGUAGES:
            prompt = prompts[f"{task_type}.{language}.v1"]
            assert (prompt.task_type, prompt.language, prompt.version) == (task_type, language, 1)
            assert prompt.sha256 == hashlib.sha256(prompt.text.encode("utf-8")).hexdigest()
            assert prompt.source.startswith("llava-instruct-zh-600k dataset card")
            assert prompt.text == prompt.text.strip("\n")


def test_get_prompt_defaults_to_latest_version(tmp_path: Path) -> None:
    (tmp_path / "detail.zh.v1.txt").write_text("第一版\n", encoding="utf-8")
    (tmp_path / "detail.zh.v2.txt").write_text("---\nsource: test\n---\n第二版\n", encoding="utf-8")
    (tmp_path / "detail.zh.v10.txt").write_text("第十版", encoding="utf-8")
    (tmp_path / "README.md").write_text("not a prompt", encoding="utf-8")

    assert get_prompt("detail", "zh", prompts_dir=tmp_path).text == "第十版"
    assert get_prompt("detail", "zh", prompts_dir=tmp_path).id == "detail.zh.v10"
    second = get_prompt("detail", "zh", version=2, prompts_dir=tmp_path)
    assert (second.text, second.source, second.version) == ("第二版", "test", 2)


def test_get_prompt_reads_the_repository_prompts_by_default() -> None:
    assert get_prompt("conversation", "zh", version=1).text == SEED_CONVERSATION_ZH


@pytest.mark.parametrize(
    ("task_type", "language", "version", "message"),
    [
        ("captioning", "zh", None, "unknown task type 'captioning'"),
        ("detail", "fr", None, "unknown language 'fr'"),
        ("detail", "zh", 99, "no version 99 of the 'detail' prompt in 'zh'; available: v1"),
    ],
)
def test_get_prompt_says_what_is_unknown(
    task_type: str, language: str, version: int | None, message: str
) -> None:
    with pytest.raises(PromptError, match=message.replace("(", r"\(")):
        get_prompt(task_type, language, version=version, prompts_dir=PROMPTS_DIR)


def test_get_prompt_when_a_language_has_no_file(tmp_path: Path) -> None:
    (tmp_path / "detail.zh.v1.txt").write_text("描述", encoding="utf-8")
    with pytest.raises(PromptError, match="no prompt for task 'detail' in language 'en'"):
        get_prompt("detail", "en", prompts_dir=tmp_path)


@pytest.mark.parametrize(
    ("file_name", "content", "message"),
    [
        ("detail.zh.txt", "x", "named <task_type>.<language>.v<N>.txt"),
        ("detail.zh.v0.txt", "x", "named <task_type>.<language>.v<N>.txt"),
        ("captions.zh.v1.txt", "x", "unknown task type 'captions'"),
        ("detail.fr.v1.txt", "x", "unknown language 'fr'"),
        ("detail.zh.v1.txt", "\n\n", "the prompt text is empty"),
        ("detail.zh.v1.txt", "---\nsource: x\n描述", "never closed"),
        ("detail.zh.v1.txt", "---\nversion: 2\n---\n描述", "unknown front matter keys"),
        ("detail.zh.v1.txt", "---\n- a list\n---\n描述", "must be a YAML mapping"),
    ],
)
def test_malformed_prompt_files_are_rejected(
    tmp_path: Path, file_name: str, content: str, message: str
) -> None:
    path = tmp_path / file_name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PromptError, match=message.replace("<", ".").replace(">", ".")):
        load_prompt_file(path)
    with pytest.raises(PromptError):
        load_prompts(tmp_path)


def test_missing_prompts_directory(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="does not exist"):
        load_prompts(tmp_path / "nowhere")


def test_prompt_text_keeps_inner_whitespace(tmp_path: Path) -> None:
    (tmp_path / "detail.en.v3.txt").write_text("\nline one  \n\n  line two\n\n", encoding="utf-8")
    assert load_prompt_file(tmp_path / "detail.en.v3.txt").text == "line one  \n\n  line two"


def test_detail_instruction_lists() -> None:
    for language in LANGUAGES:
        instructions = DETAIL_INSTRUCTIONS[language]
        assert len(instructions) >= 10
        assert len(set(instructions)) == len(instructions)
        assert all(text == text.strip() and "<image>" not in text for text in instructions)
    assert "请详细描述这张图片。" in DETAIL_INSTRUCTIONS["zh"]
    assert "Describe the following image in detail." in DETAIL_INSTRUCTIONS["en"]


@given(image_key=st.text(min_size=1, max_size=80), language=st.sampled_from(LANGUAGES))
def test_description_instruction_is_deterministic(image_key: str, language: str) -> None:
    chosen = description_instruction(image_key, language)
    assert chosen in DETAIL_INSTRUCTIONS[language]
    assert description_instruction(image_key, language) == chosen


def test_description_instruction_uses_the_whole_list() -> None:
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]
    for language in LANGUAGES:
        used = {description_instruction(key, language) for key in keys}
        assert used == set(DETAIL_INSTRUCTIONS[language])


def test_description_instruction_unknown_language() -> None:
    with pytest.raises(PromptError, match="unknown language 'fr'"):
        description_instruction("abc", "fr")
