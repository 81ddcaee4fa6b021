"""The judge's verdict: the JSON schema it is asked for, and the parser of what comes back.

Each judge prompt version asks for one verdict shape (`VERDICT_SHAPES`):
- `statements` (prompt v1): `{"statements": [{"text": str, "label": "supported" | "contradicted" |
  "unverifiable"}]}`, every statement quoted back with its label;
- `contradicted` (prompt v2, the default): `{"contradicted": [str]}`, only the statements the image
  contradicts, an empty list when none does. The gate's check `faithfulness.judge` needs only that
  count, and v1's full quote-back cost +204 % completion tokens per sample (docs/BENCHMARKS.md); a
  v2 verdict is stored with n_contradicted = its length and n_supported / n_unverifiable NULL
  (not asked, which is not zero).

The request asks for the shape through `response_format` with a JSON schema (vLLM's structured
outputs: the OpenAI form `{"type": "json_schema", "json_schema": {"name": ..., "schema": ...}}`,
decoded under the schema's grammar by xgrammar or guidance). A server without guided decoding, or
with it off (TUWEN_JUDGE_STRUCTURED_OUTPUT=false), may answer with fenced JSON, JSON after some
chatter, or plain text lines, so the parser reads, in this order:

1. the whole answer as JSON; 2. JSON in a ```json fence; 3. a JSON object embedded in text;
4. lines `supported: …` / `contradicted: …` / `unverifiable: …` (zh `支持：…` / `矛盾：…` /
   `无法确认：…`), also as `- ` bullets, numbered, or as `[label] …`; for the `contradicted` shape
   also a line saying there is none (`无矛盾`, `none`, `矛盾：无`, `contradicted: none`).

Either JSON shape is read whatever was asked (a v1 object answering a v2 prompt is a full verdict);
the shape asked decides only how plain-text lines are read.

The answer is untrusted model output. The parser bounds the text it reads, the number of statements
and each statement's length, and never raises: anything it cannot use is a verdict with `ok=False`
and a short reason (stored as an `unparseable` judgement, paid for and not asked again).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

LABELS: tuple[str, ...] = ("supported", "contradicted", "unverifiable")
# The zh prompt names the labels in English, but a model answering in Chinese may not.
_ALIASES = {"supported": "supported", "contradicted": "contradicted", "unverifiable": "unverifiable",
            "支持": "supported", "矛盾": "contradicted", "无法确认": "unverifiable"}

MAX_TEXT_CHARS = 100_000  # about 25x what a 1,024-token verdict can be; more is a runaway answer
MAX_STATEMENTS = 50  # the prompt asks for at most 20 (v1) or 10 (v2)
MAX_CONTRADICTED = 10  # v2's schema bound, what the v2 prompt asks for: a runaway list ends there
MAX_STATEMENT_CHARS = 500  # longer statements are cut (and noted), not refused
_MAX_FENCES = 5
_MAX_EMBEDDED_TRIES = 20

STATEMENTS = "statements"  # v1: every statement with its label
CONTRADICTED = "contradicted"  # v2: the contradicted statements only
# The verdict shape each judge prompt version asks for; a new version declares its shape here (a
# prompt file with a version missing here is refused when loaded, tuwen.judge.prompts).
VERDICT_SHAPES: dict[int, str] = {1: STATEMENTS, 2: CONTRADICTED}

SCHEMA_NAMES = {STATEMENTS: "tuwen_judge_verdict", CONTRADICTED: "tuwen_judge_contradicted"}
SCHEMA_NAME = SCHEMA_NAMES[STATEMENTS]
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "statements": {
            "type": "array",
            "maxItems": MAX_STATEMENTS,
            "items": {
                "type": "object",
                "properties": {
                    "text": {"type": "string", "maxLength": MAX_STATEMENT_CHARS},
                    "label": {"type": "string", "enum": list(LABELS)},
                },
                "required": ["text", "label"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["statements"],
    "additionalProperties": False,
}
CONTRADICTED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "contradicted": {
            "type": "array",
            "maxItems": MAX_CONTRADICTED,
            "items": {"type": "string", "minLength": 1, "maxLength": MAX_STATEMENT_CHARS},
        },
    },
    "required": ["contradicted"],
    "additionalProperties": False,
}
SCHEMAS = {STATEMENTS: VERDICT_SCHEMA, CONTRADICTED: CONTRADICTED_SCHEMA}


def response_format(shape: str) -> dict[str, Any]:
    """The request's `response_format` for a verdict shape (OpenAI's json_schema form, which vLLM's
    server accepts)."""
    return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAMES[shape], "schema": SCHEMAS[shape]}}


@dataclass(frozen=True)
class Verdict:
    ok: bool
    statements: tuple[dict[str, str], ...] = ()  # {"text", "label"}, label one of LABELS
    form: str = ""  # json | json_fenced | json_embedded | text: how the answer was read
    error: str | None = None  # why it could not be used (ok=False)
    notes: tuple[str, ...] = field(default_factory=tuple)
    # STATEMENTS: every statement labelled; CONTRADICTED: the contradicted ones only, the others not asked
    shape: str = STATEMENTS

    def count(self, label: str) -> int | None:
        """Statements with the label; None for a label the verdict's shape does not report."""
        if self.shape == CONTRADICTED and label != "contradicted":
            return None
        return sum(1 for s in self.statements if s["label"] == label)

    @property
    def counts(self) -> dict[str, int | None]:
        return {label: self.count(label) for label in LABELS}

    @property
    def n_contradicted(self) -> int:
        return sum(1 for s in self.statements if s["label"] == "contradicted")


