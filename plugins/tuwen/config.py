"""Settings read from the environment (documented in .env.example).

One frozen object built by `Settings.from_env()`; every other module takes what it needs from it,
so tests can build their own without touching os.environ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tuwen.domain import SEED_TASK_MIX, TASK_TYPES

REPO_ROOT = Path(__file__).resolve().parents[2]

# Qwen2.5-VL sees 28x28-pixel patches per visual token; 1280 tokens is its default max_pixels budget.
QWEN_PATCH = 28
DEFAULT_MAX_PIXELS = 1280 * QWEN_PATCH * QWEN_PATCH
DEFAULT_MIN_PIXELS = 4 * QWEN_PATCH * QWEN_PATCH


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = _env(name, str(default))
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _bool(name: str, default: bool) -> bool:
    raw = _env(name, "true" if default else "false").lower()
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def parse_task_mix(raw: str) -> dict[str, int]:
    """'247431:194646:199791' -> weights per task type, in TASK_TYPES order."""
    parts = raw.split(":")
    if len(parts) != len(TASK_TYPES):
        raise ConfigError(f"TUWEN_TASK_MIX needs {len(TASK_TYPES)} weights like 5:4:4, got {raw!r}")
    try:
        weights = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"TUWEN_TASK_MIX weights must be integers, got {raw!r}") from None
    if any(w < 0 for w in weights) or sum(weights) == 0:
        raise ConfigError(f"TUWEN_TASK_MIX weights must be non-negative and not all zero, got {raw!r}")
    return dict(zip(TASK_TYPES, weights, strict=True))


@dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/tuwen"
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "tuwen-local"
    s3_secret_key: str = "tuwen-local-secret"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_bucket: str = "tuwen"
    vlm_base_url: str = "http://127.0.0.1:8000/v1"
    vlm_model: str = "tuwen-standin-vlm"
    vlm_api_key: str = "EMPTY"
    vlm_timeout_s: float = 120.0
    vlm_max_retries: int = 4
    vlm_max_in_flight: int = 32
    vlm_image_mode: str = "data_url"  # or "presigned_url" where vLLM can reach the object store
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 1234
    max_tokens: dict[str, int] = field(
        default_factory=lambda: {"conversation": 2048, "complex_reasoning": 1536, "detail": 1536}
    )
    task_mix: dict[str, int] = field(default_factory=lambda: dict(SEED_TASK_MIX))
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_pixels: int = DEFAULT_MIN_PIXELS
    batch_size: int = 64
    sites_file: Path = REPO_ROOT / "config" / "sites.local.yaml"
    release_dir: Path = REPO_ROOT / "releases"
    prompts_dir: Path = REPO_ROOT / "prompts"
    ocr_enabled: bool = True
    min_image_side: int = 224
    qc_min_pass_rate: float = 0.8

    @classmethod
    def from_env(cls) -> Settings:
        d = cls()
        return cls(
            database_url=_env("TUWEN_DATABASE_URL", d.database_url),
            s3_endpoint=_env("TUWEN_S3_ENDPOINT", d.s3_endpoint),
            s3_access_key=_env("TUWEN_S3_ACCESS_KEY", d.s3_access_key),
            s3_secret_key=_env("TUWEN_S3_SECRET_KEY", d.s3_secret_key),
            s3_secure=_bool("TUWEN_S3_SECURE", d.s3_secure),
            s3_region=_env("TUWEN_S3_REGION", d.s3_region),
            s3_bucket=_env("TUWEN_S3_BUCKET", d.s3_bucket),
            vlm_base_url=_env("TUWEN_VLM_BASE_URL", d.vlm_base_url),
            vlm_model=_env("TUWEN_VLM_MODEL", d.vlm_model),
            vlm_api_key=_env("TUWEN_VLM_API_KEY", d.vlm_api_key),
            vlm_timeout_s=_float("TUWEN_VLM_TIMEOUT_S", d.vlm_timeout_s),
            vlm_max_retries=_int("TUWEN_VLM_MAX_RETRIES", d.vlm_max_retries),
            vlm_max_in_flight=_int("TUWEN_VLM_MAX_IN_FLIGHT", d.vlm_max_in_flight),
            vlm_image_mode=_env("TUWEN_VLM_IMAGE_MODE", d.vlm_image_mode),
            temperature=_float("TUWEN_TEMPERATURE", d.temperature),
            top_p=_float("TUWEN_TOP_P", d.top_p),
            seed=_int("TUWEN_SEED", d.seed),
            max_tokens={
                "conversation": _int("TUWEN_MAX_TOKENS_CONVERSATION", d.max_tokens["conversation"]),
                "complex_reasoning": _int(
                    "TUWEN_MAX_TOKENS_COMPLEX_REASONING", d.max_tokens["complex_reasoning"]
                ),
                "detail": _int("TUWEN_MAX_TOKENS_DETAIL", d.max_tokens["detail"]),
            },
            task_mix=parse_task_mix(_env("TUWEN_TASK_MIX", ":".join(str(v) for v in d.task_mix.values()))),
            max_pixels=_int("TUWEN_MAX_PIXELS", d.max_pixels),
            min_pixels=_int("TUWEN_MIN_PIXELS", d.min_pixels),
            batch_size=_int("TUWEN_BATCH_SIZE", d.batch_size),
            sites_file=Path(_env("TUWEN_SITES_FILE", str(d.sites_file))),
            release_dir=Path(_env("TUWEN_RELEASE_DIR", str(d.release_dir))),
            prompts_dir=Path(_env("TUWEN_PROMPTS_DIR", str(d.prompts_dir))),
            ocr_enabled=_bool("TUWEN_OCR_ENABLED", d.ocr_enabled),
            min_image_side=_int("TUWEN_MIN_IMAGE_SIDE", d.min_image_side),
            qc_min_pass_rate=_float("TUWEN_QC_MIN_PASS_RATE", d.qc_min_pass_rate),
        )

    def to_env(self) -> dict[str, str]:
        """The TUWEN_* variables that rebuild these settings with `from_env()` in another process
        (Airflow tasks, the spider subprocess)."""

        def flag(value: bool) -> str:
            return "true" if value else "false"

        return {
            "TUWEN_DATABASE_URL": self.database_url,
            "TUWEN_S3_ENDPOINT": self.s3_endpoint,
            "TUWEN_S3_ACCESS_KEY": self.s3_access_key,
            "TUWEN_S3_SECRET_KEY": self.s3_secret_key,
            "TUWEN_S3_SECURE": flag(self.s3_secure),
            "TUWEN_S3_REGION": self.s3_region,
            "TUWEN_S3_BUCKET": self.s3_bucket,
            "TUWEN_VLM_BASE_URL": self.vlm_base_url,
            "TUWEN_VLM_MODEL": self.vlm_model,
            "TUWEN_VLM_API_KEY": self.vlm_api_key,
            "TUWEN_VLM_TIMEOUT_S": str(self.vlm_timeout_s),
            "TUWEN_VLM_MAX_RETRIES": str(self.vlm_max_retries),
            "TUWEN_VLM_MAX_IN_FLIGHT": str(self.vlm_max_in_flight),
            "TUWEN_VLM_IMAGE_MODE": self.vlm_image_mode,
            "TUWEN_TEMPERATURE": str(self.temperature),
            "TUWEN_TOP_P": str(self.top_p),
            "TUWEN_SEED": str(self.seed),
            "TUWEN_MAX_TOKENS_CONVERSATION": str(self.max_tokens["conversation"]),
            "TUWEN_MAX_TOKENS_COMPLEX_REASONING": str(self.max_tokens["complex_reasoning"]),
            "TUWEN_MAX_TOKENS_DETAIL": str(self.max_tokens["detail"]),
            "TUWEN_TASK_MIX": ":".join(str(self.task_mix[t]) for t in TASK_TYPES),
            "TUWEN_MAX_PIXELS": str(self.max_pixels),
            "TUWEN_MIN_PIXELS": str(self.min_pixels),
            "TUWEN_BATCH_SIZE": str(self.batch_size),
            "TUWEN_SITES_FILE": str(self.sites_file),
            "TUWEN_RELEASE_DIR": str(self.release_dir),
            "TUWEN_PROMPTS_DIR": str(self.prompts_dir),
            "TUWEN_OCR_ENABLED": flag(self.ocr_enabled),
            "TUWEN_MIN_IMAGE_SIDE": str(self.min_image_side),
            "TUWEN_QC_MIN_PASS_RATE": str(self.qc_min_pass_rate),
        }
