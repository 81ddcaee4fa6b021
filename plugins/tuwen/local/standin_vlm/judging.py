"""The stand-in's part in the faithfulness judge (issue 17): known contradictions in, labels out.

THIS TESTS THE JUDGE'S PLUMBING, NOT A MODEL'S JUDGEMENT. The stand-in writes its answers from a
handful of measurements (dominant colours, size, OCR text); here it (1) can slip one false statement
of a known kind into an answer, and (2) answers a judge request by re-measuring the image and
comparing each statement of the sample with those same measurements. A test can then check, end to
end, that a contradiction put into a sample comes back from the judge as `contradicted`, is stored,
and fails the quality gate — and that clean samples pass. It says nothing about how well a real VLM
judges: the rules below only understand the stand-in's own phrasing.

Injected contradictions (`plan_injection`), one per chosen answer, each a sentence of its own:
  colour  a colour that is neither among the image's four dominant colours nor a half's colour
  count   a pixel size (width × height) whose aspect ratio is far from the measured one
  quote   a quoted text 「…」 that the image's OCR text does not hold (or the image has no OCR text)
Whether an answer carries one is drawn from a seed of (image, prompt) alone, so a rate of R marks
the same requests on every run, and a higher rate marks a superset of a lower one's requests.

Judging (`judge_sample`): a judge request is recognised by its prompt's opening (the phrases in
`JUDGE_MARKERS`); the sample is read from its `问：…\\n答：…` (zh) or `Q: …\\nA: …` (en) rounds;
each answer is split into sentences, and each sentence is labelled from a fresh measurement — it
never consults the record of what was injected:
  contradicted  a colour word outside the measured colours, a width × height whose aspect ratio is
                more than 15 % off the image's, or a quoted text that is not in the OCR text
  supported     otherwise, when the sentence makes one of those claims and it matches
  unverifiable  the rest (advice, guesses, mood)
The answer takes the shape the prompt version asks for, told apart by the prompt text (the JSON
example it shows, `CONTRADICTED_ONLY_MARKER`): v1 every statement with its label, v2 the contradicted
statements only (`{"contradicted": [...]}`, or plain `矛盾：…` / `contradicted: …` lines, `无矛盾` /
`none` when there is none). Both come from the same labelling, so v1 and v2 flag the same samples.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from tuwen.local.standin_vlm.answers import COLOUR_NAMES, ImageFeatures

INJECTION_KINDS = ("colour", "count", "quote")
LABELS = ("supported", "contradicted", "unverifiable")
# Prompt phrases that make a request a judge request (the first sentence of faithfulness.zh / .en, v1 and v2).
JUDGE_MARKERS = {"zh": "图片标注审核员", "en": "image annotation reviewer"}
# The JSON example of judge prompt v2 (faithfulness.*.v2): such a request wants the contradicted
# statements only. v1's prompts show `{"statements": ...` instead.
CONTRADICTED_ONLY_MARKER = '{"contradicted"'
# Plain-text answer of a contradicted-only request with nothing contradicted (the parser's none line).
NO_CONTRADICTION = {"zh": "无矛盾", "en": "none"}
MAX_CONTRADICTED = 10  # what judge prompt v2 asks for at most
# Where the rendered sample starts in the judge prompts; without it the whole prompt is searched.
SAMPLE_HEADERS = {"zh": "待核对的问答：", "en": "The exchange to check:"}
# Plain-text labels (a server without guided decoding), per prompt language.
PLAIN_LABELS = {
    "zh": {"supported": "支持", "contradicted": "矛盾", "unverifiable": "无法确认"},
    "en": {"supported": "supported", "contradicted": "contradicted", "unverifiable": "unverifiable"},
}
MAX_STATEMENTS = 20  # what the judge prompt asks for
# A stated width × height is "the same picture" when its aspect ratio is within 15 % of the measured
# one (a rescaled copy states other numbers but the same shape); injected sizes are 1.6× or more off.
RATIO_TOLERANCE = 1.15
COUNT_FACTORS = (0.5, 0.6, 1.6, 2.0)

FAKE_TEXTS = {
    "zh": ("欢迎光临", "限时特价", "营业中", "禁止停车", "安全出口", "新品上市"),
    "en": ("OPEN 24 HOURS", "SALE 50% OFF", "EXIT", "NO PARKING", "WELCOME", "FRESH BREAD"),
}
COLOUR_TEMPLATES = {
    "zh": ("画面一角还有一块醒目的{c}区域。", "画面中央能看到一个{c}的物体。"),
    "en": ("There is also a striking {c} patch in one corner of the picture.",
           "A {c} object stands in the middle of the picture."),
}
COUNT_TEMPLATES = {"zh": ("这张图片的实际尺寸是{w}×{h}像素。",), "en": ("The image actually measures {w}×{h} pixels.",)}
QUOTE_TEMPLATES = {
    "zh": ("图中还写着「{t}」几个字。", "画面下方印有文字「{t}」。"),
    "en": ("The picture also carries the words 「{t}」.", "The text 「{t}」 is printed at the bottom of the picture."),
}


@dataclass(frozen=True)
class Injection:
    """One false statement put into an answer on purpose; `statement` is the exact sentence added."""

    kind: str
    statement: str


def _normal(text: str) -> str:
    return re.sub(r"\s+", "", text).casefold()


def measured_colours(features: ImageFeatures) -> set[str]:
    """Colours the stand-in's answers may name: the four dominant ones and each half's own."""
    return {key for key, _share in features.colours} | set(features.regions.values())


def draw_injection(request_key: str, rate: float) -> random.Random | None:
    """The injection RNG when this request's answer carries a contradiction at `rate`, else None.

    Its own RNG, seeded from the request key (image and prompt), so the answer's text RNG is untouched
    and rate 0 gives byte-identical answers to a stand-in without this feature."""
    if rate <= 0:
        return None
    rng = random.Random(f"contradiction:{request_key}")
    return rng if rng.random() < rate else None


def plan_injection(features: ImageFeatures, language: str, rng: random.Random) -> Injection:
    """A false statement about this image of one of INJECTION_KINDS, in the answer's language."""
    zh = language == "zh"
    lang = "zh" if zh else "en"
    absent = [key for key in COLOUR_NAMES if key not in measured_colours(features)]
    ocr = _normal(features.text)
    fake_texts = [t for t in FAKE_TEXTS[lang] if _normal(t) not in ocr]
    kinds = [k for k in INJECTION_KINDS if (k != "colour" or absent) and (k != "quote" or fake_texts)]
    kind = rng.choice(kinds)
    if kind == "colour":
        colour = COLOUR_NAMES[rng.choice(absent)][0 if zh else 1]
        return Injection(kind, rng.choice(COLOUR_TEMPLATES[lang]).format(c=colour))
    if kind == "count":
        height = max(1, round(features.height * rng.choice(COUNT_FACTORS)))
        return Injection(kind, rng.choice(COUNT_TEMPLATES[lang]).format(w=features.width, h=height))
    return Injection(kind, rng.choice(QUOTE_TEMPLATES[lang]).format(t=rng.choice(fake_texts)))


