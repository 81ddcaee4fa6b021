"""Per-sample quality checks for generated LLaVA samples.

`run_checks(sample, config)` runs every check in `CHECKS` and returns a `SampleVerdict`: passed, the
failing reasons (stable names, the keys of `CHECKS`) and a few metrics. The gate runs this over every
sample of a partition (640k in the seed-sized release), so the code favours C-level work (compiled
regexes with literal prefixes, `str` methods, byte counts) over Python loops per character; its cost is
measured by `python -m bench qc` (docs/BENCHMARKS.md).

Quoted spans (“…”, 「…」, 《…》, "…") are treated as evidence copied from the image, not as the model's own
language: a Traditional-Chinese shop sign or an English slogan quoted inside a Simplified answer is
correct, so the language checks look at the text outside quotes, and the grounding check looks at the
quotes themselves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from tuwen.curate.personal_data import personal_data_kinds
from tuwen.domain import IMAGE_TOKEN, LANGUAGES

# Bump when a check's logic or a default threshold changes, so qc_run rows and dataset cards say which
# rules judged a sample. v2: the checks calibrated on real public data (docs/QUALITY.md). v3: answers that
# do not answer their question (conversation.off_task), repeated long sentences, bare enumerations and,
# when finish_reason is unknown, cuts seen from the answer's own punctuation and capitals; and the
# faithfulness judge's verdict (faithfulness.judge), which passes every sample the judge has not judged;
# answers that repeat personal data (privacy.personal_data, the curation stage's rules).
QC_CHECKS_VERSION = 3


@dataclass(frozen=True)
class SampleForQC:
    """What the checks need to know about one sample (no ids, no database rows)."""

    task_type: str
    language: str
    conversations: Sequence[Mapping[str, Any]]
    finish_reason: str | None = None
    ocr_text: str | None = None  # None: OCR did not run; "": it ran and found no text
    # The faithfulness judge's verdict (its latest succeeded judgement): statements the image
    # contradicts. None: the judge has not judged the sample, which passes `faithfulness.judge`.
    judge_contradicted: int | None = None


@dataclass
class SampleVerdict:
    passed: bool
    reasons: list[str]
    metrics: dict[str, float]


def _rounds_by_task() -> dict[str, tuple[int, int]]:
    return {"conversation": (1, 5), "complex_reasoning": (1, 1), "detail": (1, 1)}


def _min_round_chars_by_kind() -> dict[str, int]:
    return {"closed": 0, "open": 12, "generative": 20, "detailed": 30}


def _min_round_chars_by_task() -> dict[str, int]:
    return {"conversation": 0, "complex_reasoning": 40, "detail": 12}


def _max_answer_chars() -> dict[str, int]:
    return {"conversation": 5000, "complex_reasoning": 3500, "detail": 3500}


@dataclass(frozen=True)
class QCConfig:
    """Thresholds of the checks. Character counts are for Chinese; English ones are scaled by
    `en_length_factor` because an English answer takes about three times the characters."""

    rounds_by_task: Mapping[str, tuple[int, int]] = field(default_factory=_rounds_by_task)
    # language
    zh_min_cjk_ratio: float = 0.6
    zh_max_traditional_share: float = 0.05
    zh_min_traditional_chars: int = 3
    zh_max_latin_run_words: int = 5
    max_foreign_script_chars: int = 2
    en_max_cjk_share: float = 0.15
    # degeneration
    max_duplicate_sentence_ratio: float = 0.3
    min_sentences_for_duplicate_ratio: int = 4
    min_sentence_chars: int = 6
    loop_window_chars: int = 240
    loop_max_unit_chars: int = 40
    loop_min_repeats: int = 4
    loop_min_span_chars: int = 30
    # A sentence this long (Chinese characters; English ×en_length_factor) said twice, whole or as the end
    # of an earlier sentence, is a loop even in a two-sentence answer (the duplicate ratio needs four).
    min_repeated_sentence_chars: int = 12
    # With finish_reason unknown (imported data), an answer of at least this many sentences that ends
    # (or starts) unlike all its other sentences — no terminal punctuation, a lower-case first word — was
    # cut. Weak evidence, so it needs the answer's own habit to compare with; `stop` / `length` overrule it.
    truncation_min_sentences: int = 3
    # Each answer is held to what its own question asks (see `question_kind`) and to its task: a yes/no or
    # a count may be one character, a reasoning answer may not. Calibrated on real data (docs/QUALITY.md).
    min_round_chars_by_kind: Mapping[str, int] = field(default_factory=_min_round_chars_by_kind)
    min_round_chars_by_task: Mapping[str, int] = field(default_factory=_min_round_chars_by_task)
    # An open request answered in fewer characters than half the request itself is not an answer.
    min_answer_to_question_ratio: float = 0.5
    max_answer_chars: Mapping[str, int] = field(default_factory=_max_answer_chars)
    en_length_factor: float = 3.0
    # conversation
    duplicate_question_jaccard: float = 0.7
    non_answer_max_chars: int = 8
    # off_task: a closed question (a count, yes/no, a colour, a person or thing) answered in at most this
    # many characters (English ×en_length_factor) must carry what was asked for; a longer answer says more
    # than its first words, and a reader, not a rule, judges whether it addresses the question.
    off_task_max_answer_chars: int = 30
    # An answer to a request (open / generative / detailed) whose content words come from the request
    # itself at least this share restates the request instead of answering it (needs 3+ content words).
    off_task_echo_share: float = 0.8
    # grounding
    ocr_min_cjk_chars: int = 4
    ocr_min_coverage: float = 0.3
    ocr_max_segments: int = 12
    ocr_segment_match: float = 0.5
    quote_seen_share: float = 0.6
    max_ungrounded_quote_share: float = 0.5
    quote_requires_cue: bool = True
    # faithfulness: a judged sample fails when at least this many of its statements are contradicted
    judge_max_contradicted: int = 1
    # privacy: answers that repeat a phone or ID number, an e-mail address or a plate fail
    reject_personal_data: bool = True


@dataclass(frozen=True)
class CheckSpec:
    """One rule as the dataset card and qc_run describe it; `thresholds` name QCConfig fields."""

    name: str
    version: int
    description: str
    thresholds: tuple[str, ...] = ()


_SPECS = (
    CheckSpec(
        "structure.task_type", 1, "task type is one of the configured task types and language is zh or en"
    ),
    CheckSpec(
        "structure.roles", 1, "roles are only human/gpt, human first, strictly alternating, ending on gpt"
    ),
    CheckSpec(
        "structure.image_placeholder", 1, "exactly one <image> in the sample, inside the first human turn"
    ),
    CheckSpec(
        "structure.rounds", 1, "number of human/gpt rounds within the task's range", ("rounds_by_task",)
    ),
    CheckSpec("structure.empty_turn", 1, "no turn is empty (after removing <image>)"),
    CheckSpec(
        "language.cjk_ratio",
        2,
        "zh: share of CJK characters among letters in the answers is high enough; quotes, bracketed glosses "
        "(蝙蝠侠（Batman）) and capitalised names (Intel, iPhone) are not the model's own language",
        ("zh_min_cjk_ratio",),
    ),
    CheckSpec(
        "language.traditional",
        1,
        "zh: Traditional-only characters (OpenCC t2s changes them) outside quotes stay rare",
        ("zh_max_traditional_share", "zh_min_traditional_chars"),
    ),
    CheckSpec(
        "language.foreign_leakage",
        1,
        "zh: no run of English words longer than allowed and no kana/hangul/Cyrillic/Thai/Arabic outside quotes",
        ("zh_max_latin_run_words", "max_foreign_script_chars"),
    ),
    CheckSpec(
        "language.cjk_leakage",
        1,
        "en: share of CJK characters among letters in the answers (outside quotes) stays small",
        ("en_max_cjk_share",),
    ),
    CheckSpec(
        "refusal",
        2,
        "no refusal or AI self-reference (作为AI…, 我无法查看图片, 很抱歉，…无法…, As an AI…, I cannot see the image)",
    ),
    CheckSpec(
        "meta_talk",
        2,
        "answers talk about the image, not the prompt or the chat (根据你的要求, 以下是设计的对话, 按照格式, leftover "
        "用户：/助手： markers, chatbot filler: 希望对你有帮助, 如果你还有其他问题, I hope this helps)",
    ),
    CheckSpec(
        "degeneration.repetition",
        3,
        "no repeated sentences/lines beyond the ratio (list numbers ignored, zh and en sentences), no long sentence "
        "said twice (whole or as the end of an earlier one), no looping tail (a unit repeated to the end), no answer "
        "made only of list labels (1.a. 1.b. …), no undecodable bytes (U+FFFD)",
        (
            "max_duplicate_sentence_ratio",
            "min_sentences_for_duplicate_ratio",
            "min_sentence_chars",
            "min_repeated_sentence_chars",
            "loop_min_repeats",
            "loop_min_span_chars",
        ),
    ),
    CheckSpec(
        "degeneration.truncated",
        3,
        "finish_reason is not 'length'; whatever the finish_reason, no answer stops on an unfinished marker "
        "(a comma, colon or opening bracket, a dangling 和/以及/正在…, and/the/of…); with finish_reason unknown, an "
        "answer of several sentences does not end without the terminal punctuation all its others have, nor start "
        "in lower case when all its others start capitalised; a missing full stop alone is not truncation",
        ("truncation_min_sentences",),
    ),
    CheckSpec(
        "length.too_short",
        2,
        "every answer at least the floor of what its question asks (closed / open / generative / detailed) and of "
        "its task, and at least a share of an open question's own length",
        ("min_round_chars_by_kind", "min_round_chars_by_task", "min_answer_to_question_ratio", "en_length_factor"),
    ),
    CheckSpec(
        "length.too_long",
        1,
        "answers' total characters at most the task maximum",
        ("max_answer_chars", "en_length_factor"),
    ),
    CheckSpec(
        "conversation.duplicate_question",
        1,
        "no two questions in a sample are near-duplicates (character-bigram Jaccard, filler words removed)",
        ("duplicate_question_jaccard",),
    ),
    CheckSpec(
        "conversation.non_answer",
        2,
        "no answer is just 不确定/无法确定/不知道/放弃回答/I don't know/Hello",
        ("non_answer_max_chars",),
    ),
    CheckSpec(
        "conversation.off_task",
        1,
        "each answer answers its own question: a short answer to a count / yes-no / colour question carries a "
        "number / a yes-no or the question's own words / a colour, a person or thing is not a bare number; a "
        "request for code gets code; an English request to describe / explain / write is not answered by a "
        "verbless fragment; an answer to a request does not just restate it; the answer does not speak as the "
        "asker or a person in the image (my plant, I'm most awake) outside a piece of writing",
        ("off_task_max_answer_chars", "off_task_echo_share", "en_length_factor"),
    ),
    CheckSpec(
        "grounding.ocr_coverage",
        1,
        "detail: when OCR found enough Chinese text, the description mentions enough of the OCR segments",
        ("ocr_min_cjk_chars", "ocr_min_coverage", "ocr_max_segments", "ocr_segment_match"),
    ),
    CheckSpec(
        "grounding.ungrounded_quote",
        1,
        "quoted Chinese text presented as text in the image (写着“…”, 「…」字样) was seen by OCR",
        ("quote_seen_share", "max_ungrounded_quote_share", "quote_requires_cue"),
    ),
    CheckSpec(
        "privacy.personal_data",
        1,
        "no answer repeats personal data: a Chinese mobile number, an 18-digit ID number with a valid check digit, "
        "an e-mail address or a licence plate (the curation stage's rules, tuwen.curate.personal_data); only the check's "
        "name is recorded, never the value",
        ("reject_personal_data",),
    ),
    CheckSpec(
        "faithfulness.judge",
        1,
        "when the faithfulness judge (a VLM shown the image, tuwen.judge) has judged the sample, its latest "
        "succeeded judgement finds fewer contradicted statements than the limit; a sample not judged passes",
        ("judge_max_contradicted",),
    ),
)
CHECKS: dict[str, CheckSpec] = {spec.name: spec for spec in _SPECS}


def describe_checks(config: QCConfig | None = None) -> list[dict[str, Any]]:
    """The registry with threshold values filled in, for the dataset card and qc_run."""
    config = config or QCConfig()
    return [
        {
            "name": spec.name,
            "version": spec.version,
            "description": spec.description,
            "thresholds": {name: _jsonable(getattr(config, name)) for name in spec.thresholds},
        }
        for spec in _SPECS
    ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------------
# Character classes and patterns, compiled once.
#
# A test for one character (`ch in text`, memchr) is far cheaper than a regex, and a regex with a
# literal prefix far cheaper than one starting with a character class: rare single characters gate the
# expensive patterns, and counting happens on UTF-8 bytes.

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
CJK_RUN_RE = re.compile(f"[{_CJK}]+")
# UTF-8 lead bytes E4..E9 start exactly the code points U+4000..U+9FFF: the CJK Unified Ideographs and
# most of Extension A, one lead byte per character.
_CJK_LEAD_BYTES = bytes(range(0xE4, 0xEA))
_LATIN_LETTER_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Lead bytes of Cyrillic/Armenian/Hebrew/Arabic (U+0400..U+06FF), Thai and its block (U+0800..U+0FFF),
# Yi/Hangul (U+A000..U+D7FF); kana is E3 81..E3 83. A hit only triggers the exact regex below.
_FOREIGN_LEAD_BYTES = bytes(range(0xD0, 0xDC)) + b"\xe0" + bytes(range(0xEA, 0xEE))
_KANA_BYTES_RE = re.compile(rb"\xe3[\x81-\x83]")
FOREIGN_SCRIPT_RE = re.compile(
    "[\u3040-\u30ff\u31f0-\u31ff\uac00-\ud7af\u1100-\u11ff\u0400-\u04ff\u0e00-\u0e7f\u0600-\u06ff]"
)
# Words joined by spaces/hyphens/apostrophes: one English phrase. Digits break a run, so model numbers
# ("iPhone 15 Pro") and units stay short.
LATIN_PHRASE_RE = re.compile(r"[A-Za-z]+(?:[ '’\-]+[A-Za-z]+)+")
NON_WORD_RE = re.compile(rf"[^0-9A-Za-z{_CJK}]+")

QUOTE_PAIRS = {"“": "”", "「": "」", "『": "』", "《": "》", '"': '"', "‘": "’"}
MAX_QUOTE_CHARS = 80
# Words that say the next quote is text printed in the image (before it, or right after it).
QUOTE_CUE_BEFORE_RE = re.compile(
    r"写着|写有|写的是|写道|标有|标着|标注|印着|印有|刻着|刻有|显示|标题|题为|字样|文字|标语|口号|招牌|牌匾|"
    r"上书|注明|内容为|内容是|名为|名称|店名|品牌|商标|logo|LOGO|Logo|读作|横幅|菜单|价目"
    r"|reads|says|saying|written|labell?ed|printed|titled|words"
)
QUOTE_CUE_AFTER = ("字样", "等字", "几个字", "的字", "标志", "标识", "指示牌", "招牌", "牌子", "横幅", "标语")

# Refusals and AI self-reference. Each pattern starts with a literal (fast scan) and runs only when
# one of its rare characters occurs in the text.
AI_SELF_REFERENCE_RE = re.compile(
    r"作为(?:一[个名款]|您的|你的)?(?:视觉)?(?:AI|ＡＩ|人工智能|大型语言模型|语言模型|智能助手)"
    r"|我(?:只)?是(?:一[个名款])?(?:AI|ＡＩ|人工智能|语言模型)"
)
APOLOGY_RE = re.compile(r"(?:抱歉|对不起)[，,]?\s*(?:我|但我)(?:无法|不能|没法)")
# 「很抱歉，这个流程图无法被转换为……」: an apology followed, within its clause, by an inability.
APOLOGY_THEN_CANNOT_RE = re.compile(
    r"(?:抱歉|对不起)[，,]?[^。！？!?\n，,]{0,30}?(?:无法|不能|没法|没有办法|不可以|做不到)"
)
# "…无法查看这张图片。": found from the image word backwards (图片/图像/照片 + punctuation).
CANNOT_SEE_BEFORE_RE = re.compile(
    r"(?:无法|不能|没法|没有办法|看不到|看不了)(?:直接)?(?:查看|看到|看见|访问|打开|读取|处理|分析|识别)?"
    r"(?:这张|该|此|您的|你的|您提供的|你提供的)?[图照]$"
)
IMAGE_WORD_END_RE = re.compile(r"片(?:的内容)?[。，,.!！]|像(?:的内容)?[。，,.!！]")
REFUSAL_EN_RE = re.compile(
    r"\bas an? (?:ai\b|(?:large )?language model\b)"
    r"|\bi(?: am|'m)? (?:unable|not able) to (?:see|view|access|analy[sz]e|open)\b"
    r"|\bi (?:cannot|can't|can not) (?:see|view|access|analy[sz]e|open) (?:the|this|your|any) (?:image|picture|photo)"
    r"|\bi'?m sorry,? but i (?:cannot|can't)"
)
REFUSAL_EN_TRIGGERS = ("as a", "unable to", "not able to", "cannot", "can't", "can not", "sorry")

# Chatbot filler: the answer turns to the user or the chat instead of the image. Training data with it
# teaches a captioning model to end every answer with a sign-off.
CHAT_FILLER_RE = re.compile(
    r"希望(?:这些|以上|我的|这个|这)?(?:信息|内容|回答|解答|描述)?(?:能|可以)?(?:对[你您]|帮到[你您]|帮助到[你您])"
    r"|(?:如果|若)[你您]?(?:还)?有(?:其他|任何|更多)(?:的)?(?:问题|疑问|需要)"
    r"|(?:请)?随时(?:问我|告诉我|联系我|向我提问)|有什么(?:我)?可以帮[你您]"
)
CHAT_FILLER_EN_RE = re.compile(
    r"\bi hope (?:this|that|it) helps\b|\blet me know if\b|\bfeel free to (?:ask|let me know)\b"
    r"|\bis there anything else\b"
)
CHAT_FILLER_TRIGGERS = ("希望", "如果", "若", "随时", "帮")
CHAT_FILLER_EN_TRIGGERS = ("hope", "let me know", "feel free", "anything else")

ADDRESSING_REQUEST_RE = re.compile(r"(?:根据|按照|按|依照|符合)[你您]的?(?:要求|指示|需求)")
PROMPT_ECHO_RE = re.compile(
    r"以下是(?:一[段个组]|为您|为你)?(?:设计的|模拟的|关于这张(?:图片|照片|图像)的)?(?:对话|问题和答案|问答)"
)
DESIGNED_RE = re.compile(r"设计(?:了?一[段个组](?:对话|问题)|的对话)")
FORMAT_RE = re.compile(r"按照?(?:要求的|指定的|上述|给定的)?格式")
SPEAKER_MARKER_RE = re.compile(r"(?:^|\n)[ \t]*(?:用户|助手)[ \t]*[:：]")
TEMPLATE_PREFIXES = ("问题：", "问题:", "回答：", "回答:", "用户：", "用户:", "助手：", "助手:")
META_TALK_EN_RE = re.compile(
    r"\bas (?:you )?requested\b|\bhere(?: is|'s) (?:a|the) (?:conversation|dialogue)\b"
    r"|\bthe following (?:conversation|dialogue)\b|\bin the requested format\b"
    r"|(?:^|\n)\s*(?:user|assistant)\s*:"
)
META_TALK_EN_TRIGGERS = ("request", "conversation", "dialogue", "user", "assistant")

# Endings that close a sentence. Quotes and brackets count when they close a finished sentence.
TERMINAL_CHARS = frozenset("。！？.!?…”」』）)》\"'～~")
UNFINISHED_ENDINGS = frozenset("，,、：:；;（(《“「-—")
LIST_OR_TABLE_LINE_RE = re.compile(r"^\s*(?:[-*•·]|\d+[.、)]|[（(]?\d+[)）]|\|)")
LOOP_PROBE_CHARS = 8
LIST_NUMBER_RE = re.compile(r"^\s*\d{1,2}\s*[.、)）]?\s*")
# U+FFFD: bytes the model (or a decoder) could not turn into text.
REPLACEMENT_CHAR = "\ufffd"

NON_ANSWER_STEMS = (
    "不确定", "不太确定", "无法确定", "不知道", "不清楚", "无法判断", "难以判断", "无法回答", "不好说", "很难说", "看不清",
    "放弃回答", "拒绝回答", "无法回溯",
    "idontknow", "notsure", "unknown", "unclear", "cannotdetermine", "cantdetermine", "cantsay", "cannotsay",
    "hello", "nocomment",
)  # fmt: skip

# What a question asks for, from its own words; each kind has its own floor (QCConfig.min_round_chars_by_kind).
# A question matching several kinds is held to the highest floor.
QUESTION_KIND_WORDS: dict[str, tuple[str, ...]] = {
    "detailed": ("详细", "全面", "详尽", "细致", "具体描述", "in detail", "detailed", "comprehensive", "thorough"),
    "generative": (
        "写一", "写个", "写出", "编写", "编一", "创作", "故事", "诗", "广告", "文案", "代码", "程序",
        "write", "story", "poem", "rap ", "advertis", "program", "code", "template", "html", "essay",
    ),
    "open": (
        "为什么", "为何", "原因", "解释", "说明", "分析", "描述", "介绍", "讲讲", "谈谈", "总结", "概括", "怎么看",
        "如何", "怎样", "怎么做", "有趣", "好笑", "推测",
        "why", "explain", "describe", "introduc", "summar", "analy", "what do you think", "tell me about",
        "tell me something", "funny", "how should", "how to",
    ),
}  # fmt: skip
# An answer that stops on one of these stopped mid-sentence, whatever the model said about why it stopped.
DANGLING_ZH = ("和", "与", "及", "或", "以及", "并且", "而且", "但是", "因为", "所以", "如果", "例如", "比如", "包括",
               "正在", "正准备", "正要", "将要", "一位", "一个", "一只", "一些")  # fmt: skip
DANGLING_EN_RE = re.compile(
    r"\b(?:and|or|but|the|a|an|of|to|with|by|for|from|that|which|because|such as|including|is|are|was|were"
    r"|his|her|their|its|my|your)$",
    re.IGNORECASE,
)
# Latin inside brackets with no CJK (蝙蝠侠（Batman）, 星巴克 (Starbucks)) glosses the Chinese name before it.
BRACKETED_GLOSS_RE = re.compile(r"[（(][^（）()\u4e00-\u9fff]{1,60}[）)]")
# Capitalised words, acronyms and words with digits are names (Intel, iPhone, NVIDIA, RTX4090), not prose.
LATIN_NAME_RE = re.compile(r"\b(?:[A-Z][A-Za-z0-9\-]*|[a-z]+[A-Z0-9][A-Za-z0-9\-]*)\b")
QUESTION_FILLER_RE = re.compile(
    r"这张(?:图片|照片|图像)(?:中|里|上)?|(?:图片|照片|图像|画面|图)(?:中|里|上)|请问|你能|您能|能否|可以|告诉我|吗|呢"
    r"|\b(?:in|on) (?:the|this) (?:image|picture|photo)\b|\bcan you\b|\bplease\b|\bcould you\b"
)

# --- conversation.off_task: what a question asks for, and what an answer to it must carry (off_task_reason).
# Each rule is a kind of question and the one thing its answer cannot lack. The count, yes/no, colour,
# bare-number, echo and first-person rules judge only short answers (QCConfig.off_task_max_answer_chars);
# the code, fragment and "my thing" rules judge any answer, their evidence being the whole of it.
COUNT_QUESTION_RE = re.compile(
    r"\bhow (?:many|much)\b|多少|几(?:个|只|位|辆|人|名|块|张|条|头|匹|把|本|台|架|艘|棵|朵|座|层|岁|次|种|件|双|对|盘|杯|碗|瓶|根|片|间|扇|盏)"
)
NUMBER_IN_ANSWER_RE = re.compile(
    r"\d|[零〇一二两三四五六七八九十百千万亿半几双俩仨无没]|许多|很多"
    r"|\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen"
    r"|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundreds?"
    r"|thousands?|millions?|dozens?|none|no|single|both|couple|pair|several|many|few|multiple|numerous|lots?"
    r"|free|nothing|once|twice|a|an|only|just|alone|lone)\b",
    re.IGNORECASE,
)
# A yes/no question: English opens on an auxiliary ("Did …", "Is there …"), Chinese ends on 吗 or asks
# 是否/有没有/…; not an alternative question (… or …, 还是) and not addressed to the assistant ("Can you …",
# 你能…吗 are requests, "Do you have anything to say" asks for words, not a yes or no).
POLAR_QUESTION_EN_RE = re.compile(
    r"^(?:is|are|was|were|do|does|did|can|could|will|would|should|has|have|had|may|might|must|shall)\s+(?!you\b|u\b)",
    re.IGNORECASE,
)
POLAR_QUESTION_ZH_RE = re.compile(r"吗[？?。！!]?\s*$|是否|是不是|有没有|能不能|会不会|可不可以|对不对|好不好|要不要")
POLARITY_RE = re.compile(
    r"\b(?:yes|yeah|yep|no|nope|not|never|none|nothing|nobody|indeed|sure|certainly|definitely|correct|right"
    r"|true|false|absolutely|probably|likely|unlikely|possibly|maybe|perhaps"
    r"|only|just|instead|but|rather|actually|still|already)\b|n't\b"
    r"|[是不没有对会能否无未别]|可以|可能|确实|当然|应该",
    re.IGNORECASE,
)
COLOUR_QUESTION_RE = re.compile(r"\b(?:what|which) colou?rs?\b|什么颜色|哪种颜色|哪个颜色|什么色|哪些颜色|颜色是", re.IGNORECASE)
COLOUR_IN_ANSWER_RE = re.compile(
    r"[色红黄蓝绿白黑紫粉灰橙棕褐金银青彩]"
    r"|\b(?:red|orange|yellow|green|blue|purple|pink|brown|black|white|gr[ae]y|silver|gold(?:en)?|beige|tan|navy"
    r"|teal|cyan|magenta|maroon|violet|cream|ivory|turquoise|khaki|olive|colou?rful|multi-?colou?red|dark|light"
    r"|bright|pale|transparent|clear|striped|plaid)\b",
    re.IGNORECASE,
)
# Who / which <thing> / 谁 / 哪个<thing>: a person or a thing is asked for, unless the thing is a quantity
# (which year, 哪一年, which floor, 几号…), so a bare number is an answer to some other question.
ENTITY_QUESTION_RE = re.compile(r"\bwho(?:se|m)?\b|\bwhich\s+(\w+)|谁|哪(?:个|一个|位|家|种|些|一)?(\w)?", re.IGNORECASE)
QUANTITY_FOCUS = frozenset((
    "year", "years", "number", "numbers", "floor", "floors", "page", "pages", "step", "steps", "day",
    "days", "month", "date", "time", "times", "size", "price", "amount", "total", "percentage",
    "percent", "score", "age", "one", "ones", "年", "天", "日", "月", "号", "层", "楼", "页", "步", "站", "路",
    "班", "次", "数", "届", "期", "版",
))  # fmt: skip
BARE_NUMBER_RE = re.compile(r"^[\s$¥€£#(（]*[\d][\d\s.,:/%$¥€£\-–~]*(?:元|美元|块|USD|RMB|%)?[\s.。!！)）]*$")
# A request for code: the answer has code's punctuation or keywords, or it is not code.
CODE_REQUEST_RE = re.compile(
    r"\b(?:python|html|javascript|js|css|sql|java|c\+\+|code|program|script|function)\b|代码|程序|脚本|函数", re.IGNORECASE
)
CODE_MARKS = ("(", ")", "{", "}", "<", ">", "=", ";", "def ", "print", "import ", "```", "\t", "    ")
# English finite verbs that a caption fragment lacks ("a dog laying down on a wooden floor", "the starry
# night"): an auxiliary, a negation, a subject pronoun followed by a word, a past form, or a third-person
# -s verb before its complement ("a boy stands on a ledge"). Participles (-ing) do not make a sentence.
# Chinese verbs carry no such mark; there the length floors catch a noun phrase (length.too_short).
FINITE_VERB_EN_RE = re.compile(
    r"\b(?:is|are|was|were|am|be|been|has|have|had|do|does|did|can|could|will|would|shall|should|may|might"
    r"|must|let|lets|here's|there's|that's|it's|he's|she's|what's)\b|n't\b|'(?:re|m|ve|ll|d)\b"
    r"|\b(?:i|you|he|she|it|we|they)\s+[a-z]{2,}"
    r"|\b[a-z]{2,}ed\b"
    r"|\b(?:ate|became|began|bit|blew|broke|brought|built|bought|caught|chose|came|cut|dug|drew|drank|drove|fell"
    r"|fought|found|flew|forgot|froze|got|gave|went|grew|hung|heard|hid|hit|held|hurt|kept|knew|laid|led|left|lent"
    r"|lay|lit|lost|made|meant|met|paid|put|quit|ran|rang|rode|rose|said|saw|sold|sent|set|shook|shot|shut|sang"
    r"|sank|sat|slept|slid|spoke|spent|spun|stood|stole|stuck|struck|swam|swung|took|taught|tore|told|thought"
    r"|threw|understood|woke|wore|won|wrote)\b"
    r"|\b[a-z]{2,}[^s\W]s\s+(?:a|an|the|on|in|at|to|with|of|from|over|into|onto|like|out|up|down|his|her|its"
    r"|their|by|for|through|across|near|under|behind|around|off|away|as|that|this|it|him|them)\b",
    re.IGNORECASE,
)
EVENT_QUESTION_EN_RE = re.compile(
    r"\bwhat (?:happened|happens|is happening|will happen|(?:is|are|was|were) (?:\w+ ){1,3}doing)\b", re.IGNORECASE
)
ING_RE = re.compile(r"\b[a-z]{2,}ing\b", re.IGNORECASE)
# The answer speaks as the asker or as someone in the image instead of about the image, a model continuing
# the text rather than answering it: it calls the asker's thing its own ("my plant is turning yellow" to
# "what is wrong with my plant?"), or a short answer is someone's first person ("I'm most awake",
# 我最喜欢周末). The assistant's own first person (I'm sorry, I'm not sure, 我很抱歉) is not this.
MY_THING_EN_RE = re.compile(r"\bmy ([a-z]+)", re.IGNORECASE)
MY_THING_ZH_RE = re.compile(r"我的(\w)")
SELF_EN_RE = re.compile(
    r"\bi(?:'m| am) (?!sorry|unable|not able|an? (?:ai|assistant|language|visual|large)|happy to|glad|here|afraid"
    r"|not sure|unsure|going to|able|confident|certain|uncertain|not certain)[a-z]+",
    re.IGNORECASE,
)
SELF_ZH_RE = re.compile(r"我(?:是|很|最|好|真|太|正在)(?!抱歉|遗憾|乐意|高兴为|不确定|无法)")
CONTENT_WORD_EN_RE = re.compile(r"[a-z]{3,}")
STOPWORDS_EN = frozenset((
    "the", "and", "for", "are", "but", "not", "you", "your", "yours", "can", "could", "would", "should",
    "will", "with", "this", "that", "these", "those", "there", "their", "they", "them", "what", "which",
    "who", "whom", "whose", "when", "where", "why", "how", "was", "were", "has", "have", "had", "does",
    "did", "doing", "done", "from", "into", "onto", "about", "image", "picture", "photo", "please",
    "tell", "give", "any", "all", "some", "its", "it's", "than", "then", "also", "just", "very", "our",
    "ours", "out", "use", "using", "used", "one",
))  # fmt: skip
REPEAT_MARKER_RE = re.compile(r"\b(?:also|too|again) |[也还又]")
# Chinese characters that say nothing about what a question is about, left out when an answer's overlap
# with its question is measured one character at a time.
FUNCTION_CHARS_ZH = frozenset("的了吗呢吧啊是在有和与及或这那个些张幅图片中里上下面图像照画请问你您我他她它们么什可以能会将要")
# How-to questions are answered with instructions, and an imperative has no mark of a finite verb.
HOW_QUESTION_RE = re.compile(r"\bhow\b|\bwhat (?:should|can|could|do) (?:i|we)\b|如何|怎么|怎样")
# Sentence (or line) boundaries: after 。！？ or after . ! ? that follows a letter or a closing mark (not a
# list number such as "2. "), and at a line break.
SENTENCE_SPLIT_RE = re.compile(r"(?<=[。！？])|(?<=[^\d\s.][.!?])\s+|\n+")
# List labels with nothing after them ("1.a. 1.b. 1.c. …", "1、2、3、4、"): a counter, not an answer.
LIST_LABEL_RE = re.compile(r"(?:\d{1,3}|[a-zA-Z]|[ivxIVX]{1,4}|[一二三四五六七八九十]{1,3})[.、)）:：]")


@cache
def traditional_only_chars() -> frozenset[str]:
    """Characters that OpenCC's t2s converts and that are never Simplified themselves.

    Built once from opencc's character tables (converting every answer with opencc-python-reimplemented
    is far too slow for 640k samples); a character that is both Traditional and
    Simplified (乾, 著, 覆, 后, 里, 只…) is left out so correct Simplified text never counts.
    """
    import opencc

    dictionary_dir = Path(opencc.__file__).parent / "dictionary"

    def load(name: str) -> dict[str, list[str]]:
        table: dict[str, list[str]] = {}
        for line in (dictionary_dir / name).read_text(encoding="utf-8").splitlines():
            key, _, values = line.partition("\t")
            if len(key) == 1:
                table[key] = values.split()
        return table

    traditional_to_simplified = load("TSCharacters.txt")
    simplified_to_traditional = load("STCharacters.txt")
    t2s = opencc.OpenCC("t2s")
    return frozenset(
        char
        for char, simplified in traditional_to_simplified.items()
        if char not in simplified and char not in simplified_to_traditional and t2s.convert(char) != char
    )


@cache
def _traditional_re() -> re.Pattern[str]:
    # Only BMP characters: a class holding astral code points makes sre fall back to a slow path, and
    # the few hundred astral Traditional-only characters are rare Extension-B forms.
    return re.compile("[" + "".join(sorted(c for c in traditional_only_chars() if ord(c) < 0x10000)) + "]")


# ---------------------------------------------------------------------------------------------------
# Helpers


def cjk_count(text: str) -> int:
    """Number of CJK ideographs (U+4000..U+9FFF) in text."""
    data = text.encode("utf-8")
    return len(data) - len(data.translate(None, _CJK_LEAD_BYTES))


def _latin_letter_count(data: bytes) -> int:
    return len(data) - len(data.translate(None, _LATIN_LETTER_BYTES))


def _foreign_script_count(text: str, data: bytes) -> int:
    if len(data.translate(None, _FOREIGN_LEAD_BYTES)) == len(data) and not _KANA_BYTES_RE.search(data):
        return 0
    return len(FOREIGN_SCRIPT_RE.findall(text))


def find_quotes(text: str) -> list[tuple[int, int, str]]:
    """Quoted spans (start, end, inner text) for “…”, 「…」, 『…』, 《…》, "…", ‘…’ on one line."""
    spans: list[tuple[int, int, str]] = []
    for opener, closer in QUOTE_PAIRS.items():
        position = text.find(opener)
        while position != -1:
            close = text.find(closer, position + 1, position + 2 + MAX_QUOTE_CHARS)
            inner = text[position + 1 : close] if close != -1 else ""
            if close == -1 or not inner or "\n" in inner:
                position = text.find(opener, position + 1)
                continue
            spans.append((position, close + 1, inner))
            position = text.find(opener, close + 1)
    spans.sort()
    return spans


def _outside_quotes(text: str, quotes: list[tuple[int, int, str]]) -> str:
    if not quotes:
        return text
    parts, cursor = [], 0
    for start, end, _ in quotes:
        if start >= cursor:
            parts.append(text[cursor:start])
            cursor = end
    parts.append(text[cursor:])
    return " ".join(parts)


def _turn_text(turn: Any) -> str | None:
    if isinstance(turn, Mapping):
        value = turn.get("value")
        return value if isinstance(value, str) else None
    return None


def ends_unfinished(answer: str) -> bool:
    """True when an answer visibly stops mid-sentence: on a comma, colon or opening bracket, or on a word
    that needs a continuation (和, 以及, 正在, and, the, of …).

    A missing full stop alone is not enough: real answers end on bare values (「答案：5」 → "5", "Singapore"),
    list items and clauses without 。; `finish_reason` is the evidence of a cut (see the truncated check)."""
    # Closing markdown emphasis is not a sentence ending; look at what it wraps.
    text = answer.rstrip().rstrip("*_` ").rstrip()
    if not text:
        return True
    last = text[-1]
    if last in TERMINAL_CHARS:
        return False
    if last in UNFINISHED_ENDINGS:
        return True
    if last.isascii():
        return last.isalpha() and DANGLING_EN_RE.search(text[-20:]) is not None
    return text.endswith(DANGLING_ZH)


@lru_cache(maxsize=8192)  # generated questions repeat (templates, follow-ups): each is read by several checks
def question_kind(question: str) -> str:
    """What a question asks for: 'detailed', 'generative', 'open' or 'closed' (a fact, a count, yes/no).
    The highest-floor kind whose words occur in the question wins."""
    lowered = question.lower()
    for kind in ("detailed", "generative", "open"):
        if any(word in lowered for word in QUESTION_KIND_WORDS[kind]):
            return kind
    return "closed"


def min_round_chars(question: str, task_type: str | None, language: str, config: QCConfig) -> float:
    """The fewest characters an answer to this question may have. The kind and task floors are in
    Chinese characters (scaled by en_length_factor for English); the share of the question's length is
    in the question's own characters. A closed question (a count, yes/no) has no floor: "2" is a whole
    answer (an empty one is structure.empty_turn). `task_type` None: a follow-up round, judged by its
    question alone."""
    kind = question_kind(question)
    factor = config.en_length_factor if language == "en" else 1.0
    task_floor = config.min_round_chars_by_task.get(task_type, 0) if task_type else 0
    floor = factor * max(config.min_round_chars_by_kind.get(kind, 0), task_floor)
    if kind != "closed":
        floor = max(floor, config.min_answer_to_question_ratio * len(question))
    return floor


def has_looping_tail(answer: str, config: QCConfig) -> bool:
    """True when the answer ends in one unit (≤ loop_max_unit_chars) repeated over and over.

    The period is found from the previous occurrence of the last few characters (one C-level rfind)
    instead of trying every unit length."""
    tail = answer[-config.loop_window_chars :].rstrip(" \n\t。！？.!?…")
    probe_len = min(LOOP_PROBE_CHARS, len(tail) // config.loop_min_repeats)
    if probe_len < 1:
        return False
    probe = tail[-probe_len:]
    search_from = max(0, len(tail) - probe_len - config.loop_max_unit_chars)
    previous = tail.rfind(probe, search_from, len(tail) - 1)
    if previous == -1:
        return False
    unit_len = len(tail) - probe_len - previous
    unit = tail[-unit_len:]
    repeats = max(config.loop_min_repeats, -(-config.loop_min_span_chars // unit_len))
    return (
        unit_len * repeats <= len(tail) and tail.endswith(unit * repeats) and bool(NON_WORD_RE.sub("", unit))
    )


def duplicate_sentence_ratio(text: str, config: QCConfig) -> float:
    """Share of sentences/lines (≥ min_sentence_chars) that repeat an earlier one. English sentences end
    at ". ", "? ", "! "; a list number ("2. ", "3、") does not make a repeated item new."""
    text = text.replace("！", "。").replace("？", "。").replace("\n", "。")
    if ". " in text or "? " in text or "! " in text:
        text = text.replace(". ", "。").replace("? ", "。").replace("! ", "。")
    pieces = text.split("。")
    if "1" in text:
        pieces = [LIST_NUMBER_RE.sub("", p) for p in pieces]
    sentences = [s for s in pieces if len(s) >= config.min_sentence_chars]
    if len(sentences) < config.min_sentences_for_duplicate_ratio:
        return 0.0
    return 1.0 - len(set(sentences)) / len(sentences)


def _content_words(text: str) -> set[str]:
    """English words of 3+ letters, minus function words, with a plural/3rd-person -s taken off."""
    words = CONTENT_WORD_EN_RE.findall(text.lower())
    return {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in words if w not in STOPWORDS_EN}


def _content_chars_zh(text: str) -> set[str]:
    return set("".join(CJK_RUN_RE.findall(text))) - FUNCTION_CHARS_ZH


def shares_content(question: str, answer: str) -> bool:
    """Whether the answer repeats a content word of the question (English, plural -s aside) or one of its
    Chinese characters other than function characters: a Chinese yes/no answer often restates the question
    in other words (两侧 → 左侧和右侧), so one shared character is enough."""
    question = QUESTION_FILLER_RE.sub(" ", question.lower())
    return bool(_content_words(question) & _content_words(answer)) or bool(
        _content_chars_zh(question) & _content_chars_zh(answer)
    )


def echo_share(question: str, answer: str) -> float | None:
    """Share of the answer's content words (English) and content characters (Chinese, function characters
    such as 的/我们/可以 left out) that come from the question; None when it has fewer than three."""
    words = _content_words(answer) | _content_chars_zh(answer)
    if len(words) < 3:
        return None
    return len(words & (_content_words(question) | _content_chars_zh(question))) / len(words)


def off_task_reason(question: str, answer: str, language: str, config: QCConfig) -> str | None:
    """Why an answer does not answer its own question, or None. Each rule pairs a kind of question with
    the one thing an answer to it cannot lack (docs/QUALITY.md, "off-task"):

    - count: "how many / 几个 / 多少" answered without a number ("Kobe Bryant.");
    - yes_no: a yes/no question answered with neither a yes/no nor any of its own words ("2000's Titanic."
      to "Did his character survive?");
    - colour: "what colour / 什么颜色" answered without a colour;
    - bare_number: a person or a thing asked for (who, which department, 哪个部门, 谁) and only a number given;
    - no_code: code asked for (python, html, 代码) and the answer has none of code's marks;
    - fragment: an English request to describe, explain or write, or "what happened", answered by a
      verbless fragment ("a process flow chart for a coffee machine");
    - echo: a request answered by restating it ("We can help you write an advertisement.");
    - persona: outside a piece of writing, the answer speaks as the asker or someone in the image
      ("my plant is turning yellow" to "what is wrong with my plant?", "I'm most awake").
    The first four judge only short answers: a long one says more than a rule can weigh."""
    answer = answer.strip()
    kind = question_kind(question)
    factor = config.en_length_factor if language == "en" else 1.0
    short = len(answer) <= config.off_task_max_answer_chars * factor
    lowered_question = question.lower()
    if kind == "closed" and short:
        if COUNT_QUESTION_RE.search(lowered_question) and not NUMBER_IN_ANSWER_RE.search(answer):
            return "count"
        polar = (
            POLAR_QUESTION_EN_RE.match(question.lstrip()) is not None
            if language == "en"
            else ("你" not in question and "您" not in question and POLAR_QUESTION_ZH_RE.search(question) is not None)
        )
        # A statement can say yes or no without the word ("Cars are queuing at the lights."); a bare phrase
        # that neither says it nor repeats the question cannot. Chinese verbs carry no mark, so there one
        # shared character of the question is taken as addressing it.
        if (
            polar
            and " or " not in lowered_question
            and "还是" not in question
            and not POLARITY_RE.search(answer)
            and not shares_content(question, answer)
            and not (language == "en" and FINITE_VERB_EN_RE.search(answer))
        ):
            return "yes_no"
        if COLOUR_QUESTION_RE.search(question) and not COLOUR_IN_ANSWER_RE.search(answer):
            return "colour"
        if BARE_NUMBER_RE.match(answer):
            entity = ENTITY_QUESTION_RE.search(lowered_question)
            if entity and (entity.group(1) or entity.group(2) or "") not in QUANTITY_FOCUS:
                return "bare_number"
    if kind == "generative" and CODE_REQUEST_RE.search(question) and not any(m in answer for m in CODE_MARKS):
        return "no_code"
    if (
        language == "en"
        and (kind != "closed" or "what " in lowered_question)
        and not FINITE_VERB_EN_RE.search(answer)
        and (
            (kind != "closed" and not HOW_QUESTION_RE.search(lowered_question))
            or (EVENT_QUESTION_EN_RE.search(question) and not ING_RE.search(answer))
        )
    ):
        # Several punctuated sentences are sentences (steps in the imperative: "Boil the water. Add
        # the tea."), even where no verb shows; one phrase, punctuated or not, is a fragment.
        units = [u.strip() for u in SENTENCE_SPLIT_RE.split(answer) if u.strip()]
        if not (len(units) >= 2 and all(u[-1] in TERMINAL_CHARS for u in units)):
            return "fragment"
    if kind != "closed" and short:
        share = echo_share(question, answer)
        if share is not None and share >= config.off_task_echo_share:
            return "echo"
    if kind != "generative":
        english = language == "en"
        lowered_answer = answer.lower() if english else answer
        mine_asked = ("my " in lowered_question) if english else ("我的" in question)
        self_told = short and (("i'm " in lowered_answer or "i am " in lowered_answer) if english else "我" in answer)
        if mine_asked or self_told:
            own_words = _outside_quotes(answer, find_quotes(answer))
            thing_re = MY_THING_EN_RE if english else MY_THING_ZH_RE
            asked_about = {m.lower() for m in thing_re.findall(question)} if mine_asked else set()
            if asked_about & {m.lower() for m in thing_re.findall(own_words)}:
                return "persona"
            addressed = ("you" in lowered_question) if english else ("你" in question or "您" in question)
            if self_told and not addressed and (SELF_EN_RE if english else SELF_ZH_RE).search(own_words):
                return "persona"
    return None


def repeats_a_long_sentence(answer: str, min_chars: int) -> bool:
    """True when a sentence of at least `min_chars` characters is said twice, or when the answer's last
    sentence returns what an earlier one said, once case and the words that only mark a repeat (also, too,
    也, 还, 又) are set aside: a model looping at its end ("It's a funny comic, but it's also a great example
    of X. It's a great example of X."). Parallel sentences that share a predicate but not their subject
    (左侧以绿色为主，两边亮度相近。上方以绿色为主，两边亮度相近。) are writing, not a loop. str methods and one
    count per answer: this runs on every answer."""
    if len(answer) < 2 * min_chars:
        return False
    text = answer.lower()
    pieces = text.replace("！", "。").replace("？", "。").replace("\n", "。")
    if ". " in pieces or "? " in pieces or "! " in pieces:
        pieces = pieces.replace(". ", "。").replace("? ", "。").replace("! ", "。")
    long = [p for p in map(str.strip, pieces.split("。")) if len(p) >= min_chars]
    if not long:
        return False
    if len(set(long)) < len(long):
        return True
    last = long[-1]
    if text.count(last[-min_chars:]) < 2:  # its ending is said once: no repeat, marked or not
        return False
    if text.count(last) >= 2:
        return True
    return REPEAT_MARKER_RE.sub("", text).count(REPEAT_MARKER_RE.sub("", last)) >= 2


def is_bare_enumeration(answer: str, min_labels: int) -> bool:
    """True when the answer is only list labels ("1.a. 1.b. 1.c. 1.d.", "一、二、三、四、"): a counter."""
    if len(answer) > 400 or not LIST_LABEL_RE.match(answer.lstrip()):
        return False
    labels = LIST_LABEL_RE.findall(answer)
    return len(labels) >= min_labels and not NON_WORD_RE.sub("", LIST_LABEL_RE.sub("", answer))


def cut_by_its_own_style(answer: str, min_sentences: int) -> bool:
    """With finish_reason unknown: the answer has at least `min_sentences` sentences (or lines), every one
    but the last ends in terminal punctuation and the last does not (stopped mid-sentence), or every one
    but the first starts with a capital and the first starts with a lower-case word (lost its start).
    Chinese has no capitals; its end is judged like English."""
    units = [u for u in SENTENCE_SPLIT_RE.split(answer.strip()) if u.strip()]
    if len(units) < min_sentences:
        return False
    *earlier, last = (u.strip() for u in units)
    if last[-1] not in TERMINAL_CHARS and all(u[-1] in TERMINAL_CHARS for u in earlier):
        return True
    first, *later = (u.strip() for u in units)
    first_word = first.split(maxsplit=1)[0]
    return (
        first_word.isascii()
        and first_word.isalpha()
        and first_word.islower()
        and all(u[0].isupper() for u in later)
    )


def _normalize_question(question: str) -> str:
    return NON_WORD_RE.sub("", QUESTION_FILLER_RE.sub("", question.replace(IMAGE_TOKEN, "").lower()))


def _bigrams(text: str) -> set[str]:
    return {text[i : i + 2] for i in range(len(text) - 1)} if len(text) > 1 else {text}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def question_similarity(a: str, b: str) -> float:
    """Character-bigram Jaccard of two questions after removing filler (图中, 请问, 吗…) and punctuation."""
    return _jaccard(_bigrams(_normalize_question(a)), _bigrams(_normalize_question(b)))


def is_non_answer(answer: str, config: QCConfig) -> bool:
    """An answer that is only 不确定/无法确定/不知道/I don't know (empty answers are structure.empty_turn)."""
    if len(answer) > config.non_answer_max_chars * 4:
        return False
    normalized = NON_WORD_RE.sub("", answer).lower()
    if not normalized:
        return False
    limit = config.non_answer_max_chars if cjk_count(normalized) else config.non_answer_max_chars * 3
    return len(normalized) <= limit and any(stem in normalized for stem in NON_ANSWER_STEMS)


def is_refusal(text: str) -> bool:
    """Refusal or AI self-reference in an answer (zh and en)."""
    if (
        ("作" in text or "我" in text)
        and ("I" in text or "Ａ" in text or "智" in text or "模" in text)
        and AI_SELF_REFERENCE_RE.search(text)
    ):
        return True
    if ("歉" in text or "对不起" in text) and APOLOGY_RE.search(text):
        return True
    if ("歉" in text or "对不起" in text) and APOLOGY_THEN_CANNOT_RE.search(text):
        return True
    if "图" in text or "照" in text:
        for match in IMAGE_WORD_END_RE.finditer(text):
            if CANNOT_SEE_BEFORE_RE.search(text, max(0, match.start() - 20), match.start()):
                return True
    if text.isascii() or "I" in text or "i" in text:
        lowered = text.lower()
        if any(trigger in lowered for trigger in REFUSAL_EN_TRIGGERS) and REFUSAL_EN_RE.search(lowered):
            return True
    return False


def is_meta_talk(answers: Sequence[str]) -> bool:
    """Answers that talk about the prompt (根据你的要求, 以下是设计的对话) or carry the template's markers."""
    if any(answer.lstrip().startswith(TEMPLATE_PREFIXES) for answer in answers):
        return True
    text = "\n".join(answers)
    if ("你" in text or "您" in text) and ADDRESSING_REQUEST_RE.search(text):
        return True
    if "以下是" in text and PROMPT_ECHO_RE.search(text):
        return True
    if "设" in text and DESIGNED_RE.search(text):
        return True
    if "式" in text and FORMAT_RE.search(text):
        return True
    if ("户" in text or "助" in text) and SPEAKER_MARKER_RE.search(text):
        return True
    if any(trigger in text for trigger in CHAT_FILLER_TRIGGERS) and CHAT_FILLER_RE.search(text):
        return True
    if "e" in text:
        lowered = text.lower()
        if any(trigger in lowered for trigger in META_TALK_EN_TRIGGERS) and META_TALK_EN_RE.search(lowered):
            return True
        if any(trigger in lowered for trigger in CHAT_FILLER_EN_TRIGGERS) and CHAT_FILLER_EN_RE.search(lowered):
            return True
    return False


def _quote_is_text_claim(text: str, start: int, end: int) -> bool:
    if QUOTE_CUE_BEFORE_RE.search(text, max(0, start - 12), start):
        return True
    return text.startswith(QUOTE_CUE_AFTER, end)


def ocr_coverage(ocr_text: str, description: str, config: QCConfig) -> float | None:
    """Share of the OCR's Chinese segments (runs of ≥2 CJK characters, reading order, first
    `ocr_max_segments`) that the description mentions, verbatim or by most of its bigrams.
    None when there is no such segment. Only the first segments count because a description of a
    page full of small print summarises it; titles and signs come first in reading order."""
    segments = list(dict.fromkeys(run for run in CJK_RUN_RE.findall(ocr_text) if len(run) >= 2))
    segments = segments[: config.ocr_max_segments]
    if not segments:
        return None
    mentioned = 0
    for segment in segments:
        if segment in description:
            mentioned += 1
            continue
        if len(segment) < 3:
            continue
        pairs = [segment[i : i + 2] for i in range(min(len(segment) - 1, 20))]
        if sum(pair in description for pair in pairs) >= config.ocr_segment_match * len(pairs):
            mentioned += 1
    return mentioned / len(segments)


# ---------------------------------------------------------------------------------------------------
# The checks


def run_checks(sample: SampleForQC, config: QCConfig | None = None) -> SampleVerdict:
    """Run every check on one sample; reasons come out in `CHECKS` order."""
    config = config or _DEFAULT_CONFIG
    failed: set[str] = set()
    metrics: dict[str, float] = {}

    turns = list(sample.conversations)
    try:
        roles = [t["from"] for t in turns]
        texts = [t["value"] for t in turns]
    except (KeyError, TypeError):  # malformed turns: judge what can be read
        roles = [t.get("from") if isinstance(t, Mapping) else None for t in turns]
        texts = [_turn_text(t) for t in turns]
    texts = [t if isinstance(t, str) else None for t in texts]

    # structure
    if sample.task_type not in config.rounds_by_task or sample.language not in LANGUAGES:
        failed.add("structure.task_type")
    expected_roles = ("human", "gpt") * (len(turns) // 2)
    if not turns or tuple(roles) != expected_roles:
        failed.add("structure.roles")
    first_text = texts[0] if texts else None
    image_total = sum(t.count(IMAGE_TOKEN) for t in texts if t)
    if (
        image_total != 1
        or not turns
        or roles[0] != "human"
        or not first_text
        or IMAGE_TOKEN not in first_text
    ):
        failed.add("structure.image_placeholder")
    if any(t is None or not t.replace(IMAGE_TOKEN, "").strip() for t in texts):
        failed.add("structure.empty_turn")
    answers = [t for t, r in zip(texts, roles, strict=True) if r == "gpt" and t and t.strip()]
    questions = [
        t.replace(IMAGE_TOKEN, "").strip() for t, r in zip(texts, roles, strict=True) if r == "human" and t
    ]
    rounds = roles.count("gpt")
    metrics["rounds"] = float(rounds)
    low, high = config.rounds_by_task.get(sample.task_type, (1, 1))
    if not low <= rounds <= high:
        failed.add("structure.rounds")

    answers_text = "\n".join(answers)
    metrics["answer_chars"] = float(len(answers_text))
    if answers:
        quotes = find_quotes(answers_text)
        _check_language(sample.language, answers_text, quotes, questions, config, failed, metrics)
        if is_refusal(answers_text):
            failed.add("refusal")
        if is_meta_talk(answers):
            failed.add("meta_talk")
        rounds_text = _rounds(roles, texts)
        _check_degeneration(sample, rounds_text, answers, answers_text, config, failed, metrics)
        _check_conversation(questions, answers, config, failed, metrics)
        for question, answer in rounds_text:
            if off_task_reason(question, answer, sample.language, config):
                failed.add("conversation.off_task")
                break
        if sample.ocr_text is not None:
            _check_grounding(sample, answers_text, quotes, config, failed, metrics)
        # The same rules that hold an image back at curation: an answer that copies a phone number off a
        # photo would put it in the training set even where the image itself was let through.
        if config.reject_personal_data and personal_data_kinds(answers_text):
            failed.add("privacy.personal_data")
    # The judge's verdict is about the sample as stored, answers or not; unjudged is not failed.
    metrics["judged"] = float(sample.judge_contradicted is not None)
    if sample.judge_contradicted is not None:
        metrics["judge_contradicted"] = float(sample.judge_contradicted)
        if sample.judge_contradicted >= config.judge_max_contradicted:
            failed.add("faithfulness.judge")

    reasons = [name for name in CHECKS if name in failed]
    return SampleVerdict(passed=not reasons, reasons=reasons, metrics=metrics)


def _rounds(roles: list[Any], texts: list[str | None]) -> list[tuple[str, str]]:
    """(question, answer) pairs of well-formed human/gpt turns; malformed ones are structure's business."""
    pairs = []
    for i in range(0, len(texts) - 1, 2):
        question, answer = texts[i], texts[i + 1]
        if roles[i] == "human" and roles[i + 1] == "gpt" and question is not None and answer and answer.strip():
            pairs.append((question.replace(IMAGE_TOKEN, "").strip(), answer))
    return pairs


def _check_language(
    language: str,
    answers_text: str,
    quotes: list[tuple[int, int, str]],
    questions: list[str],
    config: QCConfig,
    failed: set[str],
    metrics: dict[str, float],
) -> None:
    own_words = _outside_quotes(answers_text, quotes)
    data = own_words.encode("utf-8")
    cjk = len(data) - len(data.translate(None, _CJK_LEAD_BYTES))
    latin = _latin_letter_count(data)
    prose_latin = latin
    if language == "zh" and latin:
        # Glosses and names are how Chinese text names films, brands and people, not English prose.
        prose = LATIN_NAME_RE.sub(" ", BRACKETED_GLOSS_RE.sub(" ", own_words))
        prose_latin = _latin_letter_count(prose.encode("utf-8"))
    foreign = _foreign_script_count(own_words, data)
    letters = cjk + prose_latin + foreign
    cjk_ratio = cjk / letters if letters else 0.0
    metrics["cjk_ratio"] = cjk_ratio
    if language == "zh":
        if letters and cjk_ratio < config.zh_min_cjk_ratio:  # a bare value ("3", "40.00") is in no language
            failed.add("language.cjk_ratio")
        traditional_re = _traditional_re()
        questions_text = "\n".join(questions)
        traditional = 0
        if traditional_re.search(own_words) or traditional_re.search(questions_text):
            own_questions = _outside_quotes(questions_text, find_quotes(questions_text))
            traditional = len(traditional_re.findall(own_words)) + len(traditional_re.findall(own_questions))
        all_cjk = cjk + cjk_count(questions_text)
        traditional_share = traditional / all_cjk if all_cjk else 0.0
        metrics["traditional_share"] = traditional_share
        if (
            traditional >= config.zh_min_traditional_chars
            and traditional_share > config.zh_max_traditional_share
        ):
            failed.add("language.traditional")
        # A phrase of N+1 words has at least N+1 letters: skip the scan for the usual brand name or two.
        longest_phrase = 0
        if latin > config.zh_max_latin_run_words:
            longest_phrase = max((p.count(" ") + 1 for p in LATIN_PHRASE_RE.findall(own_words)), default=1)
        metrics["latin_letters"] = float(latin)
        if longest_phrase > config.zh_max_latin_run_words or foreign > config.max_foreign_script_chars:
            failed.add("language.foreign_leakage")
    elif language == "en" and cjk_ratio > config.en_max_cjk_share:
        failed.add("language.cjk_leakage")


def _check_degeneration(
    sample: SampleForQC,
    rounds: list[tuple[str, str]],
    answers: list[str],
    answers_text: str,
    config: QCConfig,
    failed: set[str],
    metrics: dict[str, float],
) -> None:
    duplicate_ratio = duplicate_sentence_ratio(answers_text, config)
    metrics["duplicate_sentence_ratio"] = duplicate_ratio
    factor = config.en_length_factor if sample.language == "en" else 1.0
    repeated_chars = int(config.min_repeated_sentence_chars * factor)
    if (
        duplicate_ratio >= config.max_duplicate_sentence_ratio
        or REPLACEMENT_CHAR in answers_text
        or any(has_looping_tail(a, config) for a in answers if len(a) >= config.loop_min_span_chars)
        # A song's or a poem's refrain repeats by design: only answers to other requests are held to it.
        or any(
            repeats_a_long_sentence(a, repeated_chars)
            and question_kind(q) != "generative"
            for q, a in rounds
        )
        or any(is_bare_enumeration(a, config.loop_min_repeats) for a in answers)
    ):
        failed.add("degeneration.repetition")
    # finish_reason is the evidence of a cut; the text only when it visibly stops mid-sentence, or, when
    # nothing says why generation stopped, when the answer breaks its own habit at its end or start.
    if (
        sample.finish_reason == "length"
        or any(ends_unfinished(a) for a in answers)
        or (
            sample.finish_reason is None
            and any(cut_by_its_own_style(a, config.truncation_min_sentences) for a in answers)
        )
    ):
        failed.add("degeneration.truncated")
    # The task's floor holds for its own (first) question; follow-ups are judged by what they ask. An
    # answer above every floor needs no look at its question.
    highest_floor = factor * max(*config.min_round_chars_by_kind.values(), *config.min_round_chars_by_task.values())
    for i, (question, answer) in enumerate(rounds):
        length = len(answer.strip())
        if length >= highest_floor and length >= config.min_answer_to_question_ratio * len(question):
            continue
        if length < min_round_chars(question, sample.task_type if i == 0 else None, sample.language, config):
            failed.add("length.too_short")
            break
    maximum = config.max_answer_chars.get(sample.task_type)
    if maximum is not None and len(answers_text) > maximum * factor:
        failed.add("length.too_long")


def _check_conversation(
    questions: list[str], answers: list[str], config: QCConfig, failed: set[str], metrics: dict[str, float]
) -> None:
    if len(questions) > 1:
        grams = [_bigrams(_normalize_question(q)) for q in questions]
        most_similar = max(
            _jaccard(grams[i], grams[j]) for i in range(len(grams)) for j in range(i + 1, len(grams))
        )
        metrics["max_question_similarity"] = most_similar
        if most_similar >= config.duplicate_question_jaccard:
            failed.add("conversation.duplicate_question")
    if any(is_non_answer(a, config) for a in answers):
        failed.add("conversation.non_answer")


def _check_grounding(
    sample: SampleForQC,
    answers_text: str,
    quotes: list[tuple[int, int, str]],
    config: QCConfig,
    failed: set[str],
    metrics: dict[str, float],
) -> None:
    ocr_text = sample.ocr_text or ""
    if sample.task_type == "detail" and cjk_count(ocr_text) >= config.ocr_min_cjk_chars:
        coverage = ocr_coverage(ocr_text, answers_text, config)
        if coverage is not None:
            metrics["ocr_coverage"] = coverage
            if coverage < config.ocr_min_coverage:
                failed.add("grounding.ocr_coverage")
    checked = ungrounded = 0
    ocr_chars: set[str] | None = None
    for start, end, inner in quotes:
        quoted_cjk = "".join(CJK_RUN_RE.findall(inner))
        if len(quoted_cjk) < 2 or (
            config.quote_requires_cue and not _quote_is_text_claim(answers_text, start, end)
        ):
            continue
        if ocr_chars is None:
            ocr_chars = set(ocr_text)
        checked += 1
        seen = sum(map(ocr_chars.__contains__, quoted_cjk))
        if seen < config.quote_seen_share * len(quoted_cjk):
            ungrounded += 1
    if checked:
        metrics["quotes_checked"] = float(checked)
        metrics["quotes_ungrounded"] = float(ungrounded)
        if ungrounded / checked > config.max_ungrounded_quote_share:
            failed.add("grounding.ungrounded_quote")


_DEFAULT_CONFIG = QCConfig()
