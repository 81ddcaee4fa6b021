"""Every setting tuwen reads from the environment, declared once: variable, type, default and meaning.

`Settings` (the pipeline's settings) and `CrawlSettings` (the Scrapy process's) are frozen dataclasses
whose fields are the declaration: the variable is TUWEN_ + the field's name in capitals (or the
`env` name a variable shared with docker compose keeps), the annotation is its type with its bounds,
the field's default is the default and `setting(...)` gives the meaning.
Pydantic checks every value whenever an object is built (`from_env()` at a process's start,
`Settings(...)`, `dataclasses.replace(...)`), and a bad value raises one ConfigError that names the
variable and what it accepts.

`.env.example` and README's configuration table are generated from this declaration
(`python -m tuwen.config --write`) and tests/unit/test_docker_compose.py keeps them equal to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Self, cast, get_type_hints
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, HttpUrl, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from tuwen.domain import SEED_TASK_MIX, TASK_TYPES

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_PREFIX = "TUWEN_"

# Qwen2.5-VL sees 28x28-pixel patches per visual token; 1280 tokens is its default max_pixels budget.
QWEN_PATCH = 28
DEFAULT_MAX_PIXELS = 1280 * QWEN_PATCH * QWEN_PATCH
DEFAULT_MIN_PIXELS = 4 * QWEN_PATCH * QWEN_PATCH
# One patch is the least a model copy can hold; 16384 tokens is the ceiling of Qwen2.5-VL's processor.
MIN_PIXEL_BUDGET = QWEN_PATCH * QWEN_PATCH
MAX_PIXEL_BUDGET = 16384 * QWEN_PATCH * QWEN_PATCH


class ConfigError(ValueError):
    """A setting is malformed; the message names the variable and what it accepts."""


class ImageMode(StrEnum):
    """How an image reaches the model."""

    DATA_URL = "data_url"  # base64, inline in the request
    PRESIGNED_URL = "presigned_url"  # vLLM fetches it from the object store


# --------------------------------------------------------------------------- value types


def _postgres_url(value: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        backend = make_url(value).get_backend_name()
    except (ArgumentError, ValueError):
        backend = ""
    if backend != "postgresql":
        raise ValueError("must be a PostgreSQL URL like postgresql+psycopg2://user@host:5432/tuwen")
    return value


_HTTP_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


def _http_url(value: str) -> str:
    try:
        _HTTP_URL.validate_python(value)
    except ValidationError:
        raise ValueError("must be an http(s) URL like http://127.0.0.1:8000/v1") from None
    return value


def _http_urls(value: str) -> str:
    """One http(s) URL, or several comma-separated (replicas of one model with no router in front)."""
    if "," not in value:
        return _http_url(value)  # one URL: checked exactly as it always was
    urls = [part.strip() for part in value.split(",")]
    if "" in urls:
        raise ValueError("must be http(s) URLs separated by commas, with none empty")
    seen: set[str] = set()
    for url in urls:
        try:
            _http_url(url)
        except ValueError:
            raise ValueError("must be an http(s) URL like http://127.0.0.1:8000/v1, or several "
                             "separated by commas") from None
        if url.rstrip("/") in seen:
            raise ValueError(f"must not list a URL twice ({url})")
        seen.add(url.rstrip("/"))
    return ",".join(urls)


def _host_port(value: str) -> str:
    """host:port for the minio client, which takes no scheme and no path."""
    problem = "must be host:port with no scheme or path, like 127.0.0.1:9000"
    parts = urlsplit("//" + value)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{problem} (port 1-65535)") from None
    if any(c in value for c in "/?#@") or not parts.hostname or port == 0:
        raise ValueError(problem)
    return value


def _bucket_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
        raise ValueError("must be an S3 bucket name: 3-63 lowercase letters, digits, dots and hyphens")
    return value


def _task_mix_weights(value: Any) -> Any:
    """'247431:194646:199791' -> weights per task type, in TASK_TYPES order; a mapping passes through."""
    if not isinstance(value, str):
        return value
    parts = value.split(":")
    if len(parts) != len(TASK_TYPES):
        raise ValueError(f"needs {len(TASK_TYPES)} weights like 5:4:4 ({':'.join(TASK_TYPES)})")
    try:
        weights = [int(p) for p in parts]
    except ValueError:
        raise ValueError("weights must be integers like 5:4:4") from None
    return dict(zip(TASK_TYPES, weights, strict=True))


def _task_mix_complete(mix: dict[str, int]) -> dict[str, int]:
    if set(mix) != set(TASK_TYPES):
        raise ValueError(f"needs a weight for each of {', '.join(TASK_TYPES)}")
    if any(w < 0 for w in mix.values()) or sum(mix.values()) == 0:
        raise ValueError("weights must be non-negative and not all zero")
    return {task: mix[task] for task in TASK_TYPES}


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1)]
PixelBudget = Annotated[int, Field(ge=MIN_PIXEL_BUDGET, le=MAX_PIXEL_BUDGET)]
Port = Annotated[int, Field(ge=1, le=65535)]
PostgresUrl = Annotated[str, AfterValidator(_postgres_url)]
WebUrls = Annotated[str, AfterValidator(_http_urls)]
# Empty means "the same as another setting" (the judge's endpoint defaults to the VLM's).
WebUrlsOrEmpty = Annotated[str, AfterValidator(lambda value: _http_urls(value) if value else value)]
HostPort = Annotated[str, AfterValidator(_host_port)]
BucketName = Annotated[str, AfterValidator(_bucket_name)]
TaskMix = Annotated[dict[str, int], BeforeValidator(_task_mix_weights), AfterValidator(_task_mix_complete)]
LogLevel = Annotated[Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"], BeforeValidator(_upper)]


def setting(default: Any = None, meaning: str = "", *, kind: str = "", secret: bool = False,
            factory: Callable[[], Any] | None = None, env: str = "") -> Any:
    """A declared setting: its default and one line on what it means (`kind` names its accepted form
    where the type alone does not say; a `secret` value is never repeated in an error; `env` is the
    variable's name where it is not TUWEN_ + the field's name: one docker compose reads too)."""
    metadata = {"meaning": meaning, "kind": kind, "secret": secret, "env": env}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# --------------------------------------------------------------------------- declaration machinery


class Variable(NamedTuple):
    """One environment variable as documented: name, accepted form, default (as text) and meaning."""

    name: str
    kind: str
    default: str
    meaning: str


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _env_of(field: dataclasses.Field[Any]) -> str:
    """The variable of a declared field."""
    return field.metadata.get("env") or env_name(field.name)


def env_text(value: Any) -> str:
    """A value as its variable spells it, so that `from_env` reads back the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, Mapping):
        return ":".join(str(value[task]) for task in TASK_TYPES)
    return "" if value is None else str(value)


