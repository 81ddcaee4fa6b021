"""The production image leaves out `tuwen.local` (.dockerignore): tuwen still imports and runs there, and
the commands that need the local stack say so in one line instead of a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuwen.local.services import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_the_production_image_leaves_the_local_package_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "plugins/tuwen/local" in ignored
    assert "COPY --chown=airflow:0 plugins /opt/tuwen/plugins" in (ROOT / "deploy" / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def without_local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/opt/tuwen as the image holds it: plugins/tuwen without local/, beside what the Dockerfile copies."""
    image = tmp_path_factory.mktemp("image")
    shutil.copytree(ROOT / "plugins" / "tuwen", image / "plugins" / "tuwen",
                    ignore=shutil.ignore_patterns("local", "__pycache__"))
    for copied in ("pyproject.toml", "alembic.ini", "dags", "crawler", "prompts", "sql", "config"):
        (image / copied).symlink_to(ROOT / copied)
    return image / "plugins"


# The venv's editable install finds any tuwen.* module in this checkout, whatever sys.path says; the image's
# editable install maps tuwen to /opt/tuwen, which has no local/. So: only the copy, and a check that
# tuwen.local really is out of reach before the command runs (it would start real services otherwise).
IN_THE_IMAGE = """
import importlib.util, sys
sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
import tuwen
if not tuwen.__file__.startswith(sys.argv[1]) or importlib.util.find_spec("tuwen.local") is not None:
    sys.exit(f"not isolated: tuwen from {tuwen.__file__}")
from tuwen.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _tuwen(plugins: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", IN_THE_IMAGE, str(plugins), *args], capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(plugins), "PATH": "/usr/bin:/bin", **env},
                          cwd=plugins, check=False)


@pytest.mark.parametrize("command", [["services", "status"], ["up"], ["down"], ["demo"]])
def test_local_commands_fail_with_one_clear_line(without_local: Path, command: list[str]) -> None:
    result = _tuwen(without_local, *command)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"tuwen: `tuwen {command[0]}` runs the local development stack (package tuwen.local), which this "
        "installation does not include (the production image leaves it out); use a repository checkout"]


def test_other_commands_still_run_without_it(without_local: Path) -> None:
    result = _tuwen(without_local, "db", "upgrade", "--help")
    assert result.returncode == 0 and "revision" in result.stdout, result.stderr
    # A failure that is not the local stack's own error is still raised, not lost in a failed import of it.
    failed = _tuwen(without_local, "releases", TUWEN_DATABASE_URL=f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/x")
    assert failed.returncode != 0 and "not isolated" not in failed.stderr
    assert "OperationalError" in failed.stderr and "ModuleNotFoundError" not in failed.stderr
