"""Quality gate at seed size: 641,868 generated samples judged end to end by `run_quality_gate`.

The samples follow the seed's task mix (247,431 conversation : 194,646 complex reasoning : 199,791
detail) with realistic Chinese answer lengths (conversations of 3-5 rounds, ~600 characters of answers;
reasoning ~350; descriptions ~450), OCR text stored on a third of the images (shop signs, slogans) that
the answers quote for grounding, spread over 30 crawl days, and ~4% bad samples of the kinds a VLM
produces (refusals, truncations, loops, Traditional drift, English leakage, prompt talk, too-short
descriptions, ungrounded quotes, near-copies). They are inserted with COPY; what is timed is
`run_quality_gate` end to end: DB read, checks, near-duplicates, verdict COPY + UPDATE, Great
Expectations (+ Data Docs) and the QC report. Targets: <= 180 s wall, <= 2 GB peak RSS (ru_maxrss).

Run: `.venv/bin/python -m bench.bench_qc [n_samples]`; results go under "Quality gate" in
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import multiprocessing
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.common import (
    SeedSample,
    bench_settings,
    copy_rows,
    insert_samples,
    machine,
    peak_rss_mb,
    record_result,
    seed_images,
)
from tuwen.db.session import get_engine
from tuwen.domain import SEED_TASK_MIX
from tuwen.quality.checks import question_similarity
from tuwen.quality.run import QualityGateFailed, run_quality_gate
from tuwen.quality.scope import ReleaseScope
from tuwen.resources import Resources

N_SAMPLES = sum(SEED_TASK_MIX.values())  # 641,868
FIRST_DAY = dt.date(2026, 10, 1)
N_DAYS = 30
BAD_SHARE = 0.04
SEED = 20261120

SUBJECTS = (
    "画面左侧的老人", "一位穿红色外套的女士", "桌上的白色瓷碗", "街角的报刊亭", "远处的高楼", "几个背书包的学生",
    "门口的石狮子", "柜台后面的店员", "路边的共享单车", "窗台上的绿萝", "墙上的宣传画", "一只橘色的小猫",
    "广场中央的喷泉", "停在路边的出租车", "河边的垂柳", "一排红色的灯笼", "货架上的饮料", "黑板上的粉笔字",
    "站台上的乘客", "公园里的长椅", "摊位上的水果", "厨房里的厨师", "操场上的孩子们", "屋顶上的太阳能板",
    "马路对面的银行", "穿校服的女孩", "推着婴儿车的妈妈", "一辆公交车", "小区门口的保安", "湖面上的游船",
)
PREDICATES = (
    "正在低头看手机", "摆放在木质柜台上", "在阳光下显得格外明亮", "安静地停在那里", "被雨水打湿了",
    "吸引了不少路人驻足", "正朝着镜头微笑", "排成了整齐的一列", "挂着一块褪色的招牌", "在微风中轻轻摇动",
    "冒着热腾腾的白气", "堆得像一座小山", "正在认真地交谈", "沿着人行道慢慢走着", "映在玻璃橱窗里",
    "靠在斑驳的砖墙边", "占据了画面的中央", "在夜色中亮着灯", "被整齐地码放在箱子里", "正在排队等候",
    "刚刚被打扫干净", "在树荫下休息", "挤满了前来购物的人", "上面落了一层薄薄的灰", "透出温暖的黄色灯光",
    "被绿色的围栏围了起来", "正在过斑马线", "停满了电动车", "正在搬运纸箱", "周围种着一圈月季花",
)
DETAILS = (
    "整个场景显得十分安静", "旁边还有几盆绿植", "可以看出这里人流量很大", "看起来刚下过一场小雨",
    "背景里能看到连绵的山峦", "给人一种悠闲的感觉", "说明这里是一个老城区", "地面铺着灰色的方砖",
    "光线从右上方照进来", "颜色搭配得很协调", "周围还有不少行人经过", "显示出浓厚的生活气息",
    "远处隐约传来叫卖声的氛围", "看得出主人很用心地布置过", "整体色调偏暖", "画面构图比较对称",
    "细节处理得很清楚", "让人联想到周末的早晨", "这在南方城市很常见", "能感受到节日的气氛",
    "角落里堆着一些杂物", "天空是淡淡的蓝色", "地上有几片落叶", "人们的穿着比较轻薄", "看起来是傍晚时分",
    "这种布局方便顾客挑选", "体现了当地的特色", "与周围的环境融为一体", "显得干净整洁", "透露出一丝怀旧的味道",
)
REASONS = (
    "这是因为", "从这一点可以推断", "由此可见", "换句话说", "更重要的是", "另外", "结合画面来看", "综合这些细节",
)
QUESTIONS = (
    "图中有几个人？", "这张照片是在什么地方拍的？", "画面里的天气怎么样？", "照片是在白天还是晚上拍摄的？",
    "最显眼的颜色是什么？", "桌子上摆着什么东西？", "这家店主要卖什么？", "人们在做什么？", "有没有动物出现？",
    "背景中能看到哪些建筑？", "这里看起来热闹吗？", "招牌上写了什么字？", "地面是什么材质的？",
    "拍摄者大概站在什么位置？", "画面给人什么样的感觉？", "有没有交通工具？", "植物是什么样子的？",
    "墙上挂着什么？", "光线是从哪个方向来的？", "人物穿着什么衣服？", "这可能是哪个季节？", "价格大约是多少？",
    "门口有什么装饰？", "这个场景适合拍全家福吗？", "远处有山或者水吗？", "店铺的营业时间是什么？",
)
REASONING_QUESTIONS = (
    "为什么这里会聚集这么多人？", "照片中的人接下来可能会做什么？", "这家店为什么选择开在这个位置？",
    "从画面推断，这是一个什么样的社区？", "如果下雨，这个场景会发生什么变化？", "这张照片反映了怎样的生活方式？",
)
DETAIL_QUESTIONS = ("详细描述这张图片。", "请详细描述这张照片的内容。", "描述一下这张图片里的场景。")
SIGN_NAMES = tuple(f"{a}{b}" for a in ("便民", "阳光", "老王", "幸福", "金桥", "明珠", "平安", "兴隆", "东方", "大众")
                   for b in ("超市", "水果店", "面馆", "药房", "书店", "理发店", "茶餐厅", "五金店", "花店", "烧烤"))
SLOGANS = ("营业时间", "欢迎光临", "全场八折", "新品上市", "禁止吸烟", "小心地滑", "请勿停车", "安全出口", "今日特价",
           "买一送一", "招聘店员", "外卖电话", "节能环保", "文明出行", "限时优惠", "会员专享")
TRADITIONAL = "這張圖片裡有一個很漂亮的廣場，許多人在這裡散步。遠處的建築顯得非常壯觀，讓人覺得很舒服。"
ENGLISH = " The image shows a busy street with many people walking around and enjoying the sunny afternoon."


def _distinct_questions(pool: tuple[str, ...]) -> list[str]:
    """Drop questions the duplicate-question check would pair up, so good conversations stay good."""
    kept: list[str] = []
    for question in pool:
        if all(question_similarity(question, other) < 0.5 for other in kept):
            kept.append(question)
    return kept


class SampleFactory:
    """Deterministic generated samples, good and (BAD_SHARE) bad, for one image each."""

    def __init__(self, seed: int = SEED) -> None:
        self.rng = random.Random(seed)
        self.questions = _distinct_questions(QUESTIONS)
        self.previous: dict[str, list[dict[str, str]]] = {}

    def sentence(self) -> str:
        r = self.rng
        return f"{r.choice(SUBJECTS)}{r.choice(PREDICATES)}，{r.choice(DETAILS)}。"

    def paragraph(self, low: int, high: int) -> str:
        return "".join(self.sentence() for _ in range(self.rng.randint(low, high)))

    def ocr_text(self) -> str | None:
        r = self.rng
        if r.random() >= 0.35:
            return None if r.random() < 0.5 else ""  # no OCR run, or OCR found nothing
        return "\n".join([r.choice(SIGN_NAMES), *r.sample(SLOGANS, r.randint(1, 3))])

    def _quote(self, ocr: str | None) -> str:
        if not ocr:
            return ""
        segment = self.rng.choice(ocr.split("\n"))
        return f"招牌上写着“{segment}”。"

    def conversation(self, ocr: str | None) -> list[dict[str, str]]:
        r = self.rng
        rounds = r.choices((3, 4, 5), weights=(2, 3, 5))[0]
        turns = []
        for i, question in enumerate(r.sample(self.questions, rounds)):
            answer = self.paragraph(2, 5) + (self._quote(ocr) if i == 0 else "")
            turns += [{"from": "human", "value": ("<image>\n" if i == 0 else "") + question},
                      {"from": "gpt", "value": answer}]
        return turns

    def reasoning(self, ocr: str | None) -> list[dict[str, str]]:
        r = self.rng
        body = "".join(f"{r.choice(REASONS)}，{self.sentence()}" for _ in range(r.randint(10, 16)))
        return [{"from": "human", "value": "<image>\n" + r.choice(REASONING_QUESTIONS)},
                {"from": "gpt", "value": self._quote(ocr) + body}]

    def detail(self, ocr: str | None) -> list[dict[str, str]]:
        r = self.rng
        mentions = "".join(f"画面中可以看到写着“{seg}”的字样。" for seg in (ocr or "").split("\n") if seg)
        text = self.paragraph(8, 12) + mentions + "\n\n" + self.paragraph(5, 8)
        return [{"from": "human", "value": "<image>\n" + r.choice(DETAIL_QUESTIONS)}, {"from": "gpt", "value": text}]

    def make(self, task: str, ocr: str | None) -> tuple[list[dict[str, str]], str, str | None]:
        """(conversations, finish_reason, kind of defect or None)."""
        turns = {"conversation": self.conversation, "complex_reasoning": self.reasoning,
                 "detail": self.detail}[task](ocr)
        finish = "stop"
        kind = None
        if self.rng.random() < BAD_SHARE:
            kind = self.rng.choice(("refusal", "truncated", "loop", "traditional", "english", "meta", "short",
                                    "ungrounded", "near_copy"))
            last = turns[-1]
            if kind == "refusal":
                last["value"] = "抱歉，我无法查看这张图片的具体内容，因此无法回答这个问题。"
            elif kind == "truncated":
                finish = "length"
                last["value"] = last["value"][: max(len(last["value"]) // 2, 90)].rstrip("。") + "，而且"
            elif kind == "loop":
                last["value"] += "这里非常热闹。" * 12
            elif kind == "traditional":
                last["value"] = TRADITIONAL * 2
            elif kind == "english":
                last["value"] += ENGLISH
            elif kind == "meta":
                last["value"] = "根据你的要求，以下是设计的对话：" + last["value"]
            elif kind == "short" and task == "detail":
                last["value"] = "这是一张街景照片。"
            elif kind == "ungrounded":
                last["value"] += "门口的横幅上写着“龘靐齉爩鬱”。"
            elif kind == "near_copy" and task in self.previous:
                turns = [dict(t) for t in self.previous[task]]
        if kind is None:
            self.previous[task] = turns
        return turns, finish, kind


def _task_sequence(n: int, rng: random.Random) -> list[str]:
    total = sum(SEED_TASK_MIX.values())
    tasks = [task for task, weight in SEED_TASK_MIX.items() for _ in range(round(n * weight / total))]
    tasks = (tasks + ["conversation"] * n)[:n]
    rng.shuffle(tasks)
    return tasks


def seed_lineage(settings: Any, n: int) -> dict[str, int]:
    """n images (rows; 16 real JPEGs in the bucket shared as their model-ready copies) and n samples."""
    real = seed_images(settings, 16, FIRST_DAY, 448, 336)
    engine = get_engine(settings.database_url)
    with engine.connect() as conn:
        keys = conn.execute(text("SELECT model_key FROM image WHERE id = ANY(:ids) ORDER BY id"),
                            {"ids": real}).scalars().all()
        run_id = conn.execute(text("SELECT first_crawl_run_id FROM image LIMIT 1")).scalar_one()
        first = conn.execute(text("SELECT max(id) + 1 FROM image")).scalar_one()
    factory = SampleFactory()
    rng = random.Random(SEED + 1)
    tasks = _task_sequence(n, rng)
    ocr = [factory.ocr_text() for _ in range(n)]
    image_columns = ("id", "sha256", "width", "height", "format", "n_bytes", "original_key", "model_key",
                     "model_width", "model_height", "model_mime", "status", "crawl_date", "first_crawl_run_id",
                     "task_type", "ocr_text", "ocr_char_count", "has_zh_text")

    def image_rows() -> Iterator[tuple]:
        for i in range(n):
            key = keys[i % len(keys)]
            text_ = ocr[i]
            yield (first + i, hashlib.sha256(f"bench-image-{i}".encode()).hexdigest(), 448, 336, "JPEG", 60_000,
                   key, key, 448, 336, "image/jpeg", "accepted", FIRST_DAY + dt.timedelta(days=i % N_DAYS), run_id,
                   tasks[i], text_, len(text_) if text_ is not None else None, bool(text_) if text_ is not None else None)

    copy_rows(settings, "image", image_columns, image_rows())
    with engine.begin() as conn:
        conn.execute(text("SELECT setval(pg_get_serial_sequence('image', 'id'), (SELECT max(id) FROM image))"))
    kinds: dict[str, int] = {}
    for begin in range(0, n, 50_000):  # in chunks: 641,868 conversations at once would be ~3 GB of dicts
        samples = []
        for i in range(begin, min(n, begin + 50_000)):
            turns, finish, kind = factory.make(tasks[i], ocr[i])
            if kind:
                kinds[kind] = kinds.get(kind, 0) + 1
            samples.append(SeedSample(first + i, tasks[i], turns, "zh", finish))
        insert_samples(settings, samples)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    return kinds


def _cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _record(row: dict[str, Any]) -> None:
    """Add this run to the "Quality gate" section of docs/BENCHMARKS.md."""
    entry = (f"- {row['date']} — `{row['command']}` on {row['machine']}: {row['n']:,} samples, gate "
             f"{row['wall_s']:.1f} s wall ({row['timings']}), {row['cpu_s']:.0f} s CPU in the gate process and "
             f"its check workers (PostgreSQL not counted), load average before/after {row['load']} on this shared "
             f"machine, peak RSS {row['rss_mb']:.0f} MB, "
             f"{row['n_passed']:,} passed ({row['pass_rate']:.2%}), gate {'PASS' if row['success'] else 'FAIL'}; "
             f"seeding (not timed) {row['seed_s']:.0f} s. Targets: <= 180 s, <= 2048 MB: "
             f"{'met' if row['wall_s'] <= 180 and row['rss_mb'] <= 2048 else 'NOT met'}.")
    record_result("Quality gate", entry, intro=__doc__.split(chr(10) + chr(10))[0])


def main(n: int = N_SAMPLES) -> dict[str, Any]:
    print(f"== quality gate benchmark ({machine()}): {n:,} samples ==")
    with tempfile.TemporaryDirectory() as tmp, bench_settings(Path(tmp)) as settings:
        t0 = time.perf_counter()
        # Seeded in a child process, so this process's peak RSS (ru_maxrss) is the gate's alone.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            kinds = pool.submit(seed_lineage, settings, n).result()
        seed_s = time.perf_counter() - t0
        print(f"seeded {n:,} images + generations + samples with COPY in {seed_s:.0f}s; planted defects {kinds}")
        rss_before = peak_rss_mb()
        load_before = os.getloadavg()[0]
        cpu0 = _cpu_s()
        t0 = time.perf_counter()
        try:
            outcome = run_quality_gate(Resources.from_settings(settings), ReleaseScope(), report_dir=Path(tmp) / "report")
            success = True
        except QualityGateFailed as exc:
            print(f"gate FAILED: {exc}")
            success = False
            outcome = None
        wall = time.perf_counter() - t0
        # CPU of this process and its check workers (not PostgreSQL's): on a shared machine the wall
        # time depends on the neighbours, this does not.
        cpu = _cpu_s() - cpu0
        load_after = os.getloadavg()[0]
        with get_engine(settings.database_url).connect() as conn:
            run = conn.execute(text("SELECT * FROM qc_run ORDER BY id DESC LIMIT 1")).one()
        timings = outcome.timings if outcome else {}
        row = {
            "date": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC", "command": "python -m bench.bench_qc" + (f" {n}" if n != N_SAMPLES else ""),
            "machine": machine(), "n": run.n_samples, "n_passed": run.n_passed, "pass_rate": run.pass_rate or 0.0,
            "success": success and bool(run.success), "wall_s": wall, "rss_mb": peak_rss_mb(),
            "rss_before_gate_mb": rss_before, "seed_s": seed_s,
            "timings": ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in timings.items()),
            "failed_reasons": run.results.get("failed_reasons"), "cpu_s": cpu,
            "load": f"{load_before:.1f} / {load_after:.1f}",
        }
    print(f"gate: {row['n']:,} samples in {wall:.1f}s ({row['timings']}); CPU {cpu:.0f} s (gate process + "
          f"workers, excluding PostgreSQL); load average before/after {row['load']}; peak RSS {row['rss_mb']:.0f} MB "
          f"(before the gate {rss_before:.0f} MB); passed {row['n_passed']:,} ({row['pass_rate']:.2%}); "
          f"reasons {row['failed_reasons']}")
    if n == N_SAMPLES:
        _record(row)
    return row


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else N_SAMPLES)