_ADAPTERS: dict[type, dict[str, TypeAdapter[Any]]] = {}


def _adapters(cls: type) -> dict[str, TypeAdapter[Any]]:
    """One validator per field, built from its annotation the first time the class is used."""
    if cls not in _ADAPTERS:
        hints = get_type_hints(cls, include_extras=True)
        _ADAPTERS[cls] = {f.name: TypeAdapter(hints[f.name]) for f in dataclasses.fields(cls)}
    return _ADAPTERS[cls]


def _problem(error: ErrorDetails) -> str:
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "must be an integer"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return "must be a finite number"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind in ("enum", "literal_error"):
        return f"must be one of {ctx['expected']}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}"
    if kind == "greater_than":
        return f"must be more than {ctx['gt']}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx["error"])
    return error["msg"].replace("Input should be", "must be", 1)


def _shown(field: dataclasses.Field[Any], value: Any) -> str:
    if field.metadata.get("secret"):
        return "(a secret, not shown)"
    # A URL's password stays out of error messages (they end up in task logs).
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", repr(value))


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class _Declared:
    """What `Settings` and `CrawlSettings` share: validation when built, reading and writing the env."""

    def __post_init__(self) -> None:
        problems = []
        for field in dataclasses.fields(cast(Any, self)):
            value = getattr(self, field.name)
            if isinstance(value, str | Path) and _CONTROL_CHARS.search(str(value)):
                # A carriage return or NUL in a path, URL or name is a paste mistake, and would not
                # survive the trip through the environment to a task or the spider.
                problems.append(f"{_env_of(field)} must not contain control characters, "
                                f"got {_shown(field, value)}")
                continue
            try:
                checked = _adapters(type(self))[field.name].validate_python(value)
            except ValidationError as exc:
                problem = _problem(exc.errors()[0])
                problems.append(f"{_env_of(field)} {problem}, got {_shown(field, value)}")
                continue
            object.__setattr__(self, field.name, checked)
        if not problems:
            problems = self._inconsistencies()
        if problems:
            raise ConfigError("; ".join(problems))

    def _inconsistencies(self) -> list[str]:
        """Rules between settings, checked once each one is valid on its own."""
        return []

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """The settings from the TUWEN_* variables; an unset or empty variable means the default."""
        environ = os.environ if environ is None else environ
        given = {}
        for field in dataclasses.fields(cast(Any, cls)):
            value = environ.get(_env_of(field), "").strip()
            if value:
                given[field.name] = value
        return cast(Self, cast(Any, cls)(**given))

    def to_env(self) -> dict[str, str]:
        """The TUWEN_* variables that rebuild these settings with `from_env()` in another process
        (Airflow tasks, the spider subprocess)."""
        return {_env_of(f): env_text(getattr(self, f.name)) for f in dataclasses.fields(cast(Any, self))}

    @classmethod
    def variables(cls) -> list[Variable]:
        """The declaration as documentation: every variable with its accepted form, default and meaning."""
        defaults = cast(Any, cls)()
        return [
            Variable(_env_of(f), f.metadata["kind"] or _kind(_adapters(cls)[f.name]),
                     _doc_default(getattr(defaults, f.name)), f.metadata["meaning"])
            for f in dataclasses.fields(cast(Any, cls))
        ]