class _Refused(ValueError):
    """The JSON was found but is not a usable verdict; the message is the reason."""


def _label(value: Any) -> str:
    label = _ALIASES.get(value.strip().lower()) if isinstance(value, str) else None
    if label is None:
        raise _Refused(f"bad_label: {str(value)[:40]!r}")
    return label


def _statement_text(value: str, notes: set[str]) -> str:
    text = value.strip()
    if len(text) > MAX_STATEMENT_CHARS:
        notes.add("statement_cut")
        text = text[: MAX_STATEMENT_CHARS - 1] + "…"
    return text


def _from_json(obj: Any, form: str) -> Verdict:
    if not isinstance(obj, dict) or not isinstance(obj.get("statements"), list):
        raise _Refused("bad_shape: no statements list")
    items = obj["statements"]
    if len(items) > MAX_STATEMENTS:
        raise _Refused(f"too_many_statements: {len(items)} > {MAX_STATEMENTS}")
    notes: set[str] = set()
    statements = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
            raise _Refused("bad_statement: each needs a non-empty text and a label")
        statements.append({"text": _statement_text(item["text"], notes), "label": _label(item.get("label"))})
    return Verdict(True, tuple(statements), form, notes=tuple(sorted(notes)))


def _from_contradicted_json(obj: dict[str, Any], form: str) -> Verdict:
    items = obj["contradicted"]
    if not isinstance(items, list):
        raise _Refused("bad_shape: contradicted is not a list")
    if len(items) > MAX_STATEMENTS:
        raise _Refused(f"too_many_statements: {len(items)} > {MAX_STATEMENTS}")
    notes: set[str] = set()
    statements = []
    for item in items:
        # A string, as the schema asks; an object with a text, as a model imitating v1 might write
        # (one labelled other than contradicted is no contradiction: skipped, not counted).
        if isinstance(item, dict) and "label" in item and _ALIASES.get(str(item["label"]).strip().lower()) != "contradicted":
            continue
        value = item.get("text") if isinstance(item, dict) else item
        if not isinstance(value, str) or not value.strip():
            raise _Refused("bad_statement: each contradicted item needs a non-empty text")
        statements.append({"text": _statement_text(value, notes), "label": "contradicted"})
    return Verdict(True, tuple(statements), form, notes=tuple(sorted(notes)), shape=CONTRADICTED)


_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)


_NOT_JSON = object()


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: hostile nesting
        return _NOT_JSON


def _json_candidates(text: str) -> Iterator[tuple[Any, str]]:
    """Decoded JSON values that might be the verdict, most explicit first."""
    stripped = text.strip()
    if stripped.startswith("{") and (whole := _loads(stripped)) is not _NOT_JSON:
        yield whole, "json"
    for match in list(_FENCE.finditer(text))[:_MAX_FENCES]:
        if (fenced := _loads(match.group(1))) is not _NOT_JSON:
            yield fenced, "json_fenced"
    decoder = json.JSONDecoder()
    start = text.find("{")
    tries = 0
    while start != -1 and tries < _MAX_EMBEDDED_TRIES:
        tries += 1
        try:
            value, _ = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            pass
        else:
            yield value, "json_embedded"
        start = text.find("{", start + 1)


