"""The release's dataset card (README.md), written from the lineage database, in Chinese and English.

It follows the seed card (llava-instruct-zh-600k): what the data is, a task table with counts, the
prompts verbatim — here with their versions and SHA-256 — plus what the seed left out: the model and
sampling settings actually used (from `generation`), the sites the images came from, the QC rules with
their thresholds and how many samples each dropped (from the `qc_run`), OCR statistics, dates, and how
to load the files in LLaVA, Qwen2.5-VL fine-tuning and LLaMA-Factory.

Facts are gathered by `collect_facts` (SQL over `export_item` and what it points at) and rendered by
`render_card`, a pure function. Everything is ordered explicitly and numbers have fixed formats, so the
same release over the same lineage gives the same bytes; the only dates are the lineage's own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from tuwen.config import Settings
from tuwen.db.session import get_engine
from tuwen.domain import TASK_TYPES
from tuwen.synthesis.prompts import DETAIL_INSTRUCTIONS, PromptError, load_prompts

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


def _rows(conn: Connection, sql: str, export_id: int) -> list[Any]:
    return list(conn.execute(text(sql), {"e": export_id}).all())


def collect_facts(conn: Connection, export_id: int, params: Mapping[str, Any], manifest: Mapping[str, Any],
                  prompts_dir: Any) -> CardFacts:
    """Everything the card says about the samples in `export_item` for this export: four queries, one
    pass each over the release (they were ten, and took as long as writing the files)."""
    facts = CardFacts(release=str(params["name"]), params=dict(params), manifest=dict(manifest))
    conn.execute(text("SET LOCAL work_mem = '256MB'"))  # hash aggregates in memory; ends with the transaction
    try:
        known = load_prompts(prompts_dir)
    except PromptError:
        known = {}
    rows = _rows(conn, """
        SELECT s.task_type, g.prompt_id, g.prompt_version, g.prompt_sha256, g.language, g.model,
               g.sampling::text AS sampling, g.finish_reason, count(*) AS n, sum(s.rounds) AS rounds,
               sum(g.prompt_tokens) AS prompt_tokens, sum(g.completion_tokens) AS completion_tokens,
               sum(g.latency_ms) AS latency_ms, min(g.completed_at)::date AS first_day,
               max(g.completed_at)::date AS last_day,
               count(*) FILTER (WHERE i.has_zh_text) AS zh_text,
               count(*) FILTER (WHERE NOT i.has_zh_text) AS no_zh_text,
               sum(i.ocr_char_count) AS ocr_chars, count(i.ocr_char_count) AS ocr_measured,
               sum(i.model_width) AS width, sum(i.model_height) AS height,
               min(i.crawl_date) AS first_crawl, max(i.crawl_date) AS last_crawl
        FROM export_item ei JOIN sample s ON s.id = ei.sample_id JOIN generation g ON g.id = s.generation_id
             JOIN image i ON i.id = ei.image_id
        WHERE ei.export_id = :e
        GROUP BY s.task_type, g.prompt_id, g.prompt_version, g.prompt_sha256, g.language, g.model,
                 g.sampling::text, g.finish_reason""", export_id)
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
    p50, p90 = _rows(conn, """
        SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY i.ocr_char_count) AS p50,
               percentile_disc(0.9) WITHIN GROUP (ORDER BY i.ocr_char_count) AS p90
        FROM export_item ei JOIN image i ON i.id = ei.image_id WHERE ei.export_id = :e""", export_id)[0]
    n = totals["n"]
    facts.ocr = {"zh_text": totals["zh_text"], "no_zh_text": totals["no_zh_text"],
                 "unknown": n - totals["zh_text"] - totals["no_zh_text"], "measured": totals["ocr_measured"],
                 "avg": totals["ocr_chars"] / totals["ocr_measured"] if totals["ocr_measured"] else None,
                 "p50": p50, "p90": p90}
    facts.images = {"avg_width": totals["width"] / n if n else 0.0, "avg_height": totals["height"] / n if n else 0.0}
    # DISTINCT in subqueries hashes; count(DISTINCT ...) would sort 600k URLs.
    src = _rows(conn, """
        WITH src AS MATERIALIZED (
            SELECT src.image_id, src.site, src.url, src.page_url, src.crawl_run_id
            FROM export_item ei JOIN image_source src ON src.image_id = ei.image_id WHERE ei.export_id = :e)
        SELECT 'site' AS kind, site AS key, count(*) AS n FROM (SELECT DISTINCT site, image_id FROM src) AS d
        GROUP BY site
        UNION ALL SELECT 'pages', NULL, count(*) FROM (SELECT DISTINCT page_url FROM src) AS p
        UNION ALL SELECT 'urls', NULL, count(*) FROM (SELECT DISTINCT url FROM src) AS u
        UNION ALL SELECT 'crawl_runs', NULL, count(*) FROM (SELECT DISTINCT crawl_run_id FROM src) AS c""",
                export_id)
    facts.sites = sorted(((r.key, int(r.n)) for r in src if r.kind == "site"), key=lambda kv: (-kv[1], kv[0]))
    facts.sources = {r.kind: int(r.n) for r in src if r.kind != "site"}
    qc_ids = [r.qc_run_id for r in _rows(conn, """
        SELECT qc_run_id FROM export WHERE id = :e AND qc_run_id IS NOT NULL
        UNION SELECT DISTINCT s.qc_run_id FROM export_item ei JOIN sample s ON s.id = ei.sample_id
        WHERE ei.export_id = :e AND s.qc_run_id IS NOT NULL ORDER BY 1""", export_id)]
    for qc_id in qc_ids:
        q = conn.execute(text("SELECT * FROM qc_run WHERE id = :id"), {"id": qc_id}).one()
        facts.qc_runs.append({
            "id": q.id, "suite": q.suite, "suite_version": q.suite_version, "scope": q.scope,
            "min_pass_rate": (q.config or {}).get("min_pass_rate"), "checks": (q.config or {}).get("checks", []),
            "n_samples": q.n_samples, "n_passed": q.n_passed, "n_failed": q.n_failed, "pass_rate": q.pass_rate,
            "success": q.success, "failed_reasons": (q.results or {}).get("failed_reasons", {}),
            "day": q.created_at.date() if q.created_at else None})
    return facts


def build_card(settings: Settings, export_id: int, params: Any, manifest: Mapping[str, Any]) -> str:
    """The card for an export whose `export_item` rows are written."""
    with get_engine(settings.database_url).begin() as conn:
        facts = collect_facts(conn, export_id, params.as_json(), manifest, settings.prompts_dir)
    return render_card(facts)


# --- rendering ---------------------------------------------------------------------------------


def _n(value: int) -> str:
    return f"{value:,}"


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "–"


def _fence(body: str) -> str:
    fence = "~~~~" if "```" in body else "```"
    return f"{fence}text\n{body}\n{fence}"


def render_card(f: CardFacts) -> str:
    m = f.manifest
    total = int(m["samples"])
    by_task = {t["task_type"]: t for t in f.tasks}
    names = m["data_files"]
    lang = "、".join(f.params["languages"])
    models = sorted({x["model"] for x in f.models})
    model_list = ", ".join(f"`{x}`" for x in models) or "–"
    crawl_from, crawl_to = f.dates["crawl"]
    gen_from, gen_to = f.dates["generation"]
    out: list[str] = [f"# {f.release}", ""]

    out += [
        f"* 仿照 [LLaVA-Instruct-150K](https://huggingface.co/datasets/liuhaotian/LLaVA-Instruct-150K) 的格式，"
        f"使用 {model_list} 合成的用于微调视觉语言模型的数据（语言：{lang}）；也可以与英文数据集混合使用，训练多语言VLM。",
        "* 任务类型为基于单张图片的问答和对话，每个样本都对应一张不同的图片。",
        f"* 图片从各类中文网站上爬取（{len(f.sites)} 个站点，抓取日期 {crawl_from or '–'} 至 {crawl_to or '–'}），"
        "遵守 robots.txt；每张图片只使用一次。",
        f"* 共 {_n(total)} 个样本，包含 {len(f.tasks)} 类任务。本说明由数据血缘数据库自动生成。",
        "",
        f"* Synthesised with {model_list} in the format of LLaVA-Instruct-150K, for fine-tuning vision-language "
        f"models (language: {', '.join(f.params['languages'])}); it can be mixed with English data to train "
        "multilingual VLMs.",
        "* Every sample is question answering or dialogue about a single image, and every sample uses a "
        "different image.",
        f"* Images were crawled from Chinese websites ({len(f.sites)} sites, crawl dates {crawl_from or '–'} to "
        f"{crawl_to or '–'}), obeying robots.txt; each image is used once.",
        f"* {_n(total)} samples in {len(f.tasks)} task types. This card is generated from the lineage database.",
        "",
        "## 任务 / Tasks",
        "",
        "| 任务类型 | 数量 | 平均轮数 | 文件 |",
        "|------------|---------|---------|---------|",
    ]
    for t in f.params["task_types"]:
        row = by_task.get(t, {"samples": 0, "avg_rounds": 0.0})
        out.append(f"| {TASK_NAMES[t][0]} | {_n(row['samples'])} | {row['avg_rounds']:.2f} | `{names[t]}` |")
    out += ["", "| Task Type | Quantity | Avg. rounds | File |", "|--------------------|-----------|---------|---------|"]
    for t in f.params["task_types"]:
        row = by_task.get(t, {"samples": 0, "avg_rounds": 0.0})
        out.append(f"| {TASK_NAMES[t][1]} | {_n(row['samples'])} | {row['avg_rounds']:.2f} | `{names[t]}` |")
    out += ["", f"全部任务 / all tasks: `{names['all']}` ({_n(total)})"
            + (f", JSONL: `{names['jsonl']}`" if "jsonl" in names else ""), ""]
    if m.get("english_mix"):
        mix = m["english_mix"]
        out += [f"与英文数据混合 / mixed with English: `{mix['file']}` = {_n(mix['records_zh'])} + "
                f"{_n(mix['records_en'])} English records from `{mix['source']}` (SHA-256 `{mix['source_sha256']}`), "
                f"English share {100 * mix['share_en']:.2f}%, evenly interleaved; English records are unchanged "
                "and their images are not included.", ""]
    if f.params.get("mix"):
        out += [f"任务配比 / task mix requested: `{json.dumps(f.params['mix'], sort_keys=True)}`"
                + (f", max_samples {f.params['max_samples']}" if f.params.get("max_samples") else ""), ""]

    out += ["## 文件格式 / Format", "",
            "每个 JSON 文件是一个数组，元素为 `{\"id\", \"image\", \"conversations\"}`；`from` 只有 `human` 与 `gpt`，"
            "从 human 开始严格交替、以 gpt 结束，`<image>` 恰好出现一次且在第一轮 human 中；`image` 是相对于本目录的路径。",
            "",
            "Each JSON file is an array of `{\"id\", \"image\", \"conversations\"}`; `from` is only `human` or `gpt`, "
            "human first, strictly alternating, ending on gpt; exactly one `<image>`, in the first human turn; "
            "`image` is a path relative to this folder. The JSONL file holds the same records, one per line.", ""]
    images = m["images"]
    if images["layout"] in ("tar", "both"):
        out += [f"图片打包为 {len(images['shards'])} 个 tar 分片 / images are packed in {len(images['shards'])} "
                f"tar shard(s) (`images-00000.tar` …, {_n(images['count'])} files, sorted by path). 解包 / unpack: "
                "`for f in images-*.tar; do tar -xf \"$f\"; done` → `images/`.", ""]
    if images["layout"] in ("folder", "both"):
        out += [f"图片目录 / image folder: `images/` ({_n(images['count'])} files).", ""]
    if images["layout"] != "none":
        out += [f"校验 / verify: `sha256sum -c {images['checksums']}` (every image) and `manifest.json` "
                f"(every other file). 平均尺寸 / mean size {f.images['avg_width']:.0f}×{f.images['avg_height']:.0f} px.",
                ""]
    else:
        out += ["本次发布不含图片文件 / this release ships without image files (`images: none`); the `image` paths "
                "name files in the full release of the same lineage.", ""]

    out += ["## 模型与采样参数 / Model and sampling", "",
            "| 模型 Model | 任务 Task | 样本 Samples | 采样参数 Sampling | 平均输入/输出 token (avg prompt/completion tokens) "
            "| 平均延迟 Avg latency |",
            "|---|---|---|---|---|---|"]
    for x in f.models:
        n = x["samples"] or 1
        out.append(f"| `{x['model']}` | {x['task_type']} | {_n(x['samples'])} | "
                   f"`{json.dumps(x['sampling'], sort_keys=True)}` | {x['prompt_tokens'] / n:.1f} / "
                   f"{x['completion_tokens'] / n:.1f} | {x['latency_ms'] / n / 1000:.2f} s |")
    out += ["", "结束原因 / finish reasons: " + (", ".join(f"`{k}` {_n(v)}" for k, v in f.finish_reasons) or "–"),
            "", f"生成日期 / generated between {gen_from or '–'} and {gen_to or '–'}.", ""]

    out += ["## 生成数据所用的 prompt / Prompts (verbatim)", "",
            "以下为实际使用的 prompt 原文及其版本和 SHA-256（UTF-8）。",
            "The prompts as sent, with version and SHA-256 of the UTF-8 text (part of every generation's key).", ""]
    for p in f.prompts:
        zh, en = TASK_NAMES[p["task_type"]]
        out += [f"### {zh} / {en} — `{p['id']}` (version {p['version']}, {_n(p['samples'])} samples)", "",
                f"SHA-256 `{p['sha256']}`", ""]
        out += [_fence(p["text"]) if p["text"] is not None else
                "（prompt 文件不在 prompts/ 中或内容已变 / prompt file missing from prompts/ or its text no longer "
                "matches this SHA-256）", ""]
    detail_langs = sorted({p["language"] for p in f.prompts if p["task_type"] == "detail"})
    for language in detail_langs:
        out += [f"描述图片任务的用户指令（{language}，按图片哈希确定性地选取一条）/ Human instructions of the "
                f"description task ({language}; one per image, picked deterministically from its hash):", "",
                _fence("\n".join(DETAIL_INSTRUCTIONS[language])), ""]

    out += ["## 图片来源 / Image sources", "",
            f"{_n(f.sources['pages'])} 个网页 / pages, {_n(f.sources['urls'])} 个图片 URL / image URLs, "
            f"{_n(f.sources['crawl_runs'])} 次抓取 / crawl runs. 一张图片可能出现在多个站点 / an image seen on "
            "several sites counts once per site.", "",
            "| 站点 Site | 图片 Images |", "|---|---|"]
    out += [f"| {site} | {_n(n)} |" for site, n in f.sites]
    out.append("")

    out += ["## 质量控制 / Quality control", ""]
    if not f.qc_runs:
        out += ["这些样本没有 QC 记录 / no QC run is recorded for these samples.", ""]
    for q in f.qc_runs:
        out += [f"### QC run {q['id']} — `{q['suite']}` {q['suite_version']} ({q['day']})", "",
                f"范围 / scope `{json.dumps(q['scope'], sort_keys=True, ensure_ascii=False)}`: "
                f"{_n(q['n_samples'])} samples judged, {_n(q['n_passed'])} passed "
                f"({_pct(q['n_passed'], q['n_samples'])}), minimum pass rate {q['min_pass_rate']}, "
                f"gate {'passed' if q['success'] else 'failed'}. 只有通过的样本进入发布 / only passed samples "
                "ship.", "",
                "| 规则 Rule | 说明 Description | 阈值 Thresholds | 淘汰 Dropped | 淘汰率 Drop rate |",
                "|---|---|---|---|---|"]
        reasons = dict(q["failed_reasons"])
        for check in q["checks"]:
            dropped = int(reasons.pop(check["name"], 0))
            thresholds = json.dumps(check.get("thresholds") or {}, sort_keys=True, ensure_ascii=False)
            description = str(check.get("description", "")).replace("<", "&lt;").replace("|", "\\|")
            out.append(f"| `{check['name']}` v{check.get('version', '?')} | {description} | "
                       f"`{thresholds}` | {_n(dropped)} | {_pct(dropped, q['n_samples'])} |")
        for name, dropped in sorted(reasons.items()):
            out.append(f"| `{name}` | – | – | {_n(int(dropped))} | {_pct(int(dropped), q['n_samples'])} |")
        out.append("")

    o = f.ocr
    judged = o["zh_text"] + o["no_zh_text"]
    out += ["## 图片中的文字 / Text in images (OCR)", "",
            f"含中文文字的图片 / images with Chinese text: {_n(o['zh_text'])} ({_pct(o['zh_text'], judged)} of "
            f"{_n(judged)} with OCR); 无 / without: {_n(o['no_zh_text'])}; 未检测 / not run: {_n(o['unknown'])}.",
            "", "OCR 字符数 / OCR characters per image: " + (
                f"mean {o['avg']:.1f}, median {o['p50']}, p90 {o['p90']} (over {_n(o['measured'])} images)."
                if o["avg"] is not None else "–"), ""]

    out += _loading(f.release, names, m)
    out += ["## 下架 / Takedowns", "",
            "如需删除某张图片、某个网页或整个网站的内容，请提交 URL、域名或图片 SHA-256；后续发布将不再包含，"
            "并会列出包含它的历史版本。",
            "To have an image, a page or a whole site removed, send its URL, domain or image SHA-256: later "
            "releases exclude it, and the releases that held it are listed (`tuwen takedown releases`).", "",
            "## 复现 / Reproduce", "",
            "同一参数、同一血缘数据 → 逐字节相同的文件 / the same parameters over the same lineage give "
            "byte-identical files:", "", "```json",
            json.dumps(f.params, ensure_ascii=False, indent=1, sort_keys=True), "```", ""]
    return "\n".join(out)


def _loading(release: str, names: Mapping[str, str], manifest: Mapping[str, Any]) -> list[str]:
    all_file = names["all"]
    unpack = ("先解包 tar 分片（见上）/ unpack the tar shards first (see above). "
              if manifest["images"]["layout"] == "tar" else "")
    return [
        "## 使用方法 / How to load", "", unpack + "下文 `$DATA` 为本目录 / `$DATA` below is this folder.", "",
        "### LLaVA", "",
        "```bash",
        f"python llava/train/train_mem.py ... --data_path $DATA/{all_file} --image_folder $DATA --is_multimodal True",
        "```", "",
        "`image` 相对于 `--image_folder` / `image` is relative to `--image_folder`.", "",
        "### Qwen2.5-VL (qwen-vl-finetune)", "",
        "在 `qwenvl/data/__init__.py` 注册 / register in `qwenvl/data/__init__.py`:", "",
        "```python",
        f'{release.upper().replace("-", "_")} = {{"annotation_path": "$DATA/{all_file}", "data_path": "$DATA"}}',
        "```", "",
        f"然后 / then `--dataset_use {release.lower().replace('-', '_')}`"
        + (f"; JSONL 亦可 / the JSONL works too: `{names['jsonl']}`." if "jsonl" in names else "."), "",
        "### LLaMA-Factory", "",
        "本目录的 `dataset_info.json` 已定义 sharegpt 格式（`columns: {messages: conversations, images: image}`）/ "
        "this folder's `dataset_info.json` declares the sharegpt format:", "",
        "```bash",
        f"llamafactory-cli train ... --dataset_dir $DATA --dataset {release}",
        "```", "",
        f"每个任务也有单独的数据集 / one dataset per task too: `{release}_conversation`, …; `media_dir` 默认即 "
        "`dataset_dir` / defaults to `dataset_dir`, so `images/...` resolves.", "",
    ]
