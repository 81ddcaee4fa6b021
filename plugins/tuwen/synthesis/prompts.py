"""Prompts as versioned data, and the human instructions of the description task.

Prompt files live in `prompts/` as `<task_type>.<language>.v<version>.txt`: an optional YAML front
matter block (`source`, `notes`) between `---` lines, then the prompt text. Adding a prompt version
is adding a file; a released file is never edited, because generations are keyed by the prompt's
SHA-256 and an edit would silently fork the response cache.

The description task has no model-written question: like LLaVA's detail_23k, its human turn is one
of a fixed list of instructions, picked deterministically from the image key so reruns agree.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from tuwen.config import Settings
from tuwen.domain import LANGUAGES, TASK_TYPES

_PROMPT_FILE = re.compile(r"^(?P<task_type>[a-z_]+)\.(?P<language>[a-z]{2})\.v(?P<version>[1-9][0-9]*)\.txt$")
_FRONT_MATTER_KEYS = frozenset({"source", "notes"})

# The English list is the one the LLaVA paper gives for detail_23k (Table 9); the Chinese list is
# written to be as varied and as natural, not translated one by one.
DETAIL_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "zh": (
        "请详细描述这张图片。",
        "详细描述一下这张图片的内容。",
        "请对这张图片进行详细的描述。",
        "这张图片里有什么？请详细说明。",
        "请全面地描述这张图片中的场景。",
        "仔细观察这张图片，并详细描述你看到的内容。",
        "请逐一介绍这张图片中的各个元素。",
        "能详细讲讲这张图片展示了什么吗？",
        "请用一段详细的文字描述这张图片。",
        "请分析这张图片的内容，尽可能详细地描述。",
        "描述这张图片中的场景和细节。",
        "请详细解读这张图片。",
        "这张图片展示了怎样的画面？请详细描述。",
        "请详尽地描绘这张图片。",
        "请描述这张图片，尽量不要遗漏细节。",
        "给这张图片写一段详细的描述。",
    ),
    "en": (
        "Describe the following image in detail.",
        "Provide a detailed description of the given image.",
        "Give an elaborate explanation of the image you see.",
        "Share a comprehensive rundown of the presented image.",
        "Offer a thorough analysis of the image.",
        "Explain the various aspects of the image before you.",
        "Clarify the contents of the displayed image with great detail.",
        "Characterize the image using a well-detailed description.",
        "Break down the elements of the image in a detailed manner.",
        "Walk through the important details of the image.",
        "Portray the image with a rich, descriptive narrative.",
        "Narrate the contents of the image with precision.",
        "Analyze the image in a comprehensive and detailed manner.",
        "Illustrate the image through a descriptive explanation.",
        "Examine the image closely and share its details.",
        "Write an exhaustive depiction of the given image.",
    ),
}


class PromptError(LookupError):
    """A prompt file is malformed, or the requested prompt does not exist; the message says which."""


@dataclass(frozen=True)
class Prompt:
    id: str  # "<task_type>.<language>.v<version>", the file name without ".txt"
    task_type: str
    language: str
    version: int
    text: str
    sha256: str  # of text, UTF-8; part of every generation's request key
    source: str = ""


def split_front_matter(raw: str, path: Path) -> tuple[dict[str, str], str]:
    """(front matter, rest) of a prompt file's text; the judge's prompt files share this format."""
    if not raw.startswith("---\n"):
        return {}, raw
    end = raw.find("\n---\n", 3)
    if end == -1:
        raise PromptError(f"{path.name}: front matter opened with '---' is never closed")
    meta = yaml.safe_load(raw[4:end]) or {}
    if not isinstance(meta, dict):
        raise PromptError(f"{path.name}: front matter must be a YAML mapping")
    unknown = set(meta) - _FRONT_MATTER_KEYS
    if unknown:
        # The file name is the prompt's identity; a task_type or version here could contradict it.
        raise PromptError(
            f"{path.name}: unknown front matter keys {sorted(unknown)}; allowed: {sorted(_FRONT_MATTER_KEYS)}"
        )
    return {k: str(v) for k, v in meta.items()}, raw[end + len("\n---\n") :]


def read_prompt_text(path: Path) -> tuple[dict[str, str], str, str]:
    """(front matter, prompt text, SHA-256 of the text) of one prompt file, the text never empty.

    The hash is of the text without the front matter: notes can be added to a released file
    without forking the response cache, the text cannot be changed.
    """
    meta, body = split_front_matter(path.read_text(encoding="utf-8"), path)
    text = body.strip("\n")
    if not text.strip():
        raise PromptError(f"{path.name}: the prompt text is empty")
    return meta, text, hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_prompt_file(path: Path) -> Prompt:
    """Read one prompt file; its name gives task type, language and version."""
    match = _PROMPT_FILE.match(path.name)
    if match is None:
        raise PromptError(f"{path.name}: prompt files are named <task_type>.<language>.v<N>.txt")
    task_type, language = match["task_type"], match["language"]
    if task_type not in TASK_TYPES:
        raise PromptError(f"{path.name}: unknown task type {task_type!r}; known: {', '.join(TASK_TYPES)}")
    if language not in LANGUAGES:
        raise PromptError(f"{path.name}: unknown language {language!r}; known: {', '.join(LANGUAGES)}")
    meta, text, sha256 = read_prompt_text(path)
    return Prompt(
        id=path.name.removesuffix(".txt"),
        task_type=task_type,
        language=language,
        version=int(match["version"]),
        text=text,
        sha256=sha256,
        source=meta.get("source", ""),
    )


def load_prompts(prompts_dir: Path | str) -> dict[str, Prompt]:
    """Every prompt in the directory, keyed by id ("conversation.zh.v1"). Other files (README) are ignored."""
    directory = Path(prompts_dir)
    if not directory.is_dir():
        raise PromptError(f"prompts directory {directory} does not exist")
    prompts = [load_prompt_file(path) for path in sorted(directory.glob("*.txt"))]
    return {prompt.id: prompt for prompt in prompts}


@functools.lru_cache(maxsize=8)
def _cached_prompts(prompts_dir: str) -> dict[str, Prompt]:
    return load_prompts(prompts_dir)


def get_prompt(
    task_type: str, language: str, version: int | None = None, prompts_dir: Path | str | None = None
) -> Prompt:
    """The prompt for a task and language: the given version, or the latest when version is None.

    prompts_dir defaults to Settings().prompts_dir; files are read once per directory per process.
    """
    directory = prompts_dir if prompts_dir is not None else Settings().prompts_dir
    return _prompt_for(task_type, language, version, str(directory))


# Every request of a run asks for its prompt (twice: the batch's keys, then each claimed row), and resolving
# the directory is a few system calls: 0.3 ms a call, half a second of a 750-image task's CPU. A failed
# lookup is not cached (lru_cache keeps only returns), so an error is raised every time.
@functools.lru_cache(maxsize=256)
def _prompt_for(task_type: str, language: str, version: int | None, directory: str) -> Prompt:
    if task_type not in TASK_TYPES:
        raise PromptError(f"unknown task type {task_type!r}; known: {', '.join(TASK_TYPES)}")
    if language not in LANGUAGES:
        raise PromptError(f"unknown language {language!r}; known: {', '.join(LANGUAGES)}")
    candidates = {
        p.version: p
        for p in _cached_prompts(str(Path(directory).resolve())).values()
        if p.task_type == task_type and p.language == language
    }
    if not candidates:
        raise PromptError(f"no prompt for task {task_type!r} in language {language!r} under {directory}")
    if version is None:
        return candidates[max(candidates)]
    if version not in candidates:
        raise PromptError(
            f"no version {version} of the {task_type!r} prompt in {language!r}; "
            f"available: {', '.join(f'v{v}' for v in sorted(candidates))}"
        )
    return candidates[version]


def forget_prompts() -> None:
    """Read the prompt files again on the next lookup (a version added while this process runs)."""
    _prompt_for.cache_clear()
    _cached_prompts.cache_clear()


def description_instruction(image_key: str, language: str) -> str:
    """The human turn of a description sample: one instruction, the same for the same image every time."""
    if language not in DETAIL_INSTRUCTIONS:
        raise PromptError(f"unknown language {language!r}; known: {', '.join(DETAIL_INSTRUCTIONS)}")
    instructions = DETAIL_INSTRUCTIONS[language]
    # Salted so the pick is independent of anything else derived from the image hash (task dealing).
    digest = hashlib.sha256(f"detail-instruction:{image_key}".encode()).digest()
    return instructions[int.from_bytes(digest[:8], "big") % len(instructions)]
