"""bench.common.record_result: a benchmark's run is added to its section of docs/BENCHMARKS.md, keeping
the runs recorded before it and every other section."""

from __future__ import annotations

from pathlib import Path

import pytest

import bench.common


@pytest.fixture()
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "docs" / "BENCHMARKS.md"
    monkeypatch.setattr(bench.common, "RESULTS", path)
    return path


def test_a_run_is_appended_after_the_earlier_runs_of_its_section(results: Path) -> None:
    results.parent.mkdir()
    results.write_text("# Benchmarks\n\n## Export\n\nrun one\n\n## Crawl\n\n| table |\n", encoding="utf-8")
    bench.common.record_result("Export", "run two")
    bench.common.record_result("Crawl", "- crawl run")
    assert results.read_text(encoding="utf-8") == (
        "# Benchmarks\n\n## Export\n\nrun one\n\nrun two\n\n## Crawl\n\n| table |\n\n- crawl run\n")


def test_a_missing_section_is_created_with_its_introduction(results: Path) -> None:
    bench.common.record_result("Quality gate", "- first run", intro="What the gate benchmark measures.")
    bench.common.record_result("Quality gate", "- second run")
    assert results.read_text(encoding="utf-8") == (
        "# Benchmarks\n\n## Quality gate\n\nWhat the gate benchmark measures.\n\n- first run\n\n- second run\n")


def test_a_subsection_of_the_same_name_is_not_the_section(results: Path) -> None:
    results.parent.mkdir()
    results.write_text("# Benchmarks\n\n## Crawl\n\n### Export\n\nabout exports\n\n## Export\n\nrun one\n",
                       encoding="utf-8")
    bench.common.record_result("Export", "run two")
    assert results.read_text(encoding="utf-8") == (
        "# Benchmarks\n\n## Crawl\n\n### Export\n\nabout exports\n\n## Export\n\nrun one\n\nrun two\n")
