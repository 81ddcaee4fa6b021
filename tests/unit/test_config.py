"""Settings from the environment: one declaration, defaults, round trip to another process, and every
malformed value refused at start with the variable's name and what it accepts."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from tuwen.config import (
    MAX_PIXEL_BUDGET,
    OPERATIONS,
    README_BEGIN,
    README_END,
    ConfigError,
    CrawlSettings,
    ImageMode,
    Settings,
    StackSettings,
    declared_variables,
    generated_block,
    markdown_table,
    parse_task_mix,
)
from tuwen.domain import SEED_TASK_MIX

# Declared variables without the TUWEN_ prefix: docker compose reads them too, under these names.
SHARED_WITH_COMPOSE = {"VLM_POOL_SLOTS"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No declared variable from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("TUWEN_") or name in SHARED_WITH_COMPOSE:
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults_are_the_local_stack(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings.from_env()
    assert settings == Settings()
    assert settings.task_mix == SEED_TASK_MIX
    assert settings.vlm_model == "tuwen-standin-vlm"  # never a real model's name by default
    assert settings.max_tokens == {"conversation": 2048, "complex_reasoning": 1536, "detail": 1536}
    assert settings.vlm_image_mode is ImageMode.DATA_URL
    assert CrawlSettings.from_env() == CrawlSettings()


def test_empty_variables_mean_the_default(clean_env: pytest.MonkeyPatch) -> None:
    """Compose passes unset tunables as empty strings."""
    for name in Settings().to_env():
        clean_env.setenv(name, "  ")
    assert Settings.from_env() == Settings()


def test_to_env_round_trips_every_field(clean_env: pytest.MonkeyPatch) -> None:
    custom = dataclasses.replace(
        Settings(), database_url="postgresql+psycopg2://u@db:5433/x", s3_secure=True, vlm_timeout_s=7.5,
        max_tokens_conversation=11, max_tokens_complex_reasoning=12, max_tokens_detail=13,
        task_mix={"conversation": 1, "complex_reasoning": 0, "detail": 2}, sites_file=Path("/tmp/s.yaml"),
        ocr_enabled=False, qc_min_pass_rate=0.5, batch_size=3, vlm_image_mode=ImageMode.PRESIGNED_URL,
    )
    for name, value in custom.to_env().items():
        clean_env.setenv(name, value)
    assert Settings.from_env() == custom
    crawl = CrawlSettings(crawl_workers=3, crawl_image_processes=0, crawl_log_level="DEBUG", max_aspect_ratio=4.5)
    for name, value in crawl.to_env().items():
        clean_env.setenv(name, value)
    assert CrawlSettings.from_env() == crawl


def test_the_declaration_lists_every_variable_once_with_a_meaning() -> None:
    variables = declared_variables()
    names = [v.name for v in variables]
    assert len(names) == len(set(names))
    assert set(Settings().to_env()) | set(CrawlSettings().to_env()) | set(StackSettings().to_env()) == set(names)
    for variable in variables:
        assert variable.name.startswith("TUWEN_") or variable.name in SHARED_WITH_COMPOSE, variable.name
        assert variable.kind and variable.meaning.endswith((".", ")"))
    kinds = {v.name: v.kind for v in variables}
    assert kinds["TUWEN_VLM_IMAGE_MODE"] == "data_url | presigned_url"
    assert kinds["TUWEN_BATCH_SIZE"] == "integer ≥ 1"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TUWEN_VLM_MAX_IN_FLIGHT", "many", "TUWEN_VLM_MAX_IN_FLIGHT must be an integer, got 'many'"),
        ("TUWEN_S3_SECURE", "perhaps", "TUWEN_S3_SECURE must be true or false"),
        ("TUWEN_TASK_MIX", "1:2", "TUWEN_TASK_MIX needs 3 weights"),
        ("TUWEN_TASK_MIX", "0:0:0", "TUWEN_TASK_MIX weights must be non-negative and not all zero"),
        ("TUWEN_TASK_MIX", "1:-1:2", "TUWEN_TASK_MIX weights must be non-negative"),
        ("TUWEN_TEMPERATURE", "hot", "TUWEN_TEMPERATURE must be a finite number"),
        ("TUWEN_PROMPTS_DIR", "0\r/", "TUWEN_PROMPTS_DIR must not contain control characters"),  # found by scripts/fuzz.py settings
        # 0 divided by zero when planning batches; a negative size planned nothing, silently.
        ("TUWEN_BATCH_SIZE", "0", "TUWEN_BATCH_SIZE must be at least 1, got '0'"),
        ("TUWEN_BATCH_SIZE", "-5", "TUWEN_BATCH_SIZE must be at least 1"),
        ("TUWEN_MAX_TOKENS_DETAIL", "0", "TUWEN_MAX_TOKENS_DETAIL must be at least 1"),
        ("TUWEN_MAX_TOKENS_CONVERSATION", "-1", "TUWEN_MAX_TOKENS_CONVERSATION must be at least 1"),
        ("TUWEN_VLM_MAX_IN_FLIGHT", "0", "TUWEN_VLM_MAX_IN_FLIGHT must be at least 1"),
        ("TUWEN_VLM_MAX_RETRIES", "-1", "TUWEN_VLM_MAX_RETRIES must be at least 0"),
        ("TUWEN_VLM_TIMEOUT_S", "0", "TUWEN_VLM_TIMEOUT_S must be more than 0"),
        ("TUWEN_VLM_TIMEOUT_S", "-3", "TUWEN_VLM_TIMEOUT_S must be more than 0"),
        ("TUWEN_VLM_TIMEOUT_S", "inf", "TUWEN_VLM_TIMEOUT_S must be a finite number"),
        ("TUWEN_QC_MIN_PASS_RATE", "1.5", "TUWEN_QC_MIN_PASS_RATE must be at most 1"),
        ("TUWEN_QC_MIN_PASS_RATE", "-0.1", "TUWEN_QC_MIN_PASS_RATE must be at least 0"),
        ("TUWEN_TOP_P", "nan", "TUWEN_TOP_P must be a finite number"),
        ("TUWEN_MIN_IMAGE_SIDE", "0", "TUWEN_MIN_IMAGE_SIDE must be at least 1"),
        # An unknown mode used to fall back to data_url without a word.
        ("TUWEN_VLM_IMAGE_MODE", "presigned", "TUWEN_VLM_IMAGE_MODE must be one of 'data_url' or 'presigned_url'"),
        ("TUWEN_MAX_PIXELS", "100", "TUWEN_MAX_PIXELS must be at least 784"),
        ("TUWEN_MAX_PIXELS", str(MAX_PIXEL_BUDGET + 1), f"TUWEN_MAX_PIXELS must be at most {MAX_PIXEL_BUDGET}"),
        ("TUWEN_MIN_PIXELS", "0", "TUWEN_MIN_PIXELS must be at least 784"),
        ("TUWEN_S3_ENDPOINT", "http://minio:9000", "TUWEN_S3_ENDPOINT must be host:port with no scheme"),
        ("TUWEN_S3_ENDPOINT", "minio:70000", "TUWEN_S3_ENDPOINT must be host:port"),
        ("TUWEN_S3_ENDPOINT", "minio:0", "TUWEN_S3_ENDPOINT must be host:port"),
        ("TUWEN_S3_ENDPOINT", "minio:port", "TUWEN_S3_ENDPOINT must be host:port"),
        ("TUWEN_S3_BUCKET", "My_Bucket", "TUWEN_S3_BUCKET must be an S3 bucket name"),
        ("TUWEN_VLM_BASE_URL", "vllm:8000/v1", "TUWEN_VLM_BASE_URL must be an http(s) URL"),
        ("TUWEN_VLM_BASE_URL", "file:///etc/passwd", "TUWEN_VLM_BASE_URL must be an http(s) URL"),
        ("TUWEN_VLM_BASE_URL", "http://vllm:99999/v1", "TUWEN_VLM_BASE_URL must be an http(s) URL"),
        # Replicas: each URL checked like one, none listed twice (it would get twice its share).
        ("TUWEN_VLM_BASE_URL", "http://a:8000/v1,vllm:8000/v1", "TUWEN_VLM_BASE_URL must be an http(s) URL"),
        ("TUWEN_VLM_BASE_URL", "http://a:8000/v1,", "TUWEN_VLM_BASE_URL must be http(s) URLs separated by commas"),
        ("TUWEN_VLM_BASE_URL", "http://a:8000/v1, http://a:8000/v1/", "TUWEN_VLM_BASE_URL must not list a URL twice"),
        ("TUWEN_JUDGE_BASE_URL", "http://j:8000/v1,http://j:8000/v1", "TUWEN_JUDGE_BASE_URL must not list a URL twice"),
        ("TUWEN_DATABASE_URL", "mysql://u@db/tuwen", "TUWEN_DATABASE_URL must be a PostgreSQL URL"),
        ("TUWEN_DATABASE_URL", "not a url", "TUWEN_DATABASE_URL must be a PostgreSQL URL"),
    ],
)
def test_bad_values_name_the_variable(clean_env: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ConfigError) as error:
        Settings.from_env()
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_several_base_urls_are_replicas(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TUWEN_VLM_BASE_URL", "http://gpu1:8000/v1, http://gpu2:8000/v1")
    settings = Settings.from_env()
    assert settings.vlm_base_url == "http://gpu1:8000/v1,http://gpu2:8000/v1"
    assert settings.judge_endpoint[0] == settings.vlm_base_url  # the judge defaults to the same replicas
    clean_env.setenv("TUWEN_VLM_BASE_URL", "http://gpu1:8000/v1")
    assert Settings.from_env().vlm_base_url == "http://gpu1:8000/v1"


def test_min_pixels_above_max_pixels_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    """It made 8680x11564 model copies: the resize aimed at min_pixels and ignored the budget."""
    clean_env.setenv("TUWEN_MIN_PIXELS", "2000000")
    clean_env.setenv("TUWEN_MAX_PIXELS", "1003520")
    with pytest.raises(ConfigError, match=r"TUWEN_MIN_PIXELS \(2000000\) must not be more than TUWEN_MAX_PIXELS"):
        Settings.from_env()
    clean_env.setenv("TUWEN_MIN_PIXELS", "1003520")
    assert Settings.from_env().min_pixels == 1003520  # equal is fine


def test_every_bad_variable_is_named_at_once(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TUWEN_BATCH_SIZE", "0")
    clean_env.setenv("TUWEN_VLM_IMAGE_MODE", "base64")
    with pytest.raises(ConfigError) as error:
        Settings.from_env()
    assert "TUWEN_BATCH_SIZE" in str(error.value) and "TUWEN_VLM_IMAGE_MODE" in str(error.value)


def test_secrets_are_not_repeated_in_errors(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TUWEN_DATABASE_URL", "mysql://tuwen:hunter2secret@db/tuwen")
    with pytest.raises(ConfigError) as error:
        Settings.from_env()
    assert "hunter2secret" not in str(error.value) and "TUWEN_DATABASE_URL" in str(error.value)
    with pytest.raises(ConfigError) as error:
        Settings(vlm_api_key="")
    assert "TUWEN_VLM_API_KEY must not be empty" in str(error.value)


def test_values_are_typed(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TUWEN_VLM_IMAGE_MODE", "presigned_url")
    clean_env.setenv("TUWEN_S3_SECURE", "TRUE")
    clean_env.setenv("TUWEN_VLM_TIMEOUT_S", "30")
    clean_env.setenv("TUWEN_SITES_FILE", "/etc/tuwen/sites.yaml")
    settings = Settings.from_env()
    assert settings.vlm_image_mode is ImageMode.PRESIGNED_URL and settings.vlm_image_mode == "presigned_url"
    assert settings.s3_secure is True
    assert settings.vlm_timeout_s == 30.0 and isinstance(settings.vlm_timeout_s, float)
    assert settings.sites_file == Path("/etc/tuwen/sites.yaml")


def test_replace_is_checked_like_the_environment() -> None:
    """Code and tests derive settings with dataclasses.replace; a bad value is refused there too."""
    assert dataclasses.replace(Settings(), batch_size=8).batch_size == 8
    assert dataclasses.replace(Settings(), vlm_image_mode="presigned_url").vlm_image_mode is ImageMode.PRESIGNED_URL
    with pytest.raises(ConfigError, match="TUWEN_BATCH_SIZE must be at least 1"):
        dataclasses.replace(Settings(), batch_size=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().batch_size = 3  # type: ignore[misc]


def test_task_mix_parses_in_task_order() -> None:
    assert parse_task_mix("5:4:4") == {"conversation": 5, "complex_reasoning": 4, "detail": 4}
    with pytest.raises(ConfigError, match="TUWEN_TASK_MIX weights must be integers"):
        parse_task_mix("5:four:4")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TUWEN_CRAWL_WORKERS", "six", "TUWEN_CRAWL_WORKERS must be an integer"),
        ("TUWEN_CRAWL_WORKERS", "0", "TUWEN_CRAWL_WORKERS must be at least 1"),
        ("TUWEN_CRAWL_CONCURRENT_REQUESTS", "0", "TUWEN_CRAWL_CONCURRENT_REQUESTS must be at least 1"),
        ("TUWEN_CRAWL_DOWNLOAD_TIMEOUT_S", "0", "TUWEN_CRAWL_DOWNLOAD_TIMEOUT_S must be at least 1"),
        ("TUWEN_CRAWL_MAX_BYTES", "-1", "TUWEN_CRAWL_MAX_BYTES must be at least 1"),
        ("TUWEN_CRAWL_MEMORY_LIMIT_MB", "0", "TUWEN_CRAWL_MEMORY_LIMIT_MB must be at least 1"),
        ("TUWEN_CRAWL_IMAGE_PROCESSES", "-2", "TUWEN_CRAWL_IMAGE_PROCESSES must be at least 0"),
        ("TUWEN_CRAWL_LOG_LEVEL", "LOUD", "TUWEN_CRAWL_LOG_LEVEL must be one of 'CRITICAL'"),
        ("TUWEN_NEAR_DUP_DISTANCE", "65", "TUWEN_NEAR_DUP_DISTANCE must be at most 64"),
        ("TUWEN_MAX_ASPECT_RATIO", "0.5", "TUWEN_MAX_ASPECT_RATIO must be at least 1"),
        ("TUWEN_MAX_SOURCE_PIXELS", "lots", "TUWEN_MAX_SOURCE_PIXELS must be an integer"),
    ],
)
def test_bad_crawler_variables_name_the_variable(
    clean_env: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        CrawlSettings.from_env()


def test_crawler_log_level_and_image_processes(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TUWEN_CRAWL_LOG_LEVEL", "debug")
    assert CrawlSettings.from_env().crawl_log_level == "DEBUG"  # Scrapy's logging wants the capital name
    assert CrawlSettings().image_processes == (os.cpu_count() or 1)
    assert CrawlSettings(crawl_image_processes=0).image_processes == 0


def test_scrapy_settings_refuse_a_bad_variable_by_name() -> None:
    """The Scrapy project's settings module reads the same declaration: a bad value stops it, named
    (it used to fail with `invalid literal for int()` and no variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUWEN_")}
    probe = [sys.executable, "-c", "import tuwen_crawler.settings as s; print(s.TUWEN_CRAWL_WORKERS, s.LOG_LEVEL)"]
    bad = subprocess.run(probe, env={**env, "TUWEN_CRAWL_WORKERS": "many"}, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0
    assert "TUWEN_CRAWL_WORKERS must be an integer, got 'many'" in bad.stderr
    good = subprocess.run(probe, env={**env, "TUWEN_CRAWL_WORKERS": "3", "TUWEN_CRAWL_LOG_LEVEL": "warning"},
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert good.stdout.split() == ["3", "WARNING"]


def test_cli_reports_a_bad_setting_in_one_line(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tuwen.cli.main import main

    clean_env.setenv("TUWEN_BATCH_SIZE", "0")
    assert main(["status"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "tuwen: configuration error: TUWEN_BATCH_SIZE must be at least 1, got '0'"


def test_check_command_validates_the_environment(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tuwen.config import main

    assert main(["--check"]) == 0
    clean_env.setenv("TUWEN_CRAWL_MAX_REDIRECTS", "-1")
    assert main(["--check"]) == 2
    assert "TUWEN_CRAWL_MAX_REDIRECTS must be at least 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TUWEN_AIRFLOW_EXECUTOR", "kubernetes", "TUWEN_AIRFLOW_EXECUTOR must be one of 'local' or 'celery'"),
        ("TUWEN_AIRFLOW_PORT", "80800", "TUWEN_AIRFLOW_PORT must be at most 65535"),
        ("TUWEN_REDIS_PORT", "0", "TUWEN_REDIS_PORT must be at least 1"),
        ("TUWEN_AIRFLOW_WORKERS", "0", "TUWEN_AIRFLOW_WORKERS must be at least 1"),
        ("TUWEN_RETRY_DELAY_S", "soon", "TUWEN_RETRY_DELAY_S must be an integer"),
        ("VLM_POOL_SLOTS", "four", "VLM_POOL_SLOTS must be an integer"),
        ("VLM_POOL_SLOTS", "0", "VLM_POOL_SLOTS must be at least 1"),
        ("TUWEN_FIXTURE_SITE_PORT", "http", "TUWEN_FIXTURE_SITE_PORT must be an integer"),
    ],
)
def test_bad_local_stack_variables_name_the_variable(
    clean_env: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    """`tuwen up` reads them through the same declaration (the executor's error used to name no variable)."""
    from tuwen.local.airflow_stack import StackOptions

    clean_env.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        StackSettings.from_env()
    if name not in ("TUWEN_RETRY_DELAY_S", "TUWEN_FIXTURE_SITE_PORT"):
        with pytest.raises(ConfigError, match=message):
            StackOptions.from_env()


def test_local_stack_options_come_from_the_declaration(clean_env: pytest.MonkeyPatch) -> None:
    from tuwen.local.airflow_stack import StackOptions

    assert StackOptions.from_env() == StackOptions()
    clean_env.setenv("TUWEN_AIRFLOW_EXECUTOR", "celery")
    clean_env.setenv("TUWEN_AIRFLOW_PORT", "18080")
    clean_env.setenv("VLM_POOL_SLOTS", "7")
    clean_env.setenv("TUWEN_AIRFLOW_USER", "ops")
    clean_env.setenv("TUWEN_AIRFLOW_PASSWORD", " s3cret ")
    options = StackOptions.from_env()
    assert (options.executor, options.port, options.pool_slots) == ("celery", 18080, 7)
    assert (options.user, options.password) == ("ops", "s3cret")
    assert "s3cret" not in repr(options)


def test_local_stack_reads_its_other_variables_through_the_declaration(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tuwen.local.airflow_stack import StackOptions, airflow_login, worker_hostname
    from tuwen.local.stack import LocalStack

    clean_env.setenv("TUWEN_AIRFLOW_NODE", "worker-2")
    assert worker_hostname().startswith("worker-2@")
    assert airflow_login(tmp_path, StackOptions(user="ops", password="pw")) == ("ops", "pw", False)
    user, password, generated = airflow_login(tmp_path, StackOptions())
    assert user == "tuwen" and password and generated
    assert airflow_login(tmp_path, StackOptions())[1:] == (password, False)  # kept in the run folder
    clean_env.setenv("TUWEN_FIXTURE_SITE_PORT", "18765")
    services = LocalStack(Settings(vlm_base_url="http://vlm.invalid/v1"), run_dir=tmp_path).services()
    site = next(s for s in services if s.name == "fixture-site")
    assert ":18765/" in site.health_url


ALL_VARIABLES = sorted(v.name for v in declared_variables())
DECLARATION_OF = {
    **dict.fromkeys(Settings().to_env(), Settings),
    **dict.fromkeys(CrawlSettings().to_env(), CrawlSettings),
    **dict.fromkeys(StackSettings().to_env(), StackSettings),
}


@hyp_settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(ALL_VARIABLES), value=st.text(max_size=40))
def test_any_value_is_taken_or_refused_by_name(name: str, value: str) -> None:
    """Whatever text a variable holds, building the settings either succeeds or raises one ConfigError
    on one line that names that variable; no other exception escapes."""
    cls = DECLARATION_OF[name]
    environ = {name: value}
    try:
        built = cls.from_env(environ)
    except ConfigError as exc:
        message = str(exc)
        assert name in message and "\n" not in message
        return
    assert built.to_env()[name] == cls.from_env(built.to_env()).to_env()[name]  # what was taken round-trips


def test_operations_table_is_the_local_stack_declaration() -> None:
    """docs/OPERATIONS.md's table of local-stack variables is generated like README's (`--write`)."""
    text = OPERATIONS.read_text(encoding="utf-8")
    assert generated_block(text, README_BEGIN, README_END) == markdown_table((StackSettings,))
    for variable in StackSettings.variables():
        assert f"| `{variable.name}` |" in text, variable.name
