"""Release export at the seed's scale: 641,868 samples in the seed's task mix.

Lineage rows (crawl runs, images, image sources, generations, samples, a QC run) are generated and
COPYed straight into a fresh database, then vacuumed as autovacuum would have — the crawl and the
model are not what is measured. Then
`write_release` writes the JSON files (all tasks, one per task, JSONL), dataset_info.json, the dataset
card and the manifest, and uploads them to the S3 server, with `images: none` (image bytes are the
synthesis and crawl benchmarks' business). Targets: <= 60 s wall and <= 1 GB peak RSS for the export.
Then every query in sql/queries/ runs (as the analyst role) and the slowest must answer in < 1 s.

`python -m bench.bench_export [n_samples]` prints the numbers and appends them to docs/BENCHMARKS.md
under "Export".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text

from bench.common import bench_settings, machine, record_result
from tuwen.config import Settings
from tuwen.db.models import CrawlRun, QCRun
from tuwen.db.session import get_engine
from tuwen.domain import SEED_TASK_MIX, TASK_TYPES
from tuwen.quality.checks import describe_checks
from tuwen.synthesis.prompts import description_instruction, load_prompts

SEED_SAMPLES = sum(SEED_TASK_MIX.values())  # 641,868
SITES = ("news.example.cn", "shop.example.com.cn", "travel.example.cn", "menu.example.cn", "signs.example.org")
BENCH_MODEL = "Qwen/Qwen2.5-VL-32B-Instruct"
REPO = Path(__file__).resolve().parents[1]

_PHRASES = (
    "图片中可以看到一块红色的招牌，上面写着“老北京炸酱面”几个大字", "画面左侧有两位行人正在过马路",
    "背景是一排灰色的居民楼，窗台上摆着几盆绿植", "桌上放着一份菜单，列出了十几种家常菜和价格",
    "店门口停着一辆蓝色的电动车", "远处的山坡上覆盖着茂密的树林，天空中有几朵白云",
    "海报的标题是“春季促销”，下方用小字写着活动时间", "货架上整齐地摆放着各种饮料和零食",
    "路牌上标注着“人民路”和“解放路”两个方向", "画面中央是一座古色古香的牌楼，上面刻着金色的字",
    "这种布局说明商家希望吸引过往行人的注意", "从光线来看，照片大约拍摄于傍晚时分",
)


def _text(i: int, k: int, n_phrases: int) -> str:
    return "，".join(_PHRASES[(i * 7 + k * 3 + j) % len(_PHRASES)] for j in range(n_phrases)) + "。"


def conversation_for(task_type: str, i: int, sha256: str) -> list[dict[str, str]]:
    """A plausible Chinese sample of the task type; varied by i, always loadable by the trainers."""
    if task_type == "conversation":
        turns = []
        for r in range(5):
            question = f"图中第{r + 1}个值得注意的细节是什么？" if r else "这张图片里有什么？"
            turns += [{"from": "human", "value": ("<image>\n" if r == 0 else "") + question},
                      {"from": "gpt", "value": _text(i, r, 2)}]
        return turns
    if task_type == "complex_reasoning":
        return [{"from": "human", "value": "<image>\n根据图中的信息，这家店可能面向哪些顾客？为什么？"},
                {"from": "gpt", "value": _text(i, 0, 5)}]
    return [{"from": "human", "value": "<image>\n" + description_instruction(sha256, "zh")},
            {"from": "gpt", "value": _text(i, 1, 6)}]


def _copy_field(value: Any) -> str:
    if value is None:
        return r"\N"
    s = value if isinstance(value, str) else str(value)
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


class _CopySource(io.RawIOBase):
    """A file-like view of generated COPY lines, so COPY streams without building the data in memory."""

    def __init__(self, rows: Iterable[tuple[Any, ...]]) -> None:
        self._lines = ("\t".join(_copy_field(v) for v in row).encode("utf-8") + b"\n" for row in rows)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = b"".join(line for _, line in zip(range(2000), self._lines, strict=False))
            if not chunk:
                break
            self._buffer += chunk
        data, self._buffer = (self._buffer, b"") if size < 0 else (self._buffer[:size], self._buffer[size:])
        return data


def _copy(settings: Settings, table: str, columns: str, rows: Iterable[tuple[Any, ...]]) -> None:
    raw = get_engine(settings.database_url).raw_connection()
    try:
        with raw.cursor() as cur:
            cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN", _CopySource(rows), size=1 << 20)
        raw.commit()
    finally:
        raw.close()


@dataclass
class SeedInfo:
    samples: int
    counts: dict[str, int]
    qc_run_id: int
    sample_ids: list[str]


def seed_lineage(settings: Settings, n: int, *, day: dt.date = dt.date(2026, 11, 18),
                 image_ids: list[int] | None = None, failed_every: int = 37, sites: tuple[str, ...] = SITES,
                 keep_ids: bool = False) -> SeedInfo:
    """n samples in the seed's task mix, with every lineage row they hang off, COPYed in.

    With `image_ids` (e.g. from bench.common.seed_images, real JPEGs in S3) those images are used;
    otherwise image rows are generated without objects. Every `failed_every`-th sample fails QC.
    """
    engine = get_engine(settings.database_url)
    prompts = {p.task_type: p for p in load_prompts(settings.prompts_dir).values()
               if p.language == "zh" and p.version == 1}
    checks = describe_checks()
    fail_reasons = [c["name"] for c in checks if not c["name"].startswith("structure.")][:3]
    with engine.begin() as conn:
        runs = [conn.execute(insert(CrawlRun).values(spider="bench", site=site, partition_date=day, status="succeeded",
                                                     dag_id="tuwen_crawl", run_id=f"scheduled__{day}T01:00:00+00:00")
                             .returning(CrawlRun.id)).scalar_one() for site in sites]
        base = int(conn.execute(text("SELECT coalesce(max(id), 0) FROM generation")).scalar()) + 1
        qc_id = conn.execute(insert(QCRun).values(
            suite="tuwen_samples", suite_version="checks-v1", scope={"date_from": str(day), "date_to": str(day)},
            config={"min_pass_rate": 0.8, "checks": checks}, n_samples=n, success=True,
            dag_id="tuwen_export", run_id="manual__bench").returning(QCRun.id)).scalar_one()
    if image_ids is None:
        with engine.connect() as conn:
            first = int(conn.execute(text("SELECT coalesce(max(id), 0) FROM image")).scalar()) + 1
        image_ids = list(range(first, first + n))
        shas = [hashlib.sha256(f"bench-image-{i}".encode()).hexdigest() for i in image_ids]
        _copy(settings, "image", "id, sha256, width, height, format, n_bytes, original_key, model_key, model_width, "
              "model_height, model_mime, status, crawl_date, first_crawl_run_id, has_zh_text, ocr_char_count",
              ((iid, sha, 896, 672, "JPEG", 120_000, f"raw/{sha[:2]}/{sha}.jpg", f"model/{sha[:2]}/{sha}.jpg", 896,
                672, "image/jpeg", "accepted", day, runs[k % len(runs)], k % 5 != 0, (k * 13) % 90)
               for k, (iid, sha) in enumerate(zip(image_ids, shas, strict=True))))
        with engine.begin() as conn:
            conn.execute(text("SELECT setval(pg_get_serial_sequence('image', 'id'), (SELECT max(id) FROM image))"))
    else:
        with engine.connect() as conn:
            by_id = dict(conn.execute(text("SELECT id, sha256 FROM image WHERE id = ANY(:ids)"),
                                      {"ids": image_ids}).all())
        shas = [by_id[i] for i in image_ids]
    n = min(n, len(image_ids))
    # The seed's exact mix: i -> i*M mod n is a bijection, so thresholds at the seed's proportions deal
    # tasks in exactly those proportions, spread evenly over the ids.
    total = sum(SEED_TASK_MIX.values())
    cuts = [n * sum(list(SEED_TASK_MIX.values())[: k + 1]) // total for k in range(len(TASK_TYPES))]

    def task_of(k: int) -> str:
        h = (k * 2654435761) % n if n else 0
        return next(t for t, cut in zip(TASK_TYPES, cuts, strict=True) if h < cut)

    plan = [(k, task_of(k)) for k in range(n)]
    keys = [hashlib.sha256(f"bench-request-{shas[k]}".encode()).hexdigest() for k in range(n)]
    _copy(settings, "image_source", "image_id, crawl_run_id, site, url, page_url, page_title, alt_text, outcome",
          ((image_ids[k], runs[k % len(runs)], sites[k % len(sites)], f"https://img.{sites[k % len(sites)]}/{k}.jpg",
            f"https://www.{sites[k % len(sites)]}/page/{k // 10}.html", f"页面 {k // 10}", f"图片 {k}", "accepted")
           for k in range(n)))
    sampling = json.dumps({"temperature": 0.7, "top_p": 0.9, "seed": 1234, "max_pixels": 1003520, "min_pixels": 3136})
    _copy(settings, "generation", "id, request_key, image_id, task_type, language, prompt_id, prompt_version, "
          "prompt_sha256, model, sampling, status, attempts, finish_reason, prompt_tokens, completion_tokens, "
          "latency_ms, dag_id, run_id, task_id, completed_at",
          ((base + k, keys[k], image_ids[k], t, "zh", prompts[t].id, prompts[t].version, prompts[t].sha256,
            BENCH_MODEL, sampling, "succeeded", 1, "stop", 900 + k % 300, 300 + (k * 7) % 700,
            800.0 + (k * 37) % 4000, "tuwen_synthesize", f"scheduled__{day}T03:00:00+00:00", "generate",
            f"{day} 04:00:00+00") for k, t in plan))
    with engine.begin() as conn:
        conn.execute(text("SELECT setval(pg_get_serial_sequence('generation', 'id'), (SELECT max(id) FROM generation))"))
    ids = [f"tw-{keys[k][:24]}" for k in range(n)]

    def verdict(k: int) -> tuple[str, str]:
        if failed_every and k % failed_every == failed_every - 1:
            return "failed", json.dumps([fail_reasons[k % len(fail_reasons)]])
        return "passed", "[]"

    _copy(settings, "sample", "id, generation_id, image_id, task_type, language, conversations, rounds, qc_status, "
          "qc_reasons, qc_run_id",
          ((ids[k], base + k, image_ids[k], t, "zh", json.dumps(conversation_for(t, k, shas[k]), ensure_ascii=False),
            5 if t == "conversation" else 1, *verdict(k), qc_id) for k, t in plan))
    failed: dict[str, int] = {}
    for k in range(n):
        status, reasons = verdict(k)
        if status == "failed":
            reason = json.loads(reasons)[0]
            failed[reason] = failed.get(reason, 0) + 1
    n_failed = sum(failed.values())
    with engine.begin() as conn:
        conn.execute(text("UPDATE qc_run SET n_samples = :n, n_passed = :p, n_failed = :f, pass_rate = :r, "
                          "results = CAST(:res AS jsonb) WHERE id = :id"),
                     {"n": n, "p": n - n_failed, "f": n_failed, "r": (n - n_failed) / n if n else 0.0,
                      "res": json.dumps({"failed_reasons": failed}), "id": qc_id})
    # What autovacuum has long done to a database that grew to this size over months of daily runs:
    # statistics, hint bits and the visibility map. Straight after COPY every index-only scan of the
    # library queries would still visit the heap for each row.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE)"))
    counts = {t: sum(1 for _, x in plan if x == t) for t in TASK_TYPES}
    return SeedInfo(n, counts, qc_id, ids if keep_ids else [])


# --- measuring ---------------------------------------------------------------------------------


class _PeakRss:
    """Peak resident memory of this process during a block (sampled; ru_maxrss covers the whole life)."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def _rss_mb(self) -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize() / 2**20

    def __enter__(self) -> _PeakRss:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._rss_mb())
            self._stop.wait(0.05)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())


