"""The judge's prompts as versioned data, and a sample rendered into them.

Judge prompt files live in `prompts/judge/` as `<name>.<language>.v<version>.txt`, in the format of
the synthesis prompts (`tuwen.synthesis.prompts`: optional front matter, then the text, hashed into
every judgement's key). The text holds the placeholder `{sample}` exactly once; it is replaced
with `str.replace`, never `str.format`, because the prompt shows the verdict's JSON with braces.

The sample is rendered round by round, `问：{question}\\n答：{answer}` (zh) or
`Q: {question}\\nA: {answer}` (en), rounds separated by one blank line, the `<image>` token and
the whitespace around it removed from the question (the image is sent as the image). The stand-in
VLM reads the rounds back in this form to judge them, so the form is a contract: change it with a
new prompt version and the stand-in together.

Each version asks for one verdict shape (`tuwen.judge.verdict.VERDICT_SHAPES`: v1 every statement
labelled, v2 the contradicted ones only); a file whose version has no declared shape is refused, so
a new version cannot go out with a schema and parser that do not match it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuwen.config import Settings
from tuwen.domain import GPT, HUMAN, IMAGE_TOKEN, LANGUAGES
from tuwen.judge.verdict import VERDICT_SHAPES
from tuwen.synthesis.prompts import PromptError, read_prompt_text

JUDGE_DIR = "judge"  # under TUWEN_PROMPTS_DIR
FAITHFULNESS = "faithfulness"
PLACEHOLDER = "{sample}"

_JUDGE_FILE = re.compile(r"^(?P<name>[a-z_]+)\.(?P<language>[a-z]{2})\.v(?P<version>[1-9][0-9]*)\.txt$")
_ROUND_LABELS = {"zh": ("问：", "答："), "en": ("Q: ", "A: ")}
_IMAGE_TOKEN = re.compile(r"\s*" + re.escape(IMAGE_TOKEN) + r"\s*")


@dataclass(frozen=True)
class JudgePrompt:
    id: str  # "<name>.<language>.v<version>", the file name without ".txt"
    name: str
    language: str
    version: int
    text: str
    sha256: str  # of text, UTF-8; part of every judgement's request key
    source: str = ""

    @property
    def verdict(self) -> str:
        """The verdict shape this version asks for (STATEMENTS or CONTRADICTED, tuwen.judge.verdict)."""
        return VERDICT_SHAPES[self.version]


def load_judge_prompt_file(path: Path) -> JudgePrompt:
    """Read one judge prompt file; its name gives the judge, language and version."""
    match = _JUDGE_FILE.match(path.name)
    if match is None:
        raise PromptError(f"{path.name}: judge prompt files are named <name>.<language>.v<N>.txt")
    if match["language"] not in LANGUAGES:
        raise PromptError(f"{path.name}: unknown language {match['language']!r}; known: {', '.join(LANGUAGES)}")
    if int(match["version"]) not in VERDICT_SHAPES:
        raise PromptError(f"{path.name}: no verdict shape is declared for version {match['version']} "
                          f"(tuwen.judge.verdict.VERDICT_SHAPES)")
    meta, text, sha256 = read_prompt_text(path)
    if text.count(PLACEHOLDER) != 1:
        raise PromptError(f"{path.name}: a judge prompt holds {PLACEHOLDER} exactly once, "
                          f"found {text.count(PLACEHOLDER)}")
    return JudgePrompt(id=path.name.removesuffix(".txt"), name=match["name"], language=match["language"],
                       version=int(match["version"]), text=text, sha256=sha256, source=meta.get("source", ""))


def load_judge_prompts(prompts_dir: Path | str) -> dict[str, JudgePrompt]:
    """Every judge prompt under `<prompts_dir>/judge/`, keyed by id; other files are ignored."""
    directory = Path(prompts_dir) / JUDGE_DIR
    if not directory.is_dir():
        raise PromptError(f"judge prompts directory {directory} does not exist")
    prompts = [load_judge_prompt_file(path) for path in sorted(directory.glob("*.txt"))]
    return {prompt.id: prompt for prompt in prompts}


@functools.lru_cache(maxsize=8)
def _cached_judge_prompts(prompts_dir: str) -> dict[str, JudgePrompt]:
    return load_judge_prompts(prompts_dir)


def get_judge_prompt(language: str, version: int | None = None, prompts_dir: Path | str | None = None,
                     name: str = FAITHFULNESS) -> JudgePrompt:
    """The judge prompt in a language: the given version, or the latest when version is None."""
    if language not in LANGUAGES:
        raise PromptError(f"unknown language {language!r}; known: {', '.join(LANGUAGES)}")
    directory = Path(prompts_dir) if prompts_dir is not None else Settings().prompts_dir
    candidates = {p.version: p for p in _cached_judge_prompts(str(directory.resolve())).values()
                  if p.name == name and p.language == language}
    if not candidates:
        raise PromptError(f"no {name!r} judge prompt in {language!r} under {directory / JUDGE_DIR}")
    if version is None:
        return candidates[max(candidates)]
    if version not in candidates:
        raise PromptError(f"no version {version} of the {name!r} judge prompt in {language!r}; "
                          f"available: {', '.join(f'v{v}' for v in sorted(candidates))}")
    return candidates[version]


def _value(turn: Any) -> str:
    value = turn.get("value") if isinstance(turn, dict) else None
    return value if isinstance(value, str) else ""


def render_sample(conversations: Sequence[Any], language: str) -> str:
    """The sample's rounds in the contract's form (module doc); a turn without a partner is kept alone."""
    if language not in _ROUND_LABELS:
        raise PromptError(f"unknown language {language!r}; known: {', '.join(_ROUND_LABELS)}")
    q_label, a_label = _ROUND_LABELS[language]
    rounds: list[str] = []
    question: str | None = None
    for turn in conversations:
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if speaker == HUMAN:
            if question is not None:
                rounds.append(f"{q_label}{question}")
            question = _IMAGE_TOKEN.sub("", _value(turn)).strip()
        elif speaker == GPT:
            answer = f"{a_label}{_value(turn).strip()}"
            rounds.append(answer if question is None else f"{q_label}{question}\n{answer}")
            question = None
    if question is not None:
        rounds.append(f"{q_label}{question}")
    return "\n\n".join(rounds)


def render_prompt(prompt: JudgePrompt, conversations: Sequence[Any]) -> str:
    """The judge prompt with the sample in place of {sample} (a literal replace: the text has JSON braces)."""
    return prompt.text.replace(PLACEHOLDER, render_sample(conversations, prompt.language), 1)
