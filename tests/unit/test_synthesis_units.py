"""Synthesis logic that needs no services: run params, language choice, request keys."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from tuwen.config import Settings
from tuwen.domain import ParamError
from tuwen.synthesis.keys import RunParams, request_key, request_spec, sample_id, sampling_params
from tuwen.synthesis.prompts import get_prompt


def test_params_defaults_and_validation() -> None:
    params = RunParams.from_params({})
    assert params.language == "zh" and params.task_types == ("conversation", "complex_reasoning", "detail")
    assert params.prompt_version is None and not params.force_regenerate
    for bad, message in [({"language": "fr"}, "language"), ({"task_types": ["poem"]}, "task_types"),
                         ({"language": "mix", "en_share": 2}, "en_share"), ({"limit": -1}, "limit"),
                         ({"limit": "many"}, "limit"), ({"en_share": "half"}, "en_share"),
                         ({"prompt_version": 0}, "prompt_version"), ({"prompt_version": "v2"}, "prompt_version"),
                         ({"force_regenerate": True}, "force_regenerate")]:
        with pytest.raises(ParamError, match=f"param {message}"):
            RunParams.from_params(bad)
    assert RunParams.from_params({"task_types": "detail", "limit": "5", "prompt_version": "2"}) == RunParams(
        task_types=("detail",), limit=5, prompt_version=2)


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


def test_a_forced_regeneration_is_keyed_by_its_run_and_a_normal_run_keeps_its_key() -> None:
    settings = Settings()
    normal = RunParams.from_params({})
    forced = RunParams.from_params({"force_regenerate": True}, run_id="manual__2026-12-01")
    assert forced.force_regenerate and not normal.force_regenerate
    image = "c" * 64
    plain, again = request_spec(settings, normal, image, "detail"), request_spec(settings, forced, image, "detail")
    # A normal run's key is the one it always was (stored answers keep being found)...
    prompt = get_prompt("detail", "zh", None, settings.prompts_dir)
    assert plain.key == request_key(image, "detail", "zh", prompt, settings.vlm_model,
                                    sampling_params(settings, "detail"))
    # ...a forced run asks under a key of its own (a new generation and sample; the old ones stay),
    # and a retry of that same run finds its own key again.
    assert again.key != plain.key and sample_id(again.key) != sample_id(plain.key)
    assert request_spec(settings, RunParams.from_params({"force_regenerate": True}, run_id="manual__2026-12-01"),
                        image, "detail").key == again.key
    other_run = RunParams.from_params({"force_regenerate": True}, run_id="manual__2026-12-02")
    assert request_spec(settings, other_run, image, "detail").key not in {plain.key, again.key}
