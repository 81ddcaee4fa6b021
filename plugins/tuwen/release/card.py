"""The release's dataset card (README.md), written from the lineage database, in Chinese and English.

It follows the seed card (llava-instruct-zh-600k): what the data is, a task table with counts, the
prompts verbatim — here with their versions and SHA-256 — plus what the seed left out: the model and
sampling settings actually used (from `generation`), the sites the images came from, the QC rules with
their thresholds and how many samples each dropped (from the `qc_run`), OCR statistics, dates, and how
to load the files in LLaVA, Qwen2.5-VL fine-tuning and LLaMA-Factory.

Facts are gathered by `collect_facts` (SQL in `tuwen.release.queries`, over `export_item` and what it
points at) and rendered by `render_card`, a pure function: the Jinja template `templates/card.md.j2` holds the card's text. Everything is ordered explicitly and numbers have fixed formats, so the
same release over the same lineage gives the same bytes; the only dates are the lineage's own.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy import Connection, Engine

from tuwen.domain import TASK_TYPES
from tuwen.release import queries
from tuwen.synthesis.prompts import DETAIL_INSTRUCTIONS, PromptError, load_prompts

CARD_TEMPLATE = "card.md.j2"
TASK_NAMES = {  # the seed card's names
    "conversation": ("日常对话", "Daily Dialogue"),
    "complex_reasoning": ("复杂推理", "Complex Reasoning"),
    "detail": ("描述图片", "Image Captioning"),
}


@dataclass
class CardFacts:
    release: str
    params: dict[str, Any]
    manifest: dict[str, Any]
    tasks: list[dict[str, Any]] = field(default_factory=list)  # task_type, samples, avg_rounds
    prompts: list[dict[str, Any]] = field(default_factory=list)  # id, version, sha256, samples, text
    models: list[dict[str, Any]] = field(default_factory=list)  # model, sampling, samples, tokens
    finish_reasons: list[tuple[str, int]] = field(default_factory=list)
    sites: list[tuple[str, int]] = field(default_factory=list)
    sources: dict[str, Any] = field(default_factory=dict)  # pages, urls, crawl_runs
    dates: dict[str, Any] = field(default_factory=dict)
    ocr: dict[str, Any] = field(default_factory=dict)
    qc_runs: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, Any] = field(default_factory=dict)
    # The faithfulness judge over the release's samples (empty: it did not run for them): judged, calls,
    # prompt_tokens, completion_tokens, models; gate_judged, gate_contradicted from the release's qc runs.
    judge: dict[str, Any] = field(default_factory=dict)
    curation: dict[str, Any] = field(default_factory=dict)  # by_status, by_reason over the crawl dates


def collect_facts(conn: Connection, export_id: int, params: Mapping[str, Any], manifest: Mapping[str, Any],
                  prompts_dir: Path) -> CardFacts:
    """Everything the card says about the samples in `export_item` for this export: four queries, one
    pass each over the release."""
    facts = CardFacts(release=str(params["name"]), params=dict(params), manifest=dict(manifest))
    queries.set_work_mem(conn)
    try:
        known = load_prompts(prompts_dir)
    except PromptError:
        known = {}
    rows = queries.card_groups(conn, export_id)
    tasks: dict[str, dict[str, Any]] = {}
    prompts: dict[tuple, dict[str, Any]] = {}
    models: dict[tuple, dict[str, Any]] = {}
    finish: dict[str, int] = {}
    totals = {"n": 0, "zh_text": 0, "no_zh_text": 0, "ocr_chars": 0, "ocr_measured": 0, "width": 0, "height": 0}
    for r in rows:
        n = int(r.n)
        t = tasks.setdefault(r.task_type, {"task_type": r.task_type, "samples": 0, "rounds": 0})
        t["samples"] += n
        t["rounds"] += int(r.rounds or 0)
        prompt = known.get(r.prompt_id)
        entry = prompts.setdefault((r.prompt_id, r.prompt_version, r.prompt_sha256), {
            "id": r.prompt_id, "version": r.prompt_version, "sha256": r.prompt_sha256, "task_type": r.task_type,
            "language": r.language, "samples": 0,
            "text": prompt.text if prompt is not None and prompt.sha256 == r.prompt_sha256 else None})
        entry["samples"] += n
        m = models.setdefault((r.model, r.sampling, r.task_type), {
            "model": r.model, "sampling": json.loads(r.sampling), "task_type": r.task_type, "samples": 0,
            "prompt_tokens": 0, "completion_tokens": 0, "latency_ms": 0.0})
        m["samples"] += n
        m["prompt_tokens"] += int(r.prompt_tokens or 0)
        m["completion_tokens"] += int(r.completion_tokens or 0)
        m["latency_ms"] += float(r.latency_ms or 0)
        finish[r.finish_reason or "unknown"] = finish.get(r.finish_reason or "unknown", 0) + n
        totals["n"] += n
        for key in ("zh_text", "no_zh_text", "ocr_chars", "ocr_measured", "width", "height"):
            totals[key] += int(getattr(r, key) or 0)
    facts.tasks = [{"task_type": t["task_type"], "samples": t["samples"],
                    "avg_rounds": t["rounds"] / t["samples"] if t["samples"] else 0.0}
                   for t in sorted(tasks.values(), key=lambda t: TASK_TYPES.index(t["task_type"]))]
    facts.prompts = sorted(prompts.values(), key=lambda p: (TASK_TYPES.index(p["task_type"]), p["language"],
                                                            p["version"], p["sha256"]))
    facts.models = sorted(models.values(), key=lambda m: (m["model"], TASK_TYPES.index(m["task_type"]),
                                                          json.dumps(m["sampling"], sort_keys=True)))
    facts.finish_reasons = sorted(finish.items(), key=lambda kv: (-kv[1], kv[0]))
    days = [d for r in rows for d in (r.first_day, r.last_day) if d is not None]
    crawl = [d for r in rows for d in (r.first_crawl, r.last_crawl) if d is not None]
    facts.dates = {"crawl": (min(crawl), max(crawl)) if crawl else (None, None),
                   "generation": (min(days), max(days)) if days else (None, None)}
    p50, p90 = queries.ocr_percentiles(conn, export_id)
    n = totals["n"]
    facts.ocr = {"zh_text": totals["zh_text"], "no_zh_text": totals["no_zh_text"],
                 "unknown": n - totals["zh_text"] - totals["no_zh_text"], "measured": totals["ocr_measured"],
                 "avg": totals["ocr_chars"] / totals["ocr_measured"] if totals["ocr_measured"] else None,
                 "p50": p50, "p90": p90}
    facts.images = {"avg_width": totals["width"] / n if n else 0.0, "avg_height": totals["height"] / n if n else 0.0}
    src = queries.card_sources(conn, export_id)
    facts.sites = sorted(((r.key, int(r.n)) for r in src if r.kind == "site"), key=lambda kv: (-kv[1], kv[0]))
    facts.sources = {r.kind: int(r.n) for r in src if r.kind != "site"}
    if crawl:  # curation verdicts of the crawl dates the release draws on (tuwen.curate; reasons, never values)
        statuses, reasons = queries.curation_counts(conn, min(crawl), max(crawl))
        if statuses:
            facts.curation = {"by_status": {r.status: int(r.n) for r in statuses},
                              "by_reason": {r.reason: int(r.n) for r in reasons}}
    qc_ids = queries.release_qc_run_ids(conn, export_id)
    for qc_id in qc_ids:
        q = queries.qc_run(conn, qc_id)
        facts.qc_runs.append({
            "id": q.id, "suite": q.suite, "suite_version": q.suite_version, "scope": q.scope,
            "min_pass_rate": (q.config or {}).get("min_pass_rate"), "checks": (q.config or {}).get("checks", []),
            "n_samples": q.n_samples, "n_passed": q.n_passed, "n_failed": q.n_failed, "pass_rate": q.pass_rate,
            "success": q.success, "failed_reasons": (q.results or {}).get("failed_reasons", {}),
            "day": q.created_at.date() if q.created_at else None})
    facts.judge = _judge_facts(conn, export_id, qc_ids)
    return facts


def _judge_facts(conn: Connection, export_id: int, qc_ids: list[int]) -> dict[str, Any]:
    """What the faithfulness judge cost and found for the release's samples; {} when it never judged one.
    Every judge call is counted (a failed one's tokens were paid too); `judged` counts samples with a
    succeeded judgement; the pass rate comes from the qc runs, since the contradicted samples were dropped
    and the release itself holds only passes."""
    if not queries.any_judgement(conn):
        return {}  # the judge never ran: one index probe, not a pass over the release
    row = queries.judge_costs(conn, export_id)
    if not row.calls:
        return {}
    gate = queries.gate_judge_counts(conn, qc_ids)
    return {"calls": int(row.calls), "judged": int(row.judged), "prompt_tokens": int(row.prompt_tokens),
            "completion_tokens": int(row.completion_tokens), "models": sorted(row.models or []),
            "gate_judged": int(gate.judged), "gate_contradicted": int(gate.contradicted)}


def build_card(engine: Engine, prompts_dir: Path, export_id: int, params: Any, manifest: Mapping[str, Any]) -> str:
    """The card for an export whose `export_item` rows are written."""
    with engine.begin() as conn:
        facts = collect_facts(conn, export_id, params.as_json(), manifest, prompts_dir)
    return render_card(facts)


# --- rendering ---------------------------------------------------------------------------------


def _n(value: int) -> str:
    return f"{value:,}"


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "–"


def _fixed(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def _fence(body: str) -> str:
    fence = "~~~~" if "```" in body else "```"
    return f"{fence}text\n{body}\n{fence}"


@functools.cache
def _template() -> jinja2.Template:
    # Markdown, not HTML: nothing is escaped (table cells escape `|` and `<` themselves, in _qc_rules).
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tuwen.release", "templates"), autoescape=False,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(
        n=_n, pct=_pct, fixed=_fixed, fence=_fence,
        json=lambda v: json.dumps(v, sort_keys=True),
        json_text=lambda v: json.dumps(v, sort_keys=True, ensure_ascii=False),
        json_pretty=lambda v: json.dumps(v, ensure_ascii=False, indent=1, sort_keys=True))
    return env.get_template(CARD_TEMPLATE)


def _qc_rules(q: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The QC table of one run: each configured check with what it dropped, then reasons no check names."""
    reasons = dict(q["failed_reasons"])
    rules: list[dict[str, Any]] = []
    for check in q["checks"]:
        rules.append({"described": True, "name": check["name"], "version": check.get("version", "?"),
                      "description": str(check.get("description", "")).replace("<", "&lt;").replace("|", "\\|"),
                      "thresholds": check.get("thresholds") or {}, "dropped": int(reasons.pop(check["name"], 0))})
    rules += [{"described": False, "name": name, "dropped": int(dropped)} for name, dropped in sorted(reasons.items())]
    return rules


def render_card(f: CardFacts) -> str:
    """The card's Markdown: `templates/card.md.j2` over the facts (a pure function of them)."""
    by_task = {t["task_type"]: t for t in f.tasks}
    names = f.manifest["data_files"]
    models = sorted({x["model"] for x in f.models})
    detail_langs = sorted({p["language"] for p in f.prompts if p["task_type"] == "detail"})
    return _template().render(
        f=f, m=f.manifest, total=int(f.manifest["samples"]), names=names, images=f.manifest["images"],
        task_names=TASK_NAMES,
        model_list=", ".join(f"`{x}`" for x in models) or "–",
        crawl_from=f.dates["crawl"][0], crawl_to=f.dates["crawl"][1],
        gen_from=f.dates["generation"][0], gen_to=f.dates["generation"][1],
        task_rows=[{"zh": TASK_NAMES[t][0], "en": TASK_NAMES[t][1], "file": names[t],
                    "samples": by_task.get(t, {}).get("samples", 0), "avg_rounds": by_task.get(t, {}).get("avg_rounds", 0.0)}
                   for t in f.params["task_types"]],
        finish_reasons=", ".join(f"`{k}` {_n(v)}" for k, v in f.finish_reasons),
        detail_instructions=[(language, "\n".join(DETAIL_INSTRUCTIONS[language])) for language in detail_langs],
        qc_runs=[{**q, "rules": _qc_rules(q)} for q in f.qc_runs],
    )