def query_files() -> list[Path]:
    return sorted((REPO / "sql" / "queries").glob("*.sql"))


def run_library_queries(settings: Settings, params: dict[str, str]) -> list[tuple[str, float, int]]:
    """Every library query through psql as the analyst role: (file, seconds, rows)."""
    import subprocess

    url = settings.database_url.replace("postgresql+psycopg2://", "postgresql://")
    results = []
    for path in query_files():
        args = ["psql", url, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", "SET ROLE tuwen_analyst"]
        for key, value in params.items():
            args += ["-v", f"{key}={value}"]
        started = time.perf_counter()
        proc = subprocess.run([*args, "-f", str(path)], capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{path.name} failed: {proc.stderr.strip()}")
        results.append((path.name, elapsed, len([line for line in proc.stdout.splitlines() if line.strip()])))
    return results


def main(n: int = SEED_SAMPLES) -> dict[str, Any]:
    from tuwen.release.export import ReleaseParams, write_release
    from tuwen.resources import Resources

    command = f"python -m bench.bench_export{'' if n == SEED_SAMPLES else f' {n}'}"
    print(f"== export benchmark ({machine()}): {n:,} samples, seed task mix ==")
    with tempfile.TemporaryDirectory() as tmp, bench_settings(Path(tmp)) as settings:
        settings = dataclasses.replace(settings, release_dir=Path(tmp) / "releases")
        t0 = time.perf_counter()
        seed = seed_lineage(settings, n)
        seeded_s = time.perf_counter() - t0
        print(f"seeded {seed.samples:,} samples {seed.counts} in {seeded_s:.1f}s (COPY)")
        params = ReleaseParams(name="bench", include_images=False)
        rss_before = _PeakRss()._rss_mb()
        load_before = f"{os.getloadavg()[0]:.1f}"
        with _PeakRss() as peak:
            t0, cpu0 = time.perf_counter(), time.process_time()
            result = write_release(Resources.from_settings(settings), params, qc_run_id=seed.qc_run_id)
            export_s, export_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        sizes = sum(f["bytes"] for f in result.files.values())
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
        print(f"export: {result.n_samples:,} samples, {len(result.files)} files, {sizes / 2**20:.0f} MiB, "
              f"{export_s:.1f}s wall ({phases}), {export_cpu_s:.1f}s CPU in this process, peak RSS {peak.peak_mb:.0f} MB (before: {rss_before:.0f} MB)")
        with get_engine(settings.database_url).connect() as conn:
            some = conn.execute(text("SELECT ei.sample_id, i.sha256, src.url FROM export_item ei "
                                     "JOIN image i ON i.id = ei.image_id JOIN image_source src ON src.image_id = i.id "
                                     "ORDER BY ei.position LIMIT 1 OFFSET 1000")).one()
        queries = run_library_queries(settings, {"sample_id": some.sample_id, "image_sha256": some.sha256,
                                                 "url": some.url, "release": "bench", "model": BENCH_MODEL,
                                                 "day": "2026-11-18", "site": SITES[0]})
        slowest = max(queries, key=lambda q: q[1])
        for name, seconds, rows in queries:
            print(f"  query {name}: {1000 * seconds:.0f} ms ({rows} rows)")
        print(f"slowest library query: {slowest[0]} {1000 * slowest[1]:.0f} ms (psql round trip incl. connect)")
    ok = export_s <= 60 and peak.peak_mb <= 1024 and slowest[1] < 1.0
    lines = [
        f"`{command}` on {machine()}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC:",
        "",
        f"- seeded {n:,} samples ({', '.join(f'{t} {c:,}' for t, c in seed.counts.items())}) by COPY in {seeded_s:.0f} s",
        f"- `write_release` (JSON all/per-task/JSONL, dataset_info.json, card, manifest, upload; images: none): "
        f"**{export_s:.1f} s** wall ({export_cpu_s:.1f} s CPU in the exporting process; the rest is "
        f"PostgreSQL, the S3 server and waiting for a core), peak RSS **{peak.peak_mb:.0f} MB**, {sizes / 2**20:.0f} MiB written "
        f"(targets ≤ 60 s, ≤ 1024 MB); phases: {phases}; load average before/after {load_before} / "
        f"{os.getloadavg()[0]:.1f} on this shared machine",
        f"- {len(queries)} library queries in `sql/queries/` via `psql` as `tuwen_analyst`: slowest "
        f"**{slowest[0]} {1000 * slowest[1]:.0f} ms** (target < 1 s); "
        + ", ".join(f"{name} {1000 * s:.0f} ms" for name, s, _ in queries),
        f"- verdict: {'PASS' if ok else 'FAIL'}",
    ]
    if n == SEED_SAMPLES:  # a smaller trial run is not a result
        record_result("Export", "\n".join(lines))
    print("\n".join(lines))
    return {"export_s": export_s, "export_cpu_s": export_cpu_s, "peak_rss_mb": peak.peak_mb, "slowest_query": slowest, "ok": ok}


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else SEED_SAMPLES)
