"""The layout's rules, read from the code's own imports (every import, lazy ones included).

- No stage, DAG or crawler module imports `tuwen.local` (the stand-ins, the fixture site, the local
  servers): only the `tuwen` command and `tuwen.local` itself may.
- No import circle between tuwen's modules.
- Data flows one way, crawl → curate → synthesis → judge → quality → release: a stage never imports a later one.
- Services are built by entry points only: stage modules take an engine, an object store or
  `Resources` as arguments and never build their own.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"tuwen": ROOT / "plugins" / "tuwen", "tuwen_crawler": ROOT / "crawler" / "tuwen_crawler"}
STAGES = ("crawl", "curate", "synthesis", "judge", "quality", "release")  # in the order data flows through them
MAY_IMPORT_LOCAL = ("tuwen.local", "tuwen.cli")
# Where services are built from settings: the entry points and the one place that knows how.
MAY_BUILD_SERVICES = ("tuwen.local", "tuwen.cli", "tuwen.resources", "tuwen.db.session", "tuwen.db.migrate",
                      "tuwen_crawler")
SERVICE_BUILDERS = {"ObjectStore", "get_engine", "session_scope", "create_engine", "Resources.from_settings"}


def _module_name(package: str, root: Path, path: Path) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            if "migrations" not in path.parts:
                found[_module_name(package, root, path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """The tuwen modules `name` imports, resolved to modules (a `from pkg import mod` names the module)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                yield candidate if candidate in MODULES else module


def _graph() -> dict[str, set[str]]:
    return {name: {m for m in _imports(name, path) if m in MODULES and m != name} for name, path in MODULES.items()}


GRAPH = _graph()


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_walk_sees_the_layout() -> None:
    # Guards the rules below against passing vacuously on a walk that found nothing.
    for expected in ("tuwen.crawl.images", "tuwen.curate.run", "tuwen.synthesis.runner", "tuwen.judge.runner", "tuwen.quality.run", "tuwen.release.export",
                     "tuwen.local.standin_vlm", "tuwen.domain", "tuwen_crawler.pipelines"):
        assert any(_within(m, (expected,)) for m in MODULES), expected
    assert "tuwen.crawl.images" in GRAPH["tuwen_crawler.pipelines"]


def test_no_stage_imports_the_local_infrastructure() -> None:
    offenders = {name: sorted(m for m in deps if _within(m, ("tuwen.local",)))
                 for name, deps in GRAPH.items() if not _within(name, MAY_IMPORT_LOCAL)}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"modules outside tuwen.local / tuwen.cli import tuwen.local: {offenders}"


def test_dags_do_not_import_the_local_infrastructure() -> None:
    for path in (ROOT / "dags").glob("*.py"):
        imported = set(_imports(f"dags.{path.stem}", path))
        assert not any(_within(m, ("tuwen.local",)) for m in imported), path.name


def test_no_import_circle() -> None:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    # A package's __init__ importing its own modules is not a circle of behaviour; none exist today.
    assert not cycles, f"import circles: {cycles}"


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_never_imports_a_later_stage(stage: str) -> None:
    later = tuple(f"tuwen.{s}" for s in STAGES[STAGES.index(stage) + 1:])
    offenders = {name: sorted(m for m in deps if _within(m, later))
                 for name, deps in GRAPH.items() if _within(name, (f"tuwen.{stage}",))}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"tuwen.{stage} imports a later stage: {offenders}"


# The one place a stage opens its own engine: a worker process the gate spawns, which cannot be handed the
# parent's engine and is handed its URL instead.
SPAWNED_WORKERS = {("tuwen.quality.run", "get_engine")}


def _service_builds(path: Path) -> set[str]:
    builds = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else ""
            if isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else ""
                name = f"{owner}.{func.attr}" if func.attr == "from_settings" else func.attr
            if name in SERVICE_BUILDERS:
                builds.add(name)
    return builds


def test_stage_modules_take_their_services_from_the_entry_point() -> None:
    stages = tuple(f"tuwen.{s}" for s in STAGES)
    offenders = {name: sorted(b for b in _service_builds(path) if (name, b) not in SPAWNED_WORKERS)
                 for name, path in MODULES.items() if _within(name, stages)}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"stage modules that build services instead of taking them: {offenders}"


def test_the_service_rule_sees_a_builder() -> None:
    # Guards the rule above: the crawler's pipeline (an entry point) does build its services.
    assert _service_builds(MODULES["tuwen_crawler.pipelines"]) & {"ObjectStore", "get_engine"}
