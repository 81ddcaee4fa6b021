"""What a synthesis run asks for, and the key each request is stored under: pure rules, no services.

`RunParams` reads the DAG's params with the shared parsers of `tuwen.domain` (a bad param is a
`ParamError` naming it). `request_spec` derives, in one place, everything that identifies one
completion — language, prompt, sampling and the request key — for the planner (which keys are
already stored) and for the batch (which generation rows to create) alike.

The request key is the generation's identity: the same image, task, language, prompt text, model
and sampling give the same key, so a rerun finds the stored answer and pays nothing. A forced
regeneration adds the forcing run's id to the key: the new answer becomes a new generation and a
new sample beside the old ones (which the releases that shipped them still reference), and a retry
of that same run finds its own answers stored. Normal runs' keys do not carry it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from tuwen.config import Settings
from tuwen.domain import LANGUAGES, TASK_TYPES, ParamError, param_choices
from tuwen.synthesis.prompts import Prompt, get_prompt

LANGUAGE_CHOICES: tuple[str, ...] = (*LANGUAGES, "mix")


def _number(value: Any, name: str, *, low: float, high: float | None = None, integer: bool = False) -> float:
    """A numeric param within [low, high]; the message names the param and the allowed range."""
    allowed = f"{'an integer' if integer else 'a number'} >= {low:g}" + (f" and <= {high:g}" if high is not None else "")
    try:
        number = int(value) if integer and not isinstance(value, bool) else float(value)
        if integer and isinstance(value, float) and value != int(value):
            raise ValueError
    except (TypeError, ValueError):
        raise ParamError(f"param {name} must be {allowed}, got {value!r}") from None
    if isinstance(value, bool) or number < low or (high is not None and number > high):
        raise ParamError(f"param {name} must be {allowed}, got {value!r}")
    return number


@dataclass(frozen=True)
class RunParams:
    """What a run (scheduled or manual) synthesizes; built from the DAG's params."""

    language: str = "zh"  # "zh", "en" or "mix"
    en_share: float = 0.0  # with language="mix": share of images annotated in English
    task_types: tuple[str, ...] = TASK_TYPES
    prompt_version: int | None = None  # None: latest
    limit: int | None = None
    regeneration: str | None = None  # set by a forced run: its run id, part of every request key

    @property
    def force_regenerate(self) -> bool:
        return self.regeneration is not None

    @classmethod
    def from_params(cls, params: dict[str, Any], run_id: str | None = None) -> RunParams:
        """Parse the DAG params; `run_id` names the run, which a forced regeneration needs."""
        raw_language = params.get("language")
        if isinstance(raw_language, str):
            raw_language = raw_language.strip()
        languages = param_choices(raw_language, LANGUAGE_CHOICES, "language", ("zh",))
        if len(languages) != 1:
            raise ParamError(f"param language must be one of {', '.join(LANGUAGE_CHOICES)}, got {languages!r}")
        language = languages[0]
        task_types = param_choices(params.get("task_types"), TASK_TYPES, "task_types", TASK_TYPES)
        raw_share = params.get("en_share")
        en_share = 0.5 if raw_share in (None, "") else _number(raw_share, "en_share", low=0.0, high=1.0)
        limit = params.get("limit")
        version = params.get("prompt_version")
        regeneration = None
        if params.get("force_regenerate"):
            if not run_id:
                raise ParamError("param force_regenerate needs the run's id (it keys the new answers)")
            regeneration = run_id
        return cls(
            language=language,
            en_share=en_share if language == "mix" else (1.0 if language == "en" else 0.0),
            task_types=task_types,
            prompt_version=None if version in (None, "") else int(_number(version, "prompt_version", low=1,
                                                                           integer=True)),
            limit=None if limit in (None, "") else int(_number(limit, "limit", low=0, integer=True)),
            regeneration=regeneration,
        )

    def language_for(self, image_sha256: str) -> str:
        """Deterministic per image, so a rerun asks for the same language."""
        if self.en_share <= 0.0:
            return "zh"
        if self.en_share >= 1.0:
            return "en"
        digest = hashlib.sha256(f"language:{image_sha256}".encode()).digest()
        return "en" if int.from_bytes(digest[:8], "big") / 2**64 < self.en_share else "zh"


def sampling_params(settings: Settings, task_type: str) -> dict[str, Any]:
    """Everything that changes the completion besides prompt, image and model: stored and keyed."""
    return {
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_tokens": settings.max_tokens[task_type],
        "seed": settings.seed,
        "max_pixels": settings.max_pixels,
        "min_pixels": settings.min_pixels,
    }


def request_key(image_sha256: str, task_type: str, language: str, prompt: Prompt, model: str,
                sampling: dict[str, Any], regeneration: str | None = None) -> str:
    """The generation's identity: same inputs, same key, same stored answer."""
    identity: dict[str, Any] = {"image": image_sha256, "task": task_type, "language": language,
                                "prompt": prompt.sha256, "model": model, "sampling": sampling}
    if regeneration is not None:
        identity["regeneration"] = regeneration
    payload = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def sample_id(key: str) -> str:
    return f"tw-{key[:24]}"


@dataclass(frozen=True)
class RequestSpec:
    """One image's request in a run: what is asked, with which settings, stored under which key."""

    task_type: str
    language: str
    prompt: Prompt
    sampling: dict[str, Any]
    key: str


def request_spec(settings: Settings, params: RunParams, image_sha256: str, task_type: str) -> RequestSpec:
    """The one derivation of an image's request (planner and batch both call it)."""
    language = params.language_for(image_sha256)
    prompt = get_prompt(task_type, language, params.prompt_version, settings.prompts_dir)
    sampling = sampling_params(settings, task_type)
    key = request_key(image_sha256, task_type, language, prompt, settings.vlm_model, sampling, params.regeneration)
    return RequestSpec(task_type, language, prompt, sampling, key)


def generation_row(settings: Settings, spec: RequestSpec, image_id: int, dag_id: str | None = None,
                   run_id: str | None = None, task_id: str | None = None, map_index: int | None = None
                   ) -> dict[str, Any]:
    """The pending `generation` row of a request, as the plan (the run's queue) and a batch create it."""
    return {
        "request_key": spec.key, "image_id": image_id, "task_type": spec.task_type, "language": spec.language,
        "prompt_id": spec.prompt.id, "prompt_version": spec.prompt.version, "prompt_sha256": spec.prompt.sha256,
        "model": settings.vlm_model, "sampling": spec.sampling, "status": "pending",
        "dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index,
    }
