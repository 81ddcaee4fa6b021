"""What a judge run asks, and the key each judgement is stored under: pure rules, no services.

A judgement's identity is the sample, the judge prompt's text (its SHA-256), the judge model and
every parameter that changes the completion: the same inputs give the same key, so a rerun finds
the stored verdict and pays nothing, and a new prompt version, model or parameter is a new
judgement beside the old one. Temperature is 0: the judge should give its one best reading.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from tuwen.config import Settings
from tuwen.domain import ParamError
from tuwen.judge.prompts import JudgePrompt, get_judge_prompt

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def param_flag(value: Any, name: str, default: bool) -> bool:
    """A boolean DAG param: true/false (or the usual spellings); null or empty means `default`."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ParamError(f"param {name} must be true, false or empty (the setting), got {value!r}")


@dataclass(frozen=True)
class JudgeRunParams:
    """Whether a run judges, and with which prompt version (None: latest)."""

    enabled: bool = False
    prompt_version: int | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any], settings: Settings) -> JudgeRunParams:
        """The DAG's `judge` param (null: TUWEN_JUDGE_ENABLED) and TUWEN_JUDGE_PROMPT_VERSION."""
        return cls(enabled=param_flag(params.get("judge"), "judge", settings.judge_enabled),
                   prompt_version=settings.judge_prompt_version)


def judge_params(settings: Settings) -> dict[str, Any]:
    """Everything besides prompt, sample, image and model that changes the judge's answer: stored and keyed."""
    return {
        "max_tokens": settings.judge_max_tokens,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": settings.seed,
        "structured": settings.judge_structured_output,
        "max_pixels": settings.max_pixels,
        "min_pixels": settings.min_pixels,
    }


def judge_request_key(sample_id: str, prompt: JudgePrompt, model: str, params: dict[str, Any]) -> str:
    """The judgement's identity: sha256 of the canonical JSON of what was asked."""
    identity = {"sample": sample_id, "judge_prompt": prompt.sha256, "model": model, "params": params}
    payload = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class JudgeSpec:
    """One sample's judge request: prompt, model, params and the key it is stored under."""

    prompt: JudgePrompt
    model: str
    params: dict[str, Any]
    key: str


def judge_spec(settings: Settings, params: JudgeRunParams, sample_id: str, language: str) -> JudgeSpec:
    """The one derivation of a sample's judge request (planner and batch both call it)."""
    prompt = get_judge_prompt(language, params.prompt_version, settings.prompts_dir)
    model = settings.judge_endpoint[1]
    values = judge_params(settings)
    return JudgeSpec(prompt, model, values, judge_request_key(sample_id, prompt, model, values))