# --------------------------------------------------------------------------------------------
# Judging
# --------------------------------------------------------------------------------------------


def contradicted_only(prompt: str) -> bool:
    """Whether a judge prompt asks for the contradicted statements only (prompt v2 and later)."""
    header = next((h for h in SAMPLE_HEADERS.values() if h in prompt), None)
    # Only the instructions count: the sample's own text could quote the marker.
    instructions = prompt[: prompt.index(header)] if header is not None else prompt
    return CONTRADICTED_ONLY_MARKER in instructions


def judge_language(prompt: str) -> str | None:
    """'zh' / 'en' when the prompt is a faithfulness-judge request, else None."""
    for language, marker in JUDGE_MARKERS.items():
        if marker in prompt:
            return language
    return None


_ROUND_RE = {
    "zh": re.compile(r"^问[：:][ \t]*(.*?)\n答[：:][ \t]*(.*?)(?=\n\s*\n问[：:]|\Z)", re.S | re.M),
    "en": re.compile(r"^Q:[ \t]*(.*?)\nA:[ \t]*(.*?)(?=\n\s*\nQ:|\Z)", re.S | re.M),
}


def sample_answers(prompt: str, language: str) -> list[str]:
    """The answers of the sample rendered into a judge prompt (questions are not judged)."""
    header = SAMPLE_HEADERS[language]
    text = prompt[prompt.rindex(header) + len(header):] if header in prompt else prompt
    return [answer.strip() for _question, answer in _ROUND_RE[language].findall(text) if answer.strip()]


_SENTENCE_END_RE = re.compile(r"(?<=[。！？；!?])|(?<=\.)\s+")
_WORD_RE = re.compile(r"\w")


def split_statements(answer: str) -> list[str]:
    """An answer's sentences: at 。！？；!?, at '. ' (not a decimal point) and at line breaks."""
    statements = []
    for line in answer.splitlines():
        for part in _SENTENCE_END_RE.split(line):
            part = part.strip()
            if part and _WORD_RE.search(part):
                statements.append(part)
    return statements


_QUOTE_RE = re.compile(r"「([^「」]{1,200})」")
_COLOUR_WORDS_ZH = {zh: key for key, (zh, _en) in COLOUR_NAMES.items()}
_COLOUR_ZH_RE = re.compile("|".join(_COLOUR_WORDS_ZH))
_COLOUR_EN_RE = re.compile(r"\b(" + "|".join(en for _zh, en in COLOUR_NAMES.values()) + r"|gray)\b", re.I)
# The stand-in's own colour words that are no claim about the image: "muted, close to black and white"
# (a saturation), and the ink advice "use dark (black or dark grey) text for contrast".
_NOT_A_COLOUR_CLAIM_RE = re.compile(r"close to black and white|接近黑白", re.I)
_SIZE_RES = (
    re.compile(r"(\d{1,5})\s*[×xX]\s*(\d{1,5})"),
    re.compile(r"宽\s*(\d{1,5})\s*像素[、，,]\s*高\s*(\d{1,5})\s*像素"),
    re.compile(r"(\d{1,5}) pixels wide and (\d{1,5}) pixels tall"),
    re.compile(r"(\d{1,5}) by (\d{1,5}) pixels"),
)
# A size after these words is some other screen's (the stand-in compares the image with a phone's).
_OTHER_SCREEN_RE = re.compile(r"手机|屏|phone|screen", re.I)


