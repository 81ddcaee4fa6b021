"""Settings from the environment: defaults, round trip to another process, clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tuwen.config import ConfigError, Settings, parse_task_mix
from tuwen.domain import SEED_TASK_MIX


def test_defaults_are_the_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings().to_env():
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert settings == Settings()
    assert settings.task_mix == SEED_TASK_MIX
    assert settings.vlm_model == "tuwen-standin-vlm"  # never a real model's name by default


def test_to_env_round_trips_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    custom = dataclasses.replace(
        Settings(), database_url="postgresql+psycopg2://u@db:5433/x", s3_secure=True, vlm_timeout_s=7.5,
        max_tokens={"conversation": 11, "complex_reasoning": 12, "detail": 13},
        task_mix={"conversation": 1, "complex_reasoning": 0, "detail": 2}, sites_file=Path("/tmp/s.yaml"),
        ocr_enabled=False, qc_min_pass_rate=0.5, batch_size=3,
    )
    for name, value in custom.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env() == custom


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TUWEN_VLM_MAX_IN_FLIGHT", "many", "TUWEN_VLM_MAX_IN_FLIGHT must be an integer"),
        ("TUWEN_S3_SECURE", "perhaps", "TUWEN_S3_SECURE must be true or false"),
        ("TUWEN_TASK_MIX", "1:2", "needs 3 weights"),
        ("TUWEN_TASK_MIX", "0:0:0", "not all zero"),
        ("TUWEN_TEMPERATURE", "hot", "TUWEN_TEMPERATURE must be a number"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        Settings.from_env()


def test_task_mix_parses_in_task_order() -> None:
    assert parse_task_mix("5:4:4") == {"conversation": 5, "complex_reasoning": 4, "detail": 4}
