"""Long fuzz runs of the property tests that CI runs briefly (issue: hostile inputs). Not run in CI.

    .venv/bin/python scripts/fuzz.py TARGET [--minutes 10]      TARGET: html urls answers images settings storable

Each target is one or more Hypothesis property tests from tests/unit/; they are run again and again with a
fresh random seed and many examples until the time is up. A failing example stops the run with Hypothesis's
report (the minimal failing input); the last line says how many examples ran and the slowest round.
Record a run's result, command and machine in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
TARGETS: dict[str, list[str]] = {
    "html": ["tests.unit.test_crawl_guard:test_extraction_never_raises_and_stays_bounded_on_arbitrary_html"],
    "urls": ["tests.unit.test_urls:test_arbitrary_text_normalises_or_is_refused_cleanly",
             "tests.unit.test_urls:test_url_normal_form_is_idempotent",
             "tests.unit.test_urls:test_host_normal_form_is_stable_under_case_idna_and_trailing_dot"],
    "answers": ["tests.unit.test_parsing:test_fuzzed_hostile_answers_never_raise_and_parse_in_bounded_time",
                "tests.unit.test_parsing:test_parsing_is_deterministic"],
    "images": ["tests.unit.test_images_fuzz:test_mutated_images_always_get_a_decision_quickly"],
    "settings": ["tests.unit.test_config:test_any_value_is_taken_or_refused_by_name"],
    "storable": ["tests.unit.test_synthesis_storable:test_any_text_becomes_storable"],
}
EXAMPLES_PER_ROUND = 500


def _load(spec: str) -> Callable[[], None]:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/fuzz.py", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # the tests package, run from anywhere
    tests = [_load(spec) for spec in TARGETS[args.target]]
    deadline = time.monotonic() + 60 * args.minutes
    rounds = examples = 0
    slowest = 0.0
    rng = random.Random()
    long_run = settings(max_examples=EXAMPLES_PER_ROUND, deadline=None, derandomize=False, database=None,
                        suppress_health_check=list(HealthCheck))
    while time.monotonic() < deadline:
        for test in tests:
            started = time.perf_counter()
            # The tests carry CI's small settings; a long run replaces them, and the seed, on the test itself
            # (Hypothesis reads both attributes when the test is called).
            test._hypothesis_internal_use_settings = long_run  # type: ignore[attr-defined]
            test._hypothesis_internal_use_seed = rng.getrandbits(64)  # type: ignore[attr-defined]
            test()
            slowest = max(slowest, time.perf_counter() - started)
            rounds += 1
            examples += EXAMPLES_PER_ROUND
    print(f"fuzz {args.target}: {rounds} rounds, up to {examples} examples in {args.minutes:g} min, "
          f"no failure; slowest round {slowest:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
