"""Synthesis logic that needs no services: run params, language choice, request keys."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from tuwen.config import Settings
from tuwen.synthesis.prompts import get_prompt
from tuwen.synthesis.runner import RunParams, SynthesisError, request_key, sample_id, sampling_params


def test_params_defaults_and_validation() -> None:
    params = RunParams.from_params({})
    assert params.language == "zh" and params.task_types == ("conversation", "complex_reasoning", "detail")
    assert params.prompt_version is None and not params.force_regenerate
    for bad, message in [({"language": "fr"}, "language"), ({"task_types": ["poem"]}, "task_types"),
                         ({"language": "mix", "en_share": 2}, "en_share"), ({"limit": -1}, "limit")]:
        with pytest.raises(SynthesisError, match=message):
            RunParams.from_params(bad)


def test_language_mix_is_deterministic_and_near_the_share() -> None:
    params = RunParams.from_params({"language": "mix", "en_share": 0.3})
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    first = [params.language_for(h) for h in hashes]
    assert first == [params.language_for(h) for h in hashes]
    assert 0.27 < first.count("en") / len(first) < 0.33
    assert {RunParams.from_params({"language": "en"}).language_for(h) for h in hashes[:50]} == {"en"}


def test_request_key_changes_with_every_input_that_changes_the_answer() -> None:
    settings = Settings()
    prompt = get_prompt("detail", "zh", 1, settings.prompts_dir)
    sampling = sampling_params(settings, "detail")
    base = request_key("a" * 64, "detail", "zh", prompt, "m", sampling)
    assert base == request_key("a" * 64, "detail", "zh", prompt, "m", dict(reversed(list(sampling.items()))))
    variants = [
        request_key("b" * 64, "detail", "zh", prompt, "m", sampling),
        request_key("a" * 64, "conversation", "zh", prompt, "m", sampling),
        request_key("a" * 64, "detail", "en", prompt, "m", sampling),
        request_key("a" * 64, "detail", "zh", dataclasses.replace(prompt, sha256="0" * 64), "m", sampling),
        request_key("a" * 64, "detail", "zh", prompt, "other-model", sampling),
        request_key("a" * 64, "detail", "zh", prompt, "m", {**sampling, "temperature": 0.1}),
    ]
    assert len({base, *variants}) == 7
    assert sample_id(base).startswith("tw-") and len(sample_id(base)) == 27