def _is_ink_advice(sentence: str) -> bool:
    lowered = sentence.casefold()
    return ("文字" in sentence and "对比度" in sentence) or ("text" in lowered and "contrast" in lowered)


def _colour_keys(sentence: str, language: str) -> set[str]:
    if _is_ink_advice(sentence):
        return set()
    text = _NOT_A_COLOUR_CLAIM_RE.sub("", _QUOTE_RE.sub("", sentence))  # a quoted text's words are no claim
    if language == "zh":
        return {_COLOUR_WORDS_ZH[word] for word in _COLOUR_ZH_RE.findall(text)}
    return {"grey" if word.lower() == "gray" else word.lower() for word in _COLOUR_EN_RE.findall(text)}


def _size_checks(sentence: str, features: ImageFeatures) -> list[bool | None]:
    """Per stated image size: True (the measured size), False (another shape), None (rescaled copy)."""
    results: list[bool | None] = []
    seen: set[tuple[int, int]] = set()
    for pattern in _SIZE_RES:
        for match in pattern.finditer(sentence):
            if _OTHER_SCREEN_RE.search(sentence[: match.start()]):
                continue
            width, height = int(match.group(1)), int(match.group(2))
            if (width, height) in seen or not width or not height:
                continue
            seen.add((width, height))
            if abs(width - features.width) <= 2 and abs(height - features.height) <= 2:
                results.append(True)
            elif abs(math.log((width / height) / (features.width / features.height))) > math.log(RATIO_TOLERANCE):
                results.append(False)
            else:
                results.append(None)
    return results


def label_statement(sentence: str, language: str, features: ImageFeatures) -> str:
    """supported / contradicted / unverifiable for one sentence, from the image's measurements."""
    checks: list[bool | None] = []
    colours = measured_colours(features)
    checks += [key in colours for key in _colour_keys(sentence, language)]
    ocr = _normal(features.text)
    checks += [bool(ocr) and _normal(quoted) in ocr for quoted in _QUOTE_RE.findall(sentence)]
    checks += _size_checks(sentence, features)
    if False in checks:
        return "contradicted"
    return "supported" if True in checks else "unverifiable"


def judge_sample(prompt: str, language: str, features: ImageFeatures) -> list[dict[str, str]]:
    """The labelled statements of the sample in a judge prompt, at most MAX_STATEMENTS, in answer order.

    When there are more, contradicted ones are kept first, then supported, then unverifiable (a
    reviewer lists what matters), and the kept ones go back in their order in the answers."""
    labelled = [
        (sentence, label_statement(sentence, language, features))
        for answer in sample_answers(prompt, language)
        for sentence in split_statements(answer)
    ]
    order = sorted(range(len(labelled)), key=lambda i: LABELS.index(labelled[i][1]))
    kept = sorted(order[:MAX_STATEMENTS])
    return [{"text": labelled[i][0], "label": labelled[i][1]} for i in kept]


def render_judgement(statements: Sequence[dict[str, str]], language: str, as_json: bool,
                     only_contradicted: bool = False) -> str:
    """JSON as the response_format schema asks, or plain `label: text` lines for the fallback parser;
    with `only_contradicted` (prompt v2) the contradicted statements alone, at most MAX_CONTRADICTED."""
    if only_contradicted:
        texts = [s["text"] for s in statements if s["label"] == "contradicted"][:MAX_CONTRADICTED]
        if as_json:
            return json.dumps({"contradicted": texts}, ensure_ascii=False)
        separator = "：" if language == "zh" else ": "
        label = PLAIN_LABELS[language]["contradicted"]
        return "\n".join(f"{label}{separator}{t}" for t in texts) or NO_CONTRADICTION[language]
    if as_json:
        return json.dumps({"statements": list(statements)}, ensure_ascii=False)
    labels = PLAIN_LABELS[language]
    separator = "：" if language == "zh" else ": "
    return "\n".join(f"{labels[s['label']]}{separator}{s['text']}" for s in statements)


def unlabelled(answer: str) -> str:
    """A judge answer with its labels gone (the stand-in's 'malformed' fault for judge requests)."""
    try:
        data = json.loads(answer)
        if "contradicted" in data:
            return "\n".join(map(str, data["contradicted"]))
        return "\n".join(str(s.get("text", "")) for s in data["statements"])
    except (ValueError, TypeError, KeyError, AttributeError):
        labels = "|".join(label for names in PLAIN_LABELS.values() for label in names.values())
        stripped = re.sub(rf"^(?:{labels})[：:]\s*", "", answer, flags=re.M)
        # v2's "nothing contradicted" line is a verdict too: gone, the answer says nothing.
        return "" if stripped in NO_CONTRADICTION.values() else stripped