_LABEL_WORDS = "|".join(sorted(map(re.escape, _ALIASES), key=len, reverse=True))
_TEXT_LINE = re.compile(
    r"^\s*(?:[-*•·]\s*|\d{1,3}\s*[.)、．]\s*)?"  # an optional bullet or number
    r"(?:[\[【]\s*(?P<bracketed>" + _LABEL_WORDS + r")\s*[\]】]\s*[:：]?"  # [label] text
    r"|\**(?P<plain>" + _LABEL_WORDS + r")\**\s*[:：])"  # label: text (also **label**:)
    r"\s*(?P<text>\S.*?)\s*$",
    re.IGNORECASE,
)


# A line saying nothing contradicts the image (v2's plain-text answer when the list is empty), and
# the value of a `矛盾：…` line that means the same: neither is a contradicted statement.
_NONE_WORDS = (r"(?:无|没有|暂无|未发现)(?:任何)?(?:矛盾|与图片矛盾的陈述)(?:之处)?|无|没有|"
               r"none|n/?a|nothing|no contradictions?(?: found)?|nothing contradicts the image")
_NONE_LINE = re.compile(
    r"^\s*(?:[-*•·]\s*)?\**\s*(?:" + _NONE_WORDS + r")\s*\**\s*[。.!！]?\s*$", re.IGNORECASE)
_NONE_VALUE = re.compile(r"^[(（\[【]?\s*(?:" + _NONE_WORDS + r"|-|—)\s*[)）\]】]?\s*[。.!！]?$", re.IGNORECASE)


def _from_text(text: str, shape: str) -> Verdict:
    notes: set[str] = set()
    statements: list[dict[str, str]] = []
    answered = False  # a contradicted-only answer: a "none" line or labelled lines count as a verdict
    for line in text.splitlines():
        match = _TEXT_LINE.match(line)
        if match is None:
            answered = answered or (shape == CONTRADICTED and _NONE_LINE.match(line) is not None)
            continue  # chatter around the verdict
        label = _label(match["bracketed"] or match["plain"])
        if shape == CONTRADICTED:
            answered = True
            if label != "contradicted" or _NONE_VALUE.match(match["text"]):
                continue  # not asked for (v2 lists contradictions only), or "矛盾：无"
        if len(statements) == MAX_STATEMENTS:
            raise _Refused(f"too_many_statements: more than {MAX_STATEMENTS}")
        statements.append({"text": _statement_text(match["text"], notes), "label": label})
    if not statements and not answered:
        raise _Refused("no_verdict: neither JSON nor labelled lines")
    return Verdict(True, tuple(statements), "text", notes=tuple(sorted(notes)), shape=shape)


def parse_verdict(text: str | None, finish_reason: str | None = None, shape: str = STATEMENTS) -> Verdict:
    """The verdict in a judge's answer (module doc); `shape` is what the prompt asked for
    (`VERDICT_SHAPES[prompt version]`) and decides how plain-text lines are read. Never raises."""
    try:
        verdict = _parse(text, shape)
    except Exception as exc:  # a parser defect is this answer's problem, not the batch's
        verdict = Verdict(False, error=f"parser_error: {type(exc).__name__}")
    if not verdict.ok and finish_reason == "length":
        # The usual cause of a broken verdict: the answer ran out of max_tokens.
        return Verdict(False, error=f"truncated (finish_reason length); {verdict.error}")
    return verdict


def _parse(text: str | None, shape: str) -> Verdict:
    if shape not in SCHEMAS:
        return Verdict(False, error=f"bad_shape: unknown verdict shape {shape!r}")
    if not isinstance(text, str) or not text.strip():
        return Verdict(False, error="empty: no answer text")
    if len(text) > MAX_TEXT_CHARS:
        return Verdict(False, error=f"oversize: {len(text)} characters > {MAX_TEXT_CHARS}")
    for value, form in _json_candidates(text):
        if not isinstance(value, dict):
            continue
        try:
            # Either shape, whatever was asked: the keys say which one the model wrote.
            if "statements" in value:
                return _from_json(value, form)
            if "contradicted" in value:
                return _from_contradicted_json(value, form)
        except _Refused as exc:
            # Found and refused: the text form would only misread the JSON's own lines.
            return Verdict(False, form=form, error=str(exc))
    try:
        return _from_text(text, shape)
    except _Refused as exc:
        return Verdict(False, form="text", error=str(exc))