def _doc_default(value: Any) -> str:
    if isinstance(value, Path) and value.is_relative_to(REPO_ROOT):
        return str(value.relative_to(REPO_ROOT))
    return env_text(value)


def _kind(adapter: TypeAdapter[Any]) -> str:
    """The accepted form, read from the type's JSON schema: 'integer ≥ 1', 'data_url | presigned_url'."""
    schema = adapter.json_schema()
    optional = ""
    if "anyOf" in schema:
        schema = next(s for s in schema["anyOf"] if s.get("type") != "null")
        optional = ", or empty"
    if "$ref" in schema:
        schema = adapter.json_schema()["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    if "enum" in schema:
        return " | ".join(str(v) for v in schema["enum"]) + optional
    name = {"integer": "integer", "number": "number", "boolean": "true | false", "string": "text"}.get(
        schema.get("type", ""), "text")
    if schema.get("format") == "path":
        name = "path"
    bounds = [f"{sign} {schema[key]}" for key, sign in
              (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤")) if key in schema]
    return " ".join([name, ", ".join(bounds)]).strip() + optional


# --------------------------------------------------------------------------- the declaration


@dataclasses.dataclass(frozen=True)
class Settings(_Declared):
    """The pipeline's settings: database, object store, VLM, sampling, batches, QC.

    Every other module takes what it needs from one of these, so tests build their own
    (`Settings(...)`, `dataclasses.replace`) without touching os.environ."""

    database_url: PostgresUrl = setting(
        "postgresql+psycopg2://postgres@127.0.0.1:5432/tuwen", "Lineage database (SQLAlchemy URL).",
        kind="PostgreSQL URL")
    s3_endpoint: HostPort = setting(
        "127.0.0.1:9000", "S3 API endpoint; locally the S3 server of `make up`, in production MinIO.",
        kind="host:port")
    s3_access_key: Text = setting("tuwen-local", "S3 access key id.", secret=True)
    s3_secret_key: Text = setting("tuwen-local-secret", "S3 secret key.", secret=True)
    s3_secure: bool = setting(False, "Use HTTPS to the S3 endpoint.")
    s3_region: Text = setting("us-east-1", "S3 region name sent with requests.")
    s3_bucket: BucketName = setting("tuwen", "Bucket for raw/, model/ and exports/ (private).",
                                    kind="bucket name")
    vlm_base_url: WebUrls = setting(
        "http://127.0.0.1:8000/v1", "OpenAI-compatible endpoint of the VLM (vLLM; locally the stand-in); "
        "several, comma-separated: replicas with no router, each request to the least busy one.",
        kind="http(s) URL(s), comma-separated")
    vlm_model: Text = setting(
        "tuwen-standin-vlm", "Model name sent in requests (vLLM's served name); recorded on every generation.")
    vlm_api_key: Text = setting("EMPTY", "Bearer token for the VLM endpoint (vLLM's VLLM_API_KEY).",
                                secret=True)
    vlm_timeout_s: Seconds = setting(120.0, "Per-request timeout in seconds.")
    vlm_max_retries: NonNegativeInt = setting(4, "Retries per request (the only retry layer around the VLM).")
    vlm_max_in_flight: PositiveInt = setting(
        64, "Concurrent requests per task at most (aimd's ceiling; fixed: the number); see VLM_POOL_SLOTS.")
    vlm_inflight_control: Literal["fixed", "aimd"] = setting(
        "aimd", "aimd: as many requests as keep vLLM's running batch full and its queue short (read from its "
        "/metrics, else latency), one limit shared fairly by every task through the lineage database, "
        "TUWEN_VLM_MAX_IN_FLIGHT each task's ceiling; fixed: TUWEN_VLM_MAX_IN_FLIGHT requests per task.")
    vlm_metrics_poll_s: Seconds = setting(
        1.0, "How often aimd in-flight control reads the VLM's /metrics and each task takes its share anew.")
    vlm_image_mode: ImageMode = setting(
        ImageMode.DATA_URL, "How images reach the model: inline base64, or a presigned URL vLLM fetches.")
    temperature: Annotated[float, Field(ge=0, allow_inf_nan=False)] = setting(0.7, "Sampling temperature.")
    top_p: Share = setting(0.9, "Nucleus sampling top_p.")
    seed: int = setting(1234, "Sampling seed (part of each request key).")
    max_tokens_conversation: PositiveInt = setting(2048, "max_tokens of the 5-turn conversation task.")
    max_tokens_complex_reasoning: PositiveInt = setting(1536, "max_tokens of the complex reasoning task.")
    max_tokens_detail: PositiveInt = setting(1536, "max_tokens of the detailed description task.")
    task_mix: TaskMix = setting(
        factory=lambda: dict(SEED_TASK_MIX),
        meaning="Task weights conversation:complex_reasoning:detail (the seed dataset's counts).",
        kind="weights a:b:c")
    max_pixels: PixelBudget = setting(
        DEFAULT_MAX_PIXELS, "Pixel budget of the model-ready copy (Qwen2.5-VL: 1280 tokens x 28 x 28 px).")
    min_pixels: PixelBudget = setting(
        DEFAULT_MIN_PIXELS, "Least pixels of the model-ready copy (4 x 28 x 28 px); at most TUWEN_MAX_PIXELS.")
    batch_size: PositiveInt = setting(
        64, "Images per mapped synthesis batch task (its own share of the run; it then takes the run's queued "
        "work) and per judge batch.")
    synthesis_tasks: PositiveInt = setting(
        2, "Mapped synthesize tasks per run, at most: each sends while its run has queued requests. The pool vlm's "
        "slots (VLM_POOL_SLOTS) / the runs that may send at once (a backfill's 3 beside the daily run), so every "
        "active run sends and none waits for another to drain; more tasks only wait for a slot to find their work "
        "done.")
    sites_file: Path = setting(REPO_ROOT / "config" / "sites.local.yaml", "Crawl targets for the spiders.")
    release_dir: Path = setting(REPO_ROOT / "releases", "Local directory where releases are assembled.")
    prompts_dir: Path = setting(REPO_ROOT / "prompts", "Versioned prompt files.")
    ocr_enabled: bool = setting(True, "Run OCR on images (Chinese-text checks and OCR grounding).")
    min_image_side: PositiveInt = setting(224, "Images with a shorter side are rejected (px).")
    qc_min_pass_rate: Share = setting(0.8, "A QC run fails below this share of passing samples.")
    judge_enabled: bool = setting(
        False, "Run the faithfulness judge after synthesis (a DAG run's `judge` param overrides it).")
    judge_base_url: WebUrlsOrEmpty = setting(
        "", "OpenAI-compatible endpoint(s) of the judge model, comma-separated; empty: TUWEN_VLM_BASE_URL.",
        kind="http(s) URL(s), or empty")
    judge_model: str = setting("", "Model name of the judge (part of each judgement's key); empty: TUWEN_VLM_MODEL.")
    judge_api_key: str = setting("", "Bearer token for the judge endpoint; empty: TUWEN_VLM_API_KEY.", secret=True)
    judge_prompt_version: PositiveInt | None = setting(
        None, "Judge prompt version (prompts/judge/); empty: the latest.")
    judge_max_tokens: PositiveInt = setting(1024, "max_tokens of one judge completion.")
    judge_structured_output: bool = setting(
        True, "Ask the judge for JSON by response_format json_schema (vLLM's guided decoding); off: plain text.")

    # Curation (tuwen.curate, issue 18): between the crawl and synthesis.
    curate_enabled: bool = setting(
        True, "Curate accepted images before synthesis; off: every accepted image counts as curated.")
    curate_zh_share: Share = setting(
        0.7, "Least share of a partition's curated images with Chinese text (the seed: most); the rest are held.")
    curate_personal_data: Literal["held", "rejected"] = setting(
        "held", "Verdict on an image whose OCR text shows personal data (phone, ID card, e-mail, plate).")
    curate_filters_off: str = setting(
        "", "Curation filters switched off, comma-separated (qr_code, low_information, simple_graphic, "
        "personal_data, unsafe).", kind="names, comma-separated")
    curate_tasks: PositiveInt = setting(4, "Mapped curation tasks per crawl partition (pool `curate`).")

    @property
    def judge_endpoint(self) -> tuple[str, str, str]:
        """(base URL, model, API key) of the judge: its own settings, the VLM's where they are empty."""
        return (self.judge_base_url or self.vlm_base_url, self.judge_model or self.vlm_model,
                self.judge_api_key or self.vlm_api_key)

    @property
    def max_tokens(self) -> dict[str, int]:
        """max_tokens per task type."""
        return {
            "conversation": self.max_tokens_conversation,
            "complex_reasoning": self.max_tokens_complex_reasoning,
            "detail": self.max_tokens_detail,
        }

    def _inconsistencies(self) -> list[str]:
        if self.min_pixels > self.max_pixels:
            return [f"TUWEN_MIN_PIXELS ({self.min_pixels}) must not be more than TUWEN_MAX_PIXELS "
                    f"({self.max_pixels})"]
        return []


@dataclasses.dataclass(frozen=True)
class CrawlSettings(_Declared):
    """The Scrapy process's settings (crawler/tuwen_crawler/settings.py hands them to Scrapy)."""

    crawl_user_agent: Text = setting(
        "tuwen-crawler/0.1 (+https://example.invalid/tuwen-bot; research dataset)",
        "User-Agent the crawler sends (say who you are and how to reach you).")
    crawl_robots_agent: Text = setting("tuwen-crawler", "Product token matched against robots.txt groups.")
    crawl_concurrent_requests: PositiveInt = setting(32, "Scrapy CONCURRENT_REQUESTS across one crawl's sites.")
    crawl_download_timeout_s: PositiveInt = setting(30, "Download timeout in seconds.")
    crawl_max_bytes: PositiveInt = setting(
        15 * 1024 * 1024, "Largest download in bytes; bigger files are rejected as too_large_bytes.")
    crawl_max_redirects: NonNegativeInt = setting(5, "Redirects followed per request.")
    crawl_memory_limit_mb: PositiveInt = setting(2048, "Scrapy MEMUSAGE_LIMIT_MB for one crawl process.")
    crawl_log_level: LogLevel = setting("INFO", "Scrapy log level.")
    crawl_workers: PositiveInt = setting(6, "Threads in the crawl process that judge, upload and record images.")
    crawl_image_processes: NonNegativeInt | None = setting(
        None, "Processes for the image work (decode, checks, hashes, copy); 0: in the threads; empty: one per core.")
    near_dup_distance: Annotated[int, Field(ge=0, le=64)] = setting(
        6, "Perceptual-hash Hamming distance at or below which an image is a near duplicate.")
    max_source_pixels: PositiveInt = setting(
        30_000_000, "Largest image (width x height) accepted; bigger ones are rejected as too_many_pixels.")
    max_aspect_ratio: Annotated[float, Field(ge=1, allow_inf_nan=False)] = setting(
        8.0, "Largest aspect ratio (long side / short side) accepted.")

    @property
    def image_processes(self) -> int:
        """TUWEN_CRAWL_IMAGE_PROCESSES, one per core when unset."""
        return os.cpu_count() or 1 if self.crawl_image_processes is None else self.crawl_image_processes


@dataclasses.dataclass(frozen=True)
class StackSettings(_Declared):
    """How Airflow runs outside docker compose: the local stack of `make up` / `make demo`, and retries."""

    airflow_executor: Literal["local", "celery"] = setting(
        "local", "Executor of `make up`: local, or celery (a Redis broker and TUWEN_AIRFLOW_WORKERS workers).")
    airflow_workers: PositiveInt = setting(2, "Celery workers `make up` starts with the celery executor.")
    airflow_worker_concurrency: PositiveInt = setting(4, "Task slots per local Celery worker.")
    airflow_node: str = setting("", "Node name put before a local Celery worker's hostname (several on one machine).")
    airflow_port: Port = setting(8080, "Port of the local Airflow api-server (UI and REST API).")
    airflow_user: Text = setting("tuwen", "Login of the local Airflow UI.")
    airflow_password: str = setting(
        "", "Password of that login; empty: `make up` generates one into .run/ and prints it.",
        secret=True)
    redis_port: Port = setting(6379, "Port of the Redis broker `make up` starts for the celery executor.")
    fixture_site_port: Port = setting(8765, "Port of the fixture website the local sites file points at.")
    standin_contradiction_rate: Share = setting(
        0.0, "Share of the local stand-in VLM's answers given one known false statement (tests and demos of "
        "the faithfulness judge's plumbing).")
    retry_delay_s: NonNegativeInt = setting(
        60, "Seconds between retries of a tuwen_synthesize batch (the fault tests shorten it).")
    vlm_pool_slots: PositiveInt = setting(
        8, "Slots of the Airflow pool `vlm` `make up` creates (docker compose's airflow-init reads it too): "
        "TUWEN_SYNTHESIS_TASKS x (a backfill's max active runs 3 + the daily run), so every active run sends.",
        env="VLM_POOL_SLOTS")


def parse_task_mix(raw: str) -> dict[str, int]:
    """'247431:194646:199791' -> weights per task type, in TASK_TYPES order."""
    return Settings(task_mix=raw).task_mix  # type: ignore[arg-type]  # the text form is validated


DECLARATIONS: tuple[type[_Declared], ...] = (Settings, CrawlSettings, StackSettings)


def declared_variables() -> list[Variable]:
    """Every variable tuwen reads, in declaration order."""
    return [v for cls in DECLARATIONS for v in cls.variables()]


# --------------------------------------------------------------------------- generated documentation

ENV_BEGIN = "# --- generated from plugins/tuwen/config.py by `python -m tuwen.config --write`; edit it there ---"
ENV_END = "# --- end of the generated settings ---"
README_BEGIN = "<!-- generated from plugins/tuwen/config.py by `python -m tuwen.config --write`; edit it there -->"
README_END = "<!-- end of the generated settings -->"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
README = REPO_ROOT / "README.md"
# docs/OPERATIONS.md carries the local stack's part of README's table, between the same markers.
OPERATIONS = REPO_ROOT / "docs" / "OPERATIONS.md"


def env_example_block() -> str:
    lines = [ENV_BEGIN]
    for cls in DECLARATIONS:
        lines += ["", f"# --- {cls.__name__}: {(cls.__doc__ or '').strip().splitlines()[0]}"]
        for v in cls.variables():
            lines += [f"# {v.meaning} ({v.kind})", f"# {v.name}={v.default}"]
    return "\n".join([*lines, "", ENV_END])


def markdown_table(declarations: tuple[type[_Declared], ...] = DECLARATIONS) -> str:
    """README's configuration table: the variables of `declarations` (all of them by default)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [README_BEGIN, "| variable | accepts | default | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{v.name}` | {cell(v.kind)} | {f'`{v.default}`' if v.default else '(empty)'} | {cell(v.meaning)} |"
              for cls in declarations for v in cls.variables()]
    return "\n".join([*lines, README_END])


def generated_block(text: str, begin: str, end: str) -> str | None:
    """The block from `begin` to `end` (both lines included) in text, or None."""
    match = re.search(re.escape(begin) + r".*?" + re.escape(end), text, re.DOTALL)
    return match.group(0) if match else None


def _rewrite(path: Path, block: str, begin: str, end: str) -> bool:
    text = path.read_text(encoding="utf-8")
    old = generated_block(text, begin, end)
    if old is None:
        raise SystemExit(f"{path}: no generated block ({begin!r} ... {end!r}) to replace")
    if old == block:
        return False
    path.write_text(text.replace(old, block), encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuwen.config", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--markdown", action="store_true", help="print README's configuration table")
    what.add_argument("--env-example", action="store_true", help="print .env.example's settings block")
    what.add_argument("--write", action="store_true", help="rewrite the generated blocks in place")
    what.add_argument("--check", action="store_true", help="validate the current environment's settings")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table())
    elif args.env_example:
        print(env_example_block())
    elif args.write:
        for path, block, begin, end in ((ENV_EXAMPLE, env_example_block(), ENV_BEGIN, ENV_END),
                                        (README, markdown_table(), README_BEGIN, README_END),
                                        (OPERATIONS, markdown_table((StackSettings,)), README_BEGIN, README_END)):
            print(f"{path.name}: {'rewritten' if _rewrite(path, block, begin, end) else 'unchanged'}")
    else:
        try:
            for cls in DECLARATIONS:
                cls.from_env()
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
        print("settings ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
