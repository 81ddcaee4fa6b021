"""The model's raw answer → a LLaVA conversation.

Output shape (what LLaVA, Qwen2.5-VL's fine-tuning scripts and LLaMA-Factory load without dropping a
sample): `[{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]`, human
first, strictly alternating, ending on gpt, exactly one `<image>`, at the start of the first human turn.

Conversation and complex-reasoning answers are split at role markers (用户/助手, 问题/回答, 问/答,
User/Assistant, Question/Answer, ...). A marker counts only at the start of a line, with a colon
(full- or half-width) or alone on a heading/bold line, so "回答这个问题需要……" never splits. Bold,
heading, bullet and bracket markup around a marker is removed; markup in the content is kept.

What is repaired, each with a note on the result so nothing is dropped silently:
  dropped_preamble            text before the first marker ("好的，以下是……")
  dropped_trailing_note       a last paragraph that is a note about the answer ("注：……", "Note: ...",
                              "以上是……", "希望……对你有帮助"), not part of it
  dropped_leading_answer      an answer turn before the first question
  merged_consecutive_turns    two questions (or answers) in a row, joined by a blank line
  dropped_empty_turn          an empty turn next to one of the same role
  dropped_empty_round         a round whose question or answer is empty
  dropped_unanswered_question a question with no answer at the end
  truncated_to_<N>_round(s)   more rounds than the task allows (conversation 5; complex reasoning 1,
                              as in the seed dataset, whose non-conversation tasks are single-round)
  removed_image_token         a literal "<image>" the model wrote
  unescaped_literal_newlines  a literal backslash-n copied from the prompt's format line, read as a
                              line break before a marker or at the very end
Markup-only lines at the edges of a turn (separators, code fences, "第一轮" headings) are formatting
and go without a note.

Unparseable answers get ok=False and an error: empty_answer, refusal (any answer turn, or the whole
text, opens with a refusal — refusals are not training data), no_markers, unbalanced_turns (no
question with an answer), empty_turns (every round had an empty side), invalid_characters (a NUL or
a lone surrogate: no text store or trainer takes them), answer_too_long (over MAX_ANSWER_CHARS).

Answers come from outside, so parsing is bounded: every pattern reads a run of blanks once
(possessive quantifiers, and the one searched pattern starts only where a run begins), and an
answer longer than MAX_ANSWER_CHARS is refused before any pattern sees it, so one answer's parse
time is linear in at most that many characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tuwen.domain import GPT, HUMAN, IMAGE_TOKEN, TASK_TYPES
from tuwen.synthesis.prompts import LANGUAGES

MAX_ROUNDS = {"conversation": 5, "complex_reasoning": 1, "detail": 1}
# Far above what the largest max_tokens (2,048) yields even at several characters per token.
MAX_ANSWER_CHARS = 32_768
# NUL and unpaired UTF-16 surrogates: PostgreSQL text and UTF-8 files cannot hold them.
_INVALID_CHARACTERS = re.compile(r"[\x00\ud800-\udfff]")


# Role labels per (task type, language). Chinese answers sometimes use the English words, so zh
# accepts them; single letters (Q/A) only in English reasoning, since Chinese answers about exam
# images routinely start lines with "A：".
_LABELS: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    ("conversation", "zh"): {
        HUMAN: ("用户", "提问者", "人类", "User", "Human"),
        GPT: ("视觉AI助手", "AI助手", "AI 助手", "助手", "助理", "Assistant", "AI Assistant"),
    },
    ("conversation", "en"): {
        HUMAN: ("User", "Human", "Person"),
        GPT: ("Assistant", "AI Assistant", "Visual AI Assistant", "AI"),
    },
    ("complex_reasoning", "zh"): {
        HUMAN: ("问题", "问", "Question"),
        GPT: ("回答", "答", "Answer"),
    },
    ("complex_reasoning", "en"): {
        HUMAN: ("Question", "Q"),
        GPT: ("Answer", "A"),
    },
}


def _marker_pattern(labels: dict[str, tuple[str, ...]]) -> re.Pattern[str]:
    # Longest first, so "AI助手" wins over "AI" and "Question" over "Q".
    alternatives = sorted((label for group in labels.values() for label in group), key=len, reverse=True)
    label_group = "|".join(re.escape(label) for label in alternatives)
    return re.compile(
        r"^[ \t]*+"
        r"(?P<heading>\#{1,6}[ \t]*+)?"
        r"(?:>[ \t]*+)?"
        r"(?:[-+*][ \t]++)?"
        r"(?P<open>\*\*|__)?[ \t]*+"
        r"[【\[]?"
        rf"(?P<label>{label_group})"
        r"[ \t]*+(?:\d{1,2}|[一二三四五六七八九十])?"
        r"[】\]]?[ \t]*+"
        r"(?:"
        r"(?P<close_before>\*\*|__)?[ \t]*+[:：][ \t]*+(?P<close_after>\*\*|__)?"
        r"|(?P<bare>(?:\*\*|__)?[ \t]*+$)"
        r")",
        re.IGNORECASE,
    )


_MARKERS = {key: _marker_pattern(labels) for key, labels in _LABELS.items()}


_RUN_START = r"(?:(?<![ \t])[ \t]++|(?<![ \t])(?<!\\n))"


def _literal_newline_pattern(labels: dict[str, tuple[str, ...]]) -> re.Pattern[str]:
    alternatives = sorted((label for group in labels.values() for label in group), key=len, reverse=True)
    label_group = "|".join(re.escape(label) for label in alternatives)
    return re.compile(
        # Tried only where a run of blanks or of literal \n's begins (a match starting inside a run
        # fails whenever one from its start does), so a long run is read once, not once per character.
        rf"{_RUN_START}(?:\\n)++[ \t]*+(?=(?:\*\*|\#{{1,6}}[ \t]*+)?(?:{label_group})[ \t]*+(?:\*\*)?[ \t]*+[:：])"
        rf"|{_RUN_START}(?:\\n)++[ \t]*+$",
        re.IGNORECASE,
    )


# The seed prompts spell their format with a literal backslash-n (用户:...\n\n助手:...), and a model
# sometimes copies it: a literal \n right before a marker, or at the very end, is a line break.
_LITERAL_NEWLINES = {key: _literal_newline_pattern(labels) for key, labels in _LABELS.items()}
_ROLE_OF_LABEL = {
    key: {label.casefold(): role for role, group in labels.items() for label in group}
    for key, labels in _LABELS.items()
}

_SEPARATOR_LINE = re.compile(r"^\s*+(?:[-*_=]\s*+){3,}+$")
_FENCE_LINE = re.compile(r"^\s*+```[\w-]*+\s*+$")
_ROUND_HEADING_LINE = re.compile(
    r"^\s*+(?:\#{1,6}\s*+)?(?:\*\*|__)?\s*+"
    r"(?:第\s*+[一二三四五六七八九十\d]++\s*+(?:轮|组|个)(?:对话|问答|问题)?"
    r"|(?:对话|问答)\s*+[一二三四五六七八九十\d]++"
    r"|(?:round|turn|exchange)\s*+\d++)"
    r"\s*+[:：]?\s*+(?:\*\*|__)?\s*+$",
    re.IGNORECASE,
)

_REFUSAL = re.compile(
    r"^(?:\*\*)?\s*+(?:"
    r"(?:很|非常)?(?:抱歉|对不起|不好意思)[，,。！!\s]*(?:但是?[，,]?\s*)?(?:我|目前我?)?(?:无法|不能|没办法|没有办法|不便)"
    r"|作为(?:一个|一名)?\s*(?:AI|人工智能)"
    r"|我(?:无法|不能)(?:查看|看到|识别|处理|提供|回答|协助|帮助|完成)"
    r"|(?:I'?m|I am)\s+(?:really\s+|very\s+)?sorry,?\s+(?:but\s+)?I\s+(?:can'?t|cannot|am\s+unable|'m\s+unable|am\s+not\s+able)"
    r"|sorry,?\s+(?:but\s+)?I\s+(?:can'?t|cannot)"
    r"|as\s+an\s+AI\b"
    r"|I\s+(?:can'?t|cannot|am\s+unable\s+to)\s+(?:help|assist|view|see|provide|process|answer|describe)"
    r")",
    re.IGNORECASE,
)

_PREAMBLE_INTERJECTION = re.compile(
    r"^\s*+(?:好的|好|当然(?:可以)?|没问题|可以|嗯|sure|certainly|of course|okay|ok|absolutely)"
    r"\s*+[，,！!。.~～]++\s*+",
    re.IGNORECASE,
)
_PREAMBLE_LEAD_IN = re.compile(
    # The blanks after the colon up to their last line break (or to the end): what "\s*(?:\n|$)"
    # takes, spelled so a long run of blanks is read once.
    r"^\s*+(?:以下|下面)(?:是|为)[^\n]{0,40}(?:描述|介绍|说明|分析|解读)[^\n]{0,10}[：:]"
    r"(?:(?:[^\S\n]*+\n)++(?:[^\S\n]*+$)?|[^\S\n]*+$)"
    r"|^\s*+(?:here\s+is|here's|below\s+is)[^\n]{0,80}(?:description|analysis|overview|breakdown)"
    r"[^\n]{0,20}[:：](?:(?:[^\S\n]*+\n)++(?:[^\S\n]*+$)?|[^\S\n]*+$)",
    re.IGNORECASE,
)
_TRAILING_NOTE = re.compile(
    r"^\s*+(?:\*\*|__)?\s*+[（(]?\s*+(?:"
    r"注\s*[:：]|备注\s*[:：]|免责声明|"
    r"以上(?:是|为|就是|便是|对话|问答|内容|描述|回答)|"
    r"希望(?:以上|这些|这个|我的|本次|上述)|"
    r"note\s*[:：]|n\.b\.|disclaimer\s*[:：]|i hope this|hope this helps"
    r")",
    re.IGNORECASE,
)


@dataclass
class ParseResult:
    ok: bool
    conversations: list[dict[str, str]] = field(default_factory=list)
    rounds: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None


class _Notes(list[str]):
    def add(self, note: str) -> None:
        if note not in self:
            self.append(note)


def _is_markup_line(line: str) -> bool:
    return bool(
        not line.strip()
        or _SEPARATOR_LINE.match(line)
        or _FENCE_LINE.match(line)
        or _ROUND_HEADING_LINE.match(line)
    )


def _trim_markup_edges(lines: list[str]) -> list[str]:
    start, end = 0, len(lines)
    while start < end and _is_markup_line(lines[start]):
        start += 1
    while end > start and _is_markup_line(lines[end - 1]):
        end -= 1
    return lines[start:end]


def _drop_trailing_note(text: str, notes: _Notes) -> str:
    """Remove a note about the answer from its last paragraph; the answer must keep something.

    The note is the first line of the last paragraph that opens like a note ("注：", "以上是……",
    "Note:"), never the answer's first line, so a note is only cut where it is set apart.
    """
    lines = text.split("\n")
    end = len(lines)
    while end > 0 and _is_markup_line(lines[end - 1]):
        end -= 1
    paragraph_start = end
    while paragraph_start > 0 and not _is_markup_line(lines[paragraph_start - 1]):
        paragraph_start -= 1
    for index in range(max(paragraph_start, 1), end):
        if _TRAILING_NOTE.match(lines[index]):
            kept = "\n".join(_trim_markup_edges(lines[:index]))
            if not kept.strip():
                return text
            notes.add("dropped_trailing_note")
            return kept
    return text


def _clean_value(text: str, notes: _Notes) -> str:
    if IMAGE_TOKEN in text:
        notes.add("removed_image_token")
        text = text.replace(IMAGE_TOKEN, "")
    return "\n".join(_trim_markup_edges(text.split("\n"))).strip()


def _is_refusal(value: str) -> bool:
    return bool(_REFUSAL.match(value))


def _split_turns(text: str, task_type: str, language: str) -> tuple[str, list[list[str]]]:
    """Preamble text and [role, content] turns, split at line-start markers."""
    marker = _MARKERS[(task_type, language)]
    role_of_label = _ROLE_OF_LABEL[(task_type, language)]
    preamble: list[str] = []
    turns: list[tuple[str, list[str]]] = []
    for line in text.split("\n"):
        match = marker.match(line)
        if match and match["bare"] is not None and not (match["heading"] or match["open"]):
            match = None  # a label alone on a line is a marker only when dressed as a heading or in bold
        if match is None:
            (turns[-1][1] if turns else preamble).append(line)
            continue
        rest = line[match.end() :]
        opened, closed = match["open"], match["close_before"] or match["close_after"]
        if opened and not closed and rest.rstrip().endswith(opened) and rest.count(opened) == 1:
            rest = rest.rstrip()[: -len(opened)]  # "**用户：问题**": the bold wrapped the whole line
        turns.append((role_of_label[match["label"].casefold()], [rest]))
    return "\n".join(preamble), [[role, "\n".join(lines)] for role, lines in turns]


def _failure(error: str, notes: _Notes) -> ParseResult:
    return ParseResult(ok=False, notes=list(notes), error=error)


def _strip_detail_preamble(text: str, notes: _Notes) -> str:
    stripped = _PREAMBLE_INTERJECTION.sub("", text, count=1)
    stripped = _PREAMBLE_LEAD_IN.sub("", stripped, count=1)
    if stripped != text:
        notes.add("dropped_preamble")
    return stripped


def _parse_detail(text: str, instruction: str, notes: _Notes) -> ParseResult:
    lines = _trim_markup_edges(text.split("\n"))
    body = _strip_detail_preamble("\n".join(lines), notes)
    body = _clean_value(_drop_trailing_note(body, notes), notes)
    if not body:
        return _failure("empty_answer", notes)
    if _is_refusal(body):
        return _failure("refusal", notes)
    human = _clean_value(instruction, _Notes())
    return ParseResult(
        ok=True,
        conversations=[
            {"from": HUMAN, "value": f"{IMAGE_TOKEN}\n{human}"},
            {"from": GPT, "value": body},
        ],
        rounds=1,
        notes=list(notes),
    )


def _merge_same_role(turns: list[list[str]], notes: _Notes) -> list[list[str]]:
    merged: list[list[str]] = []
    for role, content in turns:
        if not merged or merged[-1][0] != role:
            merged.append([role, content])
        elif not content or not merged[-1][1]:
            notes.add("dropped_empty_turn")
            merged[-1][1] = merged[-1][1] or content
        else:
            notes.add("merged_consecutive_turns")
            merged[-1][1] = f"{merged[-1][1]}\n\n{content}"
    return merged


def _parse_dialogue(text: str, task_type: str, language: str, notes: _Notes) -> ParseResult:
    text, unescaped = _LITERAL_NEWLINES[(task_type, language)].subn("\n\n", text)
    if unescaped:
        notes.add("unescaped_literal_newlines")
    preamble, turns = _split_turns(text, task_type, language)
    if not turns:
        return _failure("refusal" if _is_refusal(text.strip()) else "no_markers", notes)
    if _trim_markup_edges(preamble.split("\n")):
        notes.add("dropped_preamble")
    if turns[-1][0] == GPT:
        turns[-1][1] = _drop_trailing_note(turns[-1][1], notes)
    turns = [[role, _clean_value(content, notes)] for role, content in turns]
    turns = _merge_same_role(turns, notes)

    if turns[0][0] == GPT:
        notes.add("dropped_leading_answer")
        turns = turns[1:]
    if turns and turns[-1][0] == HUMAN:
        notes.add("dropped_unanswered_question")
        turns = turns[:-1]
    if not turns:
        return _failure("unbalanced_turns", notes)

    rounds = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns), 2)]
    complete = [(question, answer) for question, answer in rounds if question and answer]
    if len(complete) < len(rounds):
        notes.add("dropped_empty_round")
    if not complete:
        return _failure("empty_turns", notes)

    limit = MAX_ROUNDS[task_type]
    if len(complete) > limit:
        notes.add(f"truncated_to_{limit}_round{'s' if limit > 1 else ''}")
        complete = complete[:limit]
    if any(_is_refusal(answer) for _, answer in complete):
        return _failure("refusal", notes)

    conversations: list[dict[str, str]] = []
    for index, (question, answer) in enumerate(complete):
        human = f"{IMAGE_TOKEN}\n{question}" if index == 0 else question
        conversations += [{"from": HUMAN, "value": human}, {"from": GPT, "value": answer}]
    return ParseResult(ok=True, conversations=conversations, rounds=len(complete), notes=list(notes))


def parse_answer(task_type: str, language: str, text: str, instruction_for_detail: str = "") -> ParseResult:
    """Turn a raw model answer into a LLaVA conversation, or say why it cannot be used.

    instruction_for_detail is the human turn of a description sample (see
    `tuwen.synthesis.prompts.description_instruction`); the other tasks take their questions from the answer.
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; known: {', '.join(TASK_TYPES)}")
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; known: {', '.join(LANGUAGES)}")
    if task_type == "detail" and not instruction_for_detail.strip():
        raise ValueError("a description sample needs instruction_for_detail for its human turn")

    notes = _Notes()
    text = text or ""
    if len(text) > MAX_ANSWER_CHARS:
        return _failure("answer_too_long", notes)
    if _INVALID_CHARACTERS.search(text):
        return _failure("invalid_characters", notes)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        return _failure("empty_answer", notes)
    if task_type == "detail":
        return _parse_detail(text, instruction_for_detail, notes)
    return _parse_dialogue(text, task_type, language, notes)
