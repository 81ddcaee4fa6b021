"""The QC report people look at: one static HTML site per qc_run, rendered from the lineage database.

`write_qc_report(engine, store, qc_run_id, out_dir)` renders the site and uploads it to
qc/<qc_run_id>/report/ in the bucket (index.html is the key recorded in qc_run.results["report_key"]);
`fetch_qc_report` copies a published report into a folder (the release's `qc_report/`). The report
covers the samples this run labelled (sample.qc_run_id), i.e. the scope the gate was called with —
for a release, the release's filters before any size cap.

What it shows and why:

- index.html — the run's numbers and failed expectations; pass rate per check across earlier qc runs
  (a rule that suddenly drops names a prompt or model change) and by crawl date within this run (a bad
  day); distributions per task type of answer length, rounds, CJK ratio and OCR coverage with the
  thresholds drawn in (is a threshold cutting the body of the distribution or its tail?); failed samples
  per task type and check (a rule that fires on one task only, such as a floor, hides in the overall
  counts); the top rejection reasons, each with one example sample (its image and conversation excerpt), so a reviewer
  can judge whether a rule is right.
- samples.html — a deterministic random page of passed samples with their images: what ships.
- index.html's faithfulness section — what the faithfulness judge (tuwen.judge) said about this run's
  samples: how many were judged and why the others were not, the pass rate of `faithfulness.judge`
  among the judged, and a few contradicted statements with their samples, so a reviewer can see
  whether the judge flags real errors; or one line saying the judge did not run.

Plots are PNG files next to the HTML (matplotlib's object API on the Agg canvas: no pyplot global
state in a worker process); images are the model-ready copies from the bucket, referenced by relative
path so the folder works from disk, from the bucket, or inside a release.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import mimetypes
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine

from tuwen.domain import TASK_TYPES
from tuwen.quality import queries
from tuwen.storage import ObjectStore

log = logging.getLogger(__name__)

REPORT_DIR = "report"
N_PASSED_SAMPLES = 12
N_TOP_REASONS = 15
N_HISTORY_RUNS = 60
EXCERPT_TURNS = 4
EXCERPT_CHARS = 280
N_FAITHFULNESS_EXAMPLES = 6
STATEMENT_CHARS = 300
TASK_COLORS = {"conversation": "#1f77b4", "complex_reasoning": "#ff7f0e", "detail": "#2ca02c"}


def report_prefix(qc_run_id: int) -> str:
    return f"qc/{qc_run_id}/{REPORT_DIR}/"


@dataclass
class SampleView:
    """One sample as the report shows it."""

    id: str
    task_type: str
    reasons: list[str]
    metrics: dict[str, Any]
    turns: list[tuple[str, str]]  # (role, text), long turns cut
    image: str | None  # relative path inside the report


# --------------------------------------------------------------------------------------------- data


@dataclass
class FaithfulnessView:
    """The faithfulness section: counts, and contradicted statements per example sample."""

    n_samples: int
    n_judged: int
    n_contradicted: int
    unjudged: list[tuple[str, int]]  # reason, samples
    examples: list[tuple[str, str, str, list[str]]]  # sample id, task type, judge model, statements

    @property
    def pass_rate(self) -> float | None:
        """Share of judged samples that passed faithfulness.judge; None when none was judged."""
        return (self.n_judged - self.n_contradicted) / self.n_judged if self.n_judged else None


def _faithfulness(engine: Engine, qc_run_id: int) -> FaithfulnessView | None:
    rows = queries.faithfulness_rows(engine, qc_run_id, n_examples=N_FAITHFULNESS_EXAMPLES)
    if rows is None:
        return None
    examples = []
    for row in rows.examples:
        statements = [str(s.get("text", "")) for s in (row.statements or [])
                      if isinstance(s, dict) and s.get("label") == "contradicted"]
        examples.append((row.id, row.task_type, row.model,
                         [t if len(t) <= STATEMENT_CHARS else t[:STATEMENT_CHARS] + "…" for t in statements]))
    return FaithfulnessView(rows.n_samples, rows.n_judged, rows.n_contradicted,
                            [(r.reason, r.n) for r in rows.unjudged], examples)


def _excerpt(conversations: Any, max_turns: int = EXCERPT_TURNS, max_chars: int = EXCERPT_CHARS
             ) -> list[tuple[str, str]]:
    """The first and the last turns (a truncation or a refusal usually sits at the end), each cut."""
    turns = conversations if isinstance(conversations, list) else []
    if len(turns) > max_turns:
        head, tail = max_turns // 2, max_turns - max_turns // 2
        picked: list[Any] = [*turns[:head], None, *turns[-tail:]]
    else:
        picked = list(turns)
    shown: list[tuple[str, str]] = []
    for turn in picked:
        if turn is None:
            shown.append(("…", f"{len(turns) - max_turns} turns not shown"))
            continue
        role = str(turn.get("from", "?")) if isinstance(turn, dict) else "?"
        value = turn.get("value") if isinstance(turn, dict) else None
        value = value if isinstance(value, str) else repr(value)
        shown.append((role, value if len(value) <= max_chars else value[:max_chars] + "…"))
    return shown


def _image_file(sha256: str, mime: str | None) -> str:
    return f"images/{sha256}.{'png' if mime == 'image/png' else 'jpg'}"


def _fetch_images(store: ObjectStore, out: Path, wanted: Mapping[str, str]) -> None:
    """wanted: relative path -> object key of the model-ready copy."""
    for rel, key in wanted.items():
        target = out / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.get_bytes(key))


def _load_metrics(engine: Engine, qc_run_id: int) -> dict[str, dict[str, np.ndarray]]:
    """Per task type, arrays of the metrics the distributions plot."""
    columns: dict[str, dict[str, list[float]]] = {
        task: {"answer_chars": [], "rounds": [], "cjk_ratio": [], "ocr_coverage": []} for task in TASK_TYPES}
    names = ("answer_chars", "rounds", "cjk_ratio", "ocr_coverage")
    for row in csv.reader(io.StringIO(queries.metrics_csv(engine, qc_run_id))):
        target = columns.get(row[0])
        if target is None:
            continue
        for name, value in zip(names, row[2:], strict=True):
            if value:
                target[name].append(float(value))
    return {task: {name: np.asarray(values, dtype=np.float32) for name, values in metrics.items()}
            for task, metrics in columns.items()}


def _thresholds(config: Mapping[str, Any]) -> dict[str, Any]:
    """The thresholds that judged this run, from qc_run.config (describe_checks output)."""
    found: dict[str, Any] = {}
    for check in config.get("checks", []):
        found.update(check.get("thresholds", {}))
    return found


# -------------------------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # the object API renders on the Agg canvas, no pyplot state

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _plot_history(history: Sequence[Any], current: int, path: Path) -> None:
    fig = _figure(10, 4.2)
    ax = fig.add_subplot()
    labels = [f"#{r.id}\n{r.created_at:%m-%d %H:%M}" for r in history]
    x = np.arange(len(history))
    rates: dict[str, list[float]] = {}
    for i, run in enumerate(history):
        for name, value in ((run.results or {}).get("check_pass_rates") or {}).items():
            rates.setdefault(name, [np.nan] * len(history))[i] = value
    # The checks that ever dropped the most; a line per check for all 20 would be unreadable.
    worst = sorted(rates, key=lambda name: np.nanmin(rates[name]))[:8]
    for name in worst:
        ax.plot(x, rates[name], marker="o", linewidth=1.2, markersize=4, label=name)
    ax.plot(x, [r.pass_rate or 0.0 for r in history], marker="s", color="black", linewidth=2.4,
            label="overall (all checks)")
    if current in [r.id for r in history]:
        ax.axvline([r.id for r in history].index(current), color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share of samples passing")
    ax.set_title("Pass rate per check across qc runs (8 lowest checks + overall)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(path)


def _plot_by_date(rows: Sequence[Any], path: Path) -> None:
    fig = _figure(10, 3.6)
    ax = fig.add_subplot()
    dates = sorted({r.crawl_date for r in rows})
    x = np.arange(len(dates))
    totals: dict[dt.date, list[int]] = {d: [0, 0] for d in dates}
    for task in TASK_TYPES:
        by_date = {r.crawl_date: r for r in rows if r.task_type == task}
        ax.plot(x, [by_date[d].passed / by_date[d].n if d in by_date else np.nan for d in dates], marker="o",
                color=TASK_COLORS[task], label=task)
        for d, r in by_date.items():
            totals[d][0] += r.passed
            totals[d][1] += r.n
    ax.plot(x, [totals[d][0] / totals[d][1] for d in dates], marker="s", color="black", linewidth=2.2,
            label="all tasks")
    ax.set_xticks(x, [d.isoformat() for d in dates], rotation=45 if len(dates) > 6 else 0, fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("pass rate")
    ax.set_title("Pass rate by crawl date (this run)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)


def _plot_reasons(reasons: Sequence[tuple[str, int]], n_samples: int, path: Path) -> None:
    fig = _figure(10, 0.6 + 0.32 * max(len(reasons), 1))
    ax = fig.add_subplot()
    names = [name for name, _ in reasons][::-1]
    counts = [count for _, count in reasons][::-1]
    bars = ax.barh(names, counts, color="#d62728")
    for bar, count in zip(bars, counts, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f" {count} ({count / max(n_samples, 1):.1%})", va="center", fontsize=8)
    ax.set_xlabel("rejected samples (a sample can fail several checks)")
    ax.set_title("Top rejection reasons")
    ax.margins(x=0.2)
    fig.savefig(path)


def _plot_distributions(metrics: Mapping[str, Mapping[str, np.ndarray]], thresholds: Mapping[str, Any],
                        path: Path) -> None:
    fig = _figure(11, 7.5)
    axes = fig.subplots(2, 2)
    panels = (
        (axes[0][0], "answer_chars", "answer length (characters, all answers of a sample)"),
        (axes[0][1], "rounds", "rounds (human/gpt pairs)"),
        (axes[1][0], "cjk_ratio", "CJK share of letters in answers (outside quotes)"),
        (axes[1][1], "ocr_coverage", "OCR coverage (detail with Chinese OCR text)"),
    )
    for ax, name, title in panels:
        present = {task: values[name] for task, values in metrics.items() if len(values[name])}
        if not present:
            ax.text(0.5, 0.5, "no samples carry this metric", ha="center", va="center", transform=ax.transAxes)
        elif name == "rounds":
            width = 0.8 / len(present)
            for i, (task, values) in enumerate(present.items()):
                levels, counts = np.unique(values.astype(int), return_counts=True)
                ax.bar(levels + (i - (len(present) - 1) / 2) * width, counts / len(values), width=width,
                       color=TASK_COLORS[task], label=f"{task} (n={len(values)})")
            ax.set_ylabel("share of task's samples")
        else:
            upper = max(float(np.percentile(v, 99.5)) for v in present.values()) if name == "answer_chars" else 1.0
            bins = np.linspace(0.0, max(upper, 1.0), 41)
            for task, values in present.items():
                ax.hist(np.clip(values, 0, bins[-1]), bins=bins, histtype="step", linewidth=1.6,
                        color=TASK_COLORS[task], weights=np.full(len(values), 1 / len(values)),
                        label=f"{task} (n={len(values)}, median {np.median(values):.2f})"
                        if name != "answer_chars" else f"{task} (n={len(values)}, median {np.median(values):.0f})")
            ax.set_ylabel("share of task's samples")
        _threshold_lines(ax, name, thresholds, present)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Distributions per task type (dashed: thresholds that judged this run)")
    fig.savefig(path)


def _threshold_lines(ax: Any, name: str, thresholds: Mapping[str, Any], present: Mapping[str, Any]) -> None:
    if name == "answer_chars":
        for key in ("min_answer_chars", "max_answer_chars"):
            for task, value in (thresholds.get(key) or {}).items():
                if task in present and value <= ax.get_xlim()[1]:
                    ax.axvline(value, color=TASK_COLORS.get(task, "grey"), linestyle="--", linewidth=1)
    elif name == "cjk_ratio" and "zh_min_cjk_ratio" in thresholds:
        ax.axvline(thresholds["zh_min_cjk_ratio"], color="red", linestyle="--", linewidth=1, label="zh minimum")
    elif name == "ocr_coverage" and "ocr_min_coverage" in thresholds:
        ax.axvline(thresholds["ocr_min_coverage"], color="red", linestyle="--", linewidth=1, label="minimum")


# --------------------------------------------------------------------------------------------- html

_CSS = """
body{font-family:"Noto Sans CJK SC","WenQuanYi Micro Hei","PingFang SC","Microsoft YaHei",sans-serif;
margin:24px auto;max-width:1180px;color:#222;line-height:1.5}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table.summary td,table.summary th{padding:2px 10px;text-align:left;border-bottom:1px solid #eee}
img.plot{max-width:100%;border:1px solid #eee}
.fail{color:#b00020;font-weight:bold}.pass{color:#1b7f3b;font-weight:bold}
.card{display:flex;gap:16px;border:1px solid #ddd;border-radius:6px;padding:12px;margin:12px 0}
.card img{width:260px;height:auto;object-fit:contain;align-self:flex-start;border:1px solid #eee}
.turn{margin:4px 0;white-space:pre-wrap}.role{font-weight:bold;color:#555;margin-right:6px}
.reason{display:inline-block;background:#fde7ea;color:#b00020;border-radius:3px;padding:0 6px;margin:2px;
font-size:12px}.meta{color:#666;font-size:12px}
"""

_INDEX = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>QC report — qc_run {{ run.id }}</title>
<style>{{ css|safe }}</style></head><body>
<h1>QC report — qc_run {{ run.id }}
 <span class="{{ 'pass' if run.success else 'fail' }}">{{ 'PASSED' if run.success else 'FAILED' }}</span></h1>
<table class="summary">
<tr><th>suite</th><td>{{ run.suite }} {{ run.suite_version }}</td></tr>
<tr><th>scope</th><td>crawl dates {{ scope.date_from or 'start' }} .. {{ scope.date_to or 'end' }};
 languages {{ scope.languages|join(', ') }}; tasks {{ scope.task_types|join(', ') }}</td></tr>
<tr><th>created</th><td>{{ run.created_at.strftime('%Y-%m-%d %H:%M:%S %Z') }}
 {% if run.dag_id %}(Airflow {{ run.dag_id }} / {{ run.run_id }}){% endif %}</td></tr>
<tr><th>samples</th><td>{{ run.n_samples }} judged, {{ run.n_passed }} passed, {{ run.n_failed }} failed
 (labelled by this run now: {{ labelled }})</td></tr>
<tr><th>pass rate</th><td>{{ '%.1f%%'|format(100 * (run.pass_rate or 0)) }}
 (minimum {{ '%.0f%%'|format(100 * min_pass_rate) }})</td></tr>
<tr><th>task mix of passed</th><td>{% for t, s in task_mix.items() %}{{ t }} {{ '%.1f%%'|format(100 * s) }}
 {% endfor %}</td></tr>
<tr><th>failed expectations</th><td>{% for e in failed_expectations %}<span class="reason">{{ e }}</span>
 {% else %}none{% endfor %}</td></tr>
<tr><th>skipped rules</th><td>{{ skipped|join('; ') or 'none' }}</td></tr>
<tr><th>image curation</th><td id="curation">{% for status, n in curation.items() %}{{ status }} {{ n }}{{ ', ' if not
 loop.last }}{% else %}no curation verdicts in scope{% endfor %} (tuwen.curate: synthesis took curated images only)</td></tr>
<tr><th>Great Expectations</th><td>{{ data_docs_key or 'no Data Docs' }}</td></tr>
</table>
<p><a href="samples.html" id="passed-samples-link">Random passed samples with their images →</a></p>
<h2 id="faithfulness">Faithfulness judge</h2>
{% if faithfulness is none %}<p id="faithfulness-not-run">The faithfulness judge did not run: there is no
judgement in the lineage database, so <code>faithfulness.judge</code> passed every sample as unjudged.</p>
{% else %}<table class="summary" id="faithfulness-summary">
<tr><th>judged</th><td>{{ faithfulness.n_judged }} of {{ faithfulness.n_samples }} samples
 ({{ '%.1f%%'|format(100 * faithfulness.n_judged / (faithfulness.n_samples or 1)) }})</td></tr>
<tr><th>unjudged</th><td>{{ faithfulness.n_samples - faithfulness.n_judged }} (pass the check){% for reason, n in
 faithfulness.unjudged %}{{ ':' if loop.first else ',' }} {{ reason }} {{ n }}{% endfor %}</td></tr>
<tr><th>pass rate among judged</th><td>{% if faithfulness.pass_rate is none %}no sample judged{% else %}
 {{ '%.1f%%'|format(100 * faithfulness.pass_rate) }} ({{ faithfulness.n_contradicted }} with a contradicted
 statement){% endif %}</td></tr>
</table>
{% for sample_id, task_type, model, statements in faithfulness.examples %}
<div class="card contradicted" id="contradicted-{{ sample_id }}"><div>
<div class="meta">{{ sample_id }} ({{ task_type }}), judged by {{ model }}: contradicted by the image</div>
<ul>{% for text in statements %}<li class="statement">{{ text }}</li>{% endfor %}</ul></div></div>
{% endfor %}{% endif %}
<h2>Pass rate per check over time</h2>
{% for plot in ('pass_rate_history', 'pass_rate_by_crawl_date') %}
<p><img class="plot" id="plot-{{ plot }}" src="plots/{{ plot }}.png" alt="{{ plot }}"></p>{% endfor %}
<h2>Distributions per task type</h2>
<p><img class="plot" id="plot-distributions" src="plots/distributions.png" alt="distributions"></p>
<h2>Rejections per task and check</h2>
{% if by_task.reasons %}<table class="summary" id="reasons-by-task">
<tr><th>check</th>{% for task in by_task.tasks %}<th>{{ task }}</th>{% endfor %}</tr>
<tr><th>samples (failed)</th>{% for task in by_task.tasks %}<td>{{ by_task.samples[task] }}
 ({{ by_task.failed[task] }})</td>{% endfor %}</tr>
{% for reason in by_task.reasons %}<tr id="by-task-{{ reason }}"><th>{{ reason }}</th>
{% for task in by_task.tasks %}{% set n = by_task.counts.get((task, reason), 0) %}<td class="n" data-task="{{ task }}">
{{ n }}{% if n %} ({{ '%.1f%%'|format(100 * n / (by_task.samples[task] or 1)) }}){% endif %}</td>{% endfor %}</tr>
{% endfor %}</table>
<p class="meta">Samples of each task that failed each check (a sample fails every check it breaks, so a
column can add up to more than its failed samples); the share is of the task's samples in this run.</p>
{% else %}<p>No sample was rejected.</p>{% endif %}
<h2>Top rejection reasons</h2>
{% if reasons %}<p><img class="plot" id="plot-top_reasons" src="plots/top_reasons.png" alt="top reasons"></p>
{% else %}<p>No sample was rejected.</p>{% endif %}
{% for reason, count in reasons %}{% set ex = examples.get(reason) %}
<div class="card rejection" id="reason-{{ reason }}">
{% if ex and ex.image %}<img class="sample-image" src="{{ ex.image }}" alt="image of {{ ex.id }}">{% endif %}
<div><div><b>{{ reason }}</b> — {{ count }} samples. {{ descriptions.get(reason, '') }}</div>
{% if ex %}<div class="meta">example {{ ex.id }} ({{ ex.task_type }}); all its reasons:
{% for r in ex.reasons %}<span class="reason">{{ r }}</span>{% endfor %}
{% if 'near_duplicate_of' in ex.metrics %}; near-duplicate of {{ ex.metrics['near_duplicate_of'] }}{% endif %}</div>
{% for role, value in ex.turns %}<div class="turn"><span class="role">{{ role }}</span>{{ value }}</div>{% endfor %}
{% endif %}</div></div>{% endfor %}
</body></html>
"""

_SAMPLES = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>Passed samples — qc_run {{ run.id }}</title>
<style>{{ css|safe }}</style></head><body>
<h1>Passed samples — qc_run {{ run.id }}</h1>
<p>{{ samples|length }} passed samples drawn at random (seed {{ seed }}, same draw on every render) from
{{ run.n_passed }}. <a href="index.html">← report</a></p>
{% for s in samples %}<div class="card passed-sample" id="sample-{{ s.id }}">
{% if s.image %}<img class="sample-image" src="{{ s.image }}" alt="image of {{ s.id }}">{% endif %}
<div><div class="meta">{{ s.id }} — {{ s.task_type }}; {{ s.metrics.get('answer_chars', 0)|int }} answer characters,
{{ s.metrics.get('rounds', 0)|int }} rounds{% if 'ocr_coverage' in s.metrics %},
 OCR coverage {{ '%.2f'|format(s.metrics['ocr_coverage']) }}{% endif %}</div>
{% for role, value in s.turns %}<div class="turn"><span class="role">{{ role }}</span>{{ value }}</div>{% endfor %}
</div></div>{% else %}<p>No sample passed.</p>{% endfor %}
</body></html>
"""


@dataclass
class ByTaskView:
    """Failed samples per task type and check of one run (the report's per-task table)."""

    tasks: list[str]
    samples: dict[str, int]  # samples of the task this run labelled
    failed: dict[str, int]
    reasons: list[str]  # checks that failed at least one sample, in registry order
    counts: dict[tuple[str, str], int]  # (task, reason) -> failed samples


def _by_task(by_date: Sequence[Any], by_task_reason: Sequence[Any], order: Sequence[str]) -> ByTaskView:
    samples: dict[str, int] = {}
    failed: dict[str, int] = {}
    for row in by_date:
        samples[row.task_type] = samples.get(row.task_type, 0) + row.n
        failed[row.task_type] = failed.get(row.task_type, 0) + row.n - row.passed
    counts = {(row.task_type, row.reason): row.n for row in by_task_reason}
    seen = {reason for _, reason in counts}
    reasons = [r for r in order if r in seen] + sorted(seen.difference(order))
    tasks = [t for t in TASK_TYPES if t in samples] + sorted(set(samples).difference(TASK_TYPES))
    return ByTaskView(tasks, samples, failed, reasons, counts)


def _sample_views(rows: Sequence[Any], max_turns: int, max_chars: int) -> tuple[list[SampleView], dict[str, str]]:
    views, images = [], {}
    for row in rows:
        rel = _image_file(row.sha256, row.model_mime) if row.model_key else None
        if rel:
            images[rel] = row.model_key
        views.append(SampleView(row.id, row.task_type, list(row.qc_reasons or []), dict(row.qc_metrics or {}),
                                _excerpt(row.conversations, max_turns, max_chars), rel))
    return views, images


def render_qc_report(engine: Engine, store: ObjectStore, qc_run_id: int, out_dir: Path, *, seed: int = 0,
                     n_passed_samples: int = N_PASSED_SAMPLES) -> Path:
    """Render the report of one qc_run into out_dir (created); returns index.html."""
    import jinja2

    from tuwen.curate.queries import counts_between as curation_counts
    from tuwen.quality.checks import CHECKS
    from tuwen.quality.near_duplicates import NEAR_DUPLICATE_REASON

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plots").mkdir(exist_ok=True)
    rows = queries.report_rows(engine, qc_run_id, n_history=N_HISTORY_RUNS, seed=seed, n_passed=n_passed_samples)
    run, history, by_date, examples_rows, passed_rows = rows.run, rows.history, rows.by_date, rows.examples, rows.passed
    labelled = sum(r.n for r in by_date)
    results = run.results or {}
    reasons = sorted((results.get("failed_reasons") or {}).items(), key=lambda kv: (-kv[1], kv[0]))[:N_TOP_REASONS]
    examples, example_images = _sample_views(examples_rows, EXCERPT_TURNS, EXCERPT_CHARS)
    samples, sample_images = _sample_views(passed_rows, 10, 600)
    _fetch_images(store, out_dir, example_images | sample_images)

    plots = out_dir / "plots"
    _plot_history(history, qc_run_id, plots / "pass_rate_history.png")
    _plot_by_date(by_date, plots / "pass_rate_by_crawl_date.png")
    _plot_distributions(_load_metrics(engine, qc_run_id), _thresholds(run.config or {}), plots / "distributions.png")
    if reasons:
        _plot_reasons(reasons, run.n_samples, plots / "top_reasons.png")


    by_task = _by_task(rows.by_date, rows.by_task_reason, [*CHECKS, NEAR_DUPLICATE_REASON])
    descriptions = {name: spec.description for name, spec in CHECKS.items()}
    descriptions[NEAR_DUPLICATE_REASON] = ("its answers are a near-copy (MinHash Jaccard ≥ 0.8) of another "
                                           "sample's; the one with the smallest id is kept")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    context = {
        "css": _CSS, "run": run, "scope": {"languages": [], "task_types": [], **(run.scope or {})},
        "labelled": labelled, "min_pass_rate": (run.config or {}).get("min_pass_rate", 0.0),
        "task_mix": results.get("task_mix") or {}, "failed_expectations": results.get("failed_expectations") or [],
        "skipped": results.get("skipped") or [], "data_docs_key": run.data_docs_key, "reasons": reasons,
        "examples": {row.reason: view for row, view in zip(examples_rows, examples, strict=True)},
        "descriptions": descriptions, "samples": samples, "seed": seed,
        "faithfulness": _faithfulness(engine, qc_run_id), "by_task": by_task,
        "curation": curation_counts(engine, (run.scope or {}).get("date_from"), (run.scope or {}).get("date_to")),
    }
    index = out_dir / "index.html"
    index.write_text(env.from_string(_INDEX).render(context), encoding="utf-8")
    (out_dir / "samples.html").write_text(env.from_string(_SAMPLES).render(context), encoding="utf-8")
    return index


def publish_qc_report(store: ObjectStore, qc_run_id: int, report_dir: Path) -> str:
    """Upload a rendered report to qc/<qc_run_id>/report/; returns the key of index.html."""
    prefix = report_prefix(qc_run_id)
    for path in sorted(p for p in report_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(report_dir).as_posix()
        content_type = mimetypes.guess_type(rel)[0] or "application/octet-stream"
        if content_type == "text/html":
            content_type += "; charset=utf-8"
        store.put_file(prefix + rel, path, content_type)
    return prefix + "index.html"


def write_qc_report(engine: Engine, store: ObjectStore, qc_run_id: int, out_dir: Path | None = None) -> str:
    """Render and publish the report of a qc_run; record its key in qc_run.results["report_key"].
    With out_dir the rendered files stay there; otherwise they live in a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        target = out_dir if out_dir is not None else Path(tmp)
        render_qc_report(engine, store, qc_run_id, target)
        key = publish_qc_report(store, qc_run_id, target)
    queries.record_report_key(engine, qc_run_id, key)
    log.info("QC report of qc_run %d at s3 %s%s", qc_run_id, key, f" and {out_dir}" if out_dir else "")
    return key


def fetch_qc_report(store: ObjectStore, qc_run_id: int, dest: Path) -> Path:
    """Copy a published report from the bucket into dest (e.g. <release>/qc_report); returns index.html.
    Copied, not re-rendered: the release carries exactly the report the gate decided on."""
    prefix = report_prefix(qc_run_id)
    keys = store.list_keys(prefix)
    if not keys:
        raise FileNotFoundError(f"no QC report under s3 {prefix} (was the gate run with report=False?)")
    if dest.exists():
        shutil.rmtree(dest)
    for key in keys:
        target = dest / key[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.get_bytes(key))
    return dest / "index.html"
