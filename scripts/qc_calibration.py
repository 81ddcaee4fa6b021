"""Re-measure the per-sample QC checks on the calibration set (outside CI).

The calibration set is real, public LLaVA-style records nobody on this project wrote. The repository
keeps only their provenance (tests/unit/data/calibration/sources.json: repository, commit, path,
count) and our labels (labels.jsonl: keep, or reject with a reason class, per source and record
index); the texts are read from their repositories at the pinned commit into a git-ignored cache:

    .venv/bin/python scripts/qc_calibration.py                  # tables on stdout
    .venv/bin/python scripts/qc_calibration.py --json out.json  # the figures as JSON too

A source file is looked for in the cache (--cache, default .run/qc-calibration/<owner>+<repo>/
<commit>/<path>), then in a local clone (--mirror DIR holding <owner>+<repo>/repo, read with
`git show <commit>:<path>`; a bare mirror works as well), then downloaded from raw.githubusercontent.com.

How records become samples: LLaVA-Bench qa90 categories map to our tasks (conv → conversation,
detail → detail, complex → complex_reasoning); LLaMA-Factory messages become human/gpt turns with
the one <image> at the start of the first question; OwlEval questions are sorted by what they ask
(a request to describe → detail; the rest → a one-round conversation). None of
the sources records a finish_reason, so every sample is judged with it unknown (None).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "unit" / "data" / "calibration"
DEFAULT_CACHE = ROOT / ".run" / "qc-calibration"

sys.path.insert(0, str(ROOT / "plugins"))

from tuwen.domain import IMAGE_TOKEN  # noqa: E402
from tuwen.quality.checks import CHECKS, QCConfig, SampleForQC, run_checks  # noqa: E402

QA90_TASKS = {"conv": "conversation", "detail": "detail", "complex": "complex_reasoning"}
DESCRIBE_WORDS = ("describe", "description", "as detailed as possible")


@dataclass(frozen=True)
class Record:
    source: str
    index: int
    sample: SampleForQC


def read_source_file(source: dict[str, Any], path: str, cache: Path, mirror: Path | None) -> str:
    owner_repo = source["repo"].replace("/", "+")
    cached = cache / owner_repo / source["commit"] / path
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    text = None
    if mirror is not None and (mirror / owner_repo / "repo").exists():
        result = subprocess.run(["git", "-C", str(mirror / owner_repo / "repo"), "show", f"{source['commit']}:{path}"],
                                capture_output=True, check=False)
        if result.returncode == 0:
            text = result.stdout.decode("utf-8")
    if text is None:
        url = f"https://raw.githubusercontent.com/{source['repo']}/{source['commit']}/{path}"
        with urllib.request.urlopen(url, timeout=60) as response:
            text = response.read().decode("utf-8")
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(text, encoding="utf-8")
    return text


def _jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def owleval_task(question: str) -> str:
    """OwlEval asks open questions of every kind, not LLaVA's three tasks: a request for a description
    is a detail sample, anything else a one-round conversation (what a question asks for, the checks
    read from the question itself)."""
    return "detail" if any(word in question.lower() for word in DESCRIBE_WORDS) else "conversation"


def _turns(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"}, {"from": "gpt", "value": answer}]


def load_records(source: dict[str, Any], cache: Path, mirror: Path | None) -> Iterator[Record]:
    def read(name: str) -> str:
        return read_source_file(source, source["paths"][name], cache, mirror)

    if source["format"] == "llava_qa90":
        questions = {q["question_id"]: q for q in _jsonl(read("questions"))}
        for index, answer in enumerate(_jsonl(read("answers"))):
            question = questions[answer["question_id"]]
            yield Record(source["id"], index, SampleForQC(
                QA90_TASKS[question["category"]], source["language"], _turns(question["text"], answer["text"])))
    elif source["format"] == "owleval":
        for index, answer in enumerate(_jsonl(read("answers"))):
            yield Record(source["id"], index, SampleForQC(
                owleval_task(answer["question"]), source["language"], _turns(answer["question"], answer["answer"])))
    elif source["format"] == "sharegpt_messages":
        for index, item in enumerate(json.loads(read("data"))):
            turns = [{"from": "human" if m["role"] == "user" else "gpt",
                      "value": m["content"].replace(IMAGE_TOKEN, "").strip()} for m in item["messages"]]
            turns[0]["value"] = f"{IMAGE_TOKEN}\n{turns[0]['value']}"
            answers = "".join(t["value"] for t in turns if t["from"] == "gpt")
            language = "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in answers) else "en"
            yield Record(source["id"], index, SampleForQC("conversation", language, turns))
    else:
        raise ValueError(f"source {source['id']}: unknown format {source['format']!r}")


def measure(records: list[Record], labels: dict[tuple[str, int], dict[str, Any]],
            config: QCConfig) -> dict[str, Any]:
    """False-reject rate of keep-worthy records and recall on the labelled rejects, overall, per
    language, per task, per source and per check."""
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    by_check: dict[str, Counter[str]] = defaultdict(Counter)
    by_task_check: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    wrong: list[dict[str, Any]] = []
    for record in records:
        label = labels[(record.source, record.index)]
        verdict = run_checks(record.sample, config)
        keys = ("all", f"language:{record.sample.language}", f"task:{record.sample.task_type}",
                f"source:{record.source}")
        if label["label"] == "reject":
            keys += (f"class:{label['class']}",)
        for key in keys:
            groups[key][label["label"]] += 1
            groups[key][f"{label['label']}_rejected"] += not verdict.passed
        for reason in verdict.reasons:
            by_check[reason][f"{label['label']}_rejected"] += 1
            by_task_check[record.sample.task_type][reason][f"{label['label']}_rejected"] += 1
        if (label["label"] == "keep") != verdict.passed:
            wrong.append({"source": record.source, "index": record.index, "label": label["label"],
                          "class": label["class"], "task": record.sample.task_type, "reasons": verdict.reasons})
    return {
        "groups": {key: {"keep": c["keep"], "keep_rejected": c["keep_rejected"],
                         "reject": c["reject"], "reject_rejected": c["reject_rejected"]}
                   for key, c in sorted(groups.items())},
        "by_check": {name: dict(by_check[name]) for name in CHECKS if name in by_check},
        "by_task_check": {task: {name: dict(checks[name]) for name in CHECKS if name in checks}
                          for task, checks in sorted(by_task_check.items())},
        "disagreements": wrong,
    }


def _rate(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.1f} %)" if whole else "–"


def markdown(figures: dict[str, Any]) -> str:
    lines = ["| group | keep-worthy rejected (false-reject) | bad rejected (recall) |", "|---|---|---|"]
    for key, c in figures["groups"].items():
        lines.append(f"| {key} | {_rate(c['keep_rejected'], c['keep'])} | {_rate(c['reject_rejected'], c['reject'])} |")
    lines += ["", "| check | keep-worthy records it rejects | bad records it rejects |", "|---|---|---|"]
    for name, c in figures["by_check"].items():
        lines.append(f"| `{name}` | {c.get('keep_rejected', 0)} | {c.get('reject_rejected', 0)} |")
    # Per task and check: which rule does the work on which task (keep-worthy / bad records it rejects).
    tasks = sorted(key.removeprefix("task:") for key in figures["groups"] if key.startswith("task:"))
    lines += ["", "| check | " + " | ".join(f"{task}: keep-worthy / bad" for task in tasks) + " |",
              "|---|" + "---|" * len(tasks)]
    for name in figures["by_check"]:
        cells = []
        for task in tasks:
            c = figures["by_task_check"].get(task, {}).get(name, {})
            cells.append(f"{c.get('keep_rejected', 0)} / {c.get('reject_rejected', 0)}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--mirror", type=Path, default=None, help="folder of <owner>+<repo>/repo git clones")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--disagreements", action="store_true", help="list every record the checks get wrong")
    args = parser.parse_args(argv)

    sources = json.loads((DATA / "sources.json").read_text(encoding="utf-8"))["sources"]
    labels = {(row["source"], row["index"]): row
              for row in map(json.loads, (DATA / "labels.jsonl").read_text(encoding="utf-8").splitlines())}
    records: list[Record] = []
    for source in sources:
        loaded = list(load_records(source, args.cache, args.mirror))
        if len(loaded) != source["count"]:
            raise SystemExit(f"{source['id']}: {len(loaded)} records at {source['commit']}, provenance says "
                             f"{source['count']}")
        records += loaded
    missing = set(labels) ^ {(r.source, r.index) for r in records}
    if missing:
        raise SystemExit(f"labels and records differ: {sorted(missing)[:5]} …")
    figures = measure(records, labels, QCConfig())
    print(markdown(figures))
    if args.disagreements:
        for row in figures["disagreements"]:
            print(json.dumps(row, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(figures, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
