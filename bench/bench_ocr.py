"""OCR per core, today's parameters against the previous ones, side by side in one process.

    .venv/bin/python -m bench.bench_ocr [--text 50] [--diagrams 24] [--photos 20] [--rounds 2]
                                      [--new '{"det_limit_side_len": 1280}']

Three sets of model-ready copies (the pixels OCR runs on in production): the standard fixture's text
images (signs, menus, posters; the set the crawl bench's OCR figure uses), diagram-like images drawn
here (flowcharts, tables in a page screenshot, bar charts: many small Chinese labels, lines and boxes)
and the fixture's photos (no text). Each image goes through BASELINE and `tuwen.crawl.ocr.OCR_PARAMS`
(or `--new`, those with some fields replaced) one after the other, the order alternating, so the
vm's drifting speed and the other processes on it weigh on both alike. Time is the process's CPU
time (`time.process_time`) with one ONNX Runtime thread: images/s per core. Recall is `char_recall`
of the strings drawn on each image against the text found, the measure tests/services/test_ocr.py
holds OCR to. `stage_ms` splits each path's CPU per image into detection, angle classifier and
recognition.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from tuwen.crawl.images import inspect_and_normalize
from tuwen.crawl.ocr import CJK_RE, OCR_PARAMS, OcrParams, char_recall, extract_text, ocr_engine
from tuwen.local.fixture_site import (
    CITIES,
    DISHES,
    EVENTS,
    NOTICE_LINES,
    PRODUCTS,
    SCENIC,
    SHOP_NAMES,
    STREETS,
    VENUES,
    generate_site,
    load_cjk_font,
)

# The parameters OCR ran with until issue 18 (RapidOCR 1.4.4's defaults, one ONNX thread): the angle
# classifier on every line, the detector's input raised to a shorter side of 736 px (a 448x364 sign
# is detected at 906x736), every line padded to 320x48 px for the recogniser, six lines a batch.
BASELINE = OcrParams(use_cls=True, det_limit_type="min", det_limit_side_len=736, own_det_preprocess=False,
                     rec_batch_num=6, rec_img_shape=(3, 48, 320), cpu_mem_arena=False)

WORDS = SHOP_NAMES + STREETS + EVENTS + VENUES + PRODUCTS + DISHES + SCENIC + CITIES
INK = (25, 25, 30)


@dataclasses.dataclass
class Sample:
    data: bytes  # the model-ready copy
    strings: list[str]  # drawn on it; empty for photos


def _model_copy(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    decision = inspect_and_normalize(buf.getvalue(), "image/png")
    assert decision.model is not None, decision.reason
    return decision.model.data


def flowchart(rng: random.Random) -> tuple[Image.Image, list[str]]:
    """A 1400x900 flowchart: a title, up to 12 boxes of two 15-20 px lines joined by lines, a 14 px legend."""
    width, height = 1400, 900
    img = Image.new("RGB", (width, height), (252, 252, 250))
    draw = ImageDraw.Draw(img)
    title = rng.choice(CITIES) + rng.choice(["系统架构图", "业务流程图", "数据流向示意", "部署拓扑"])
    draw.text((40, 24), title, font=load_cjk_font(28), fill=INK)
    strings = [title]
    cell_w, cell_h = (width - 80) // 4, (height - 140) // 3
    boxes = []
    for row in range(3):
        for col in range(4):
            if rng.random() < 0.2:
                continue
            size = rng.choice([15, 16, 18, 20])
            font = load_cjk_font(size)
            lines = [rng.choice(WORDS), f"{rng.choice(['模块', '服务', '接口', '节点'])}{rng.randint(1, 99)}"]
            box_w = max(draw.textlength(line, font=font) for line in lines) + 30
            box_h = size * 2.8 + 16
            x = 40 + col * cell_w + rng.randint(0, max(1, int(cell_w - box_w - 10)))
            y = 90 + row * cell_h + rng.randint(0, max(1, int(cell_h - box_h - 10)))
            boxes.append((x, y, box_w, box_h, size, lines))
            strings += lines
    for a, b in zip(boxes, boxes[1:], strict=False):  # connectors first, boxes drawn over them
        draw.line((a[0] + a[2] / 2, a[1] + a[3], b[0] + b[2] / 2, b[1]), fill=(90, 90, 120), width=2)
    for x, y, box_w, box_h, size, lines in boxes:
        fill = tuple(rng.randint(200, 250) for _ in range(3))
        draw.rounded_rectangle((x, y, x + box_w, y + box_h), radius=6, fill=fill, outline=(60, 60, 90), width=2)
        for k, line in enumerate(lines):
            draw.text((x + 15, y + 8 + k * size * 1.4), line, font=load_cjk_font(size), fill=INK)
    legend = f"图例：{rng.choice(NOTICE_LINES)}"
    draw.text((40, height - 40), legend, font=load_cjk_font(14), fill=(80, 80, 80))
    return img, strings + [legend]


def table_screenshot(rng: random.Random) -> tuple[Image.Image, list[str]]:
    """A 1920x1080 page screenshot: a menu bar, a side menu and a ruled table in 16 px text. The
    model-ready copy shrinks it by 0.69, so the text is ~11 px there, the smallest the VLM is given."""
    width, height = 1920, 1080
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = load_cjk_font(16)
    draw.rectangle((0, 0, width, 56), fill=(34, 60, 110))
    strings = []
    x = 30.0
    for item in rng.sample(["首页", "产品中心", "解决方案", "文档", "社区", "关于我们", "联系方式"], 5):
        draw.text((x, 18), item, font=font, fill=(240, 240, 245))
        strings.append(item)
        x += draw.textlength(item, font=font) + 48
    draw.rectangle((0, 56, 240, height), fill=(242, 244, 247))
    for k, item in enumerate(rng.sample(WORDS, 8)):
        draw.text((28, 90 + k * 44), item, font=font, fill=INK)
        strings.append(item)
    columns = ["名称", "地址", "活动", "场馆"]
    col_x = [290, 560, 860, 1160, 1460]
    top, row_h = 100, 48
    rows = [columns] + [[rng.choice(SHOP_NAMES), f"{rng.choice(STREETS)}{rng.randint(1, 399)}号",
                         rng.choice(EVENTS), rng.choice(VENUES)] for _ in range(rng.randint(6, 10))]
    for r, cells in enumerate(rows):
        y = top + r * row_h
        if r == 0:
            draw.rectangle((col_x[0], y, col_x[-1], y + row_h), fill=(230, 236, 245))
        draw.line((col_x[0], y + row_h, col_x[-1], y + row_h), fill=(200, 200, 210), width=1)
        for c, cell in enumerate(cells):
            draw.text((col_x[c] + 14, y + 15), cell, font=font, fill=INK)
            strings.append(cell)
    for cx in col_x:
        draw.line((cx, top, cx, top + len(rows) * row_h), fill=(200, 200, 210), width=1)
    return img, strings


def bar_chart(rng: random.Random) -> tuple[Image.Image, list[str]]:
    """A 1200x800 bar chart: an 24 px title, 16 px category labels under the bars, 14 px axis numbers."""
    width, height = 1200, 800
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    title = f"{rng.choice(CITIES)}{rng.randint(2019, 2024)}年各区{rng.choice(['客流量', '销售额', '用电量'])}统计"
    draw.text((80, 30), title, font=load_cjk_font(24), fill=INK)
    strings = [title]
    base, left = 680, 120
    draw.line((left, 100, left, base), fill=INK, width=2)
    draw.line((left, base, width - 60, base), fill=INK, width=2)
    for k in range(5):
        value = str(k * 200)
        y = base - k * 130
        draw.text((left - 50, y - 9), value, font=load_cjk_font(14), fill=INK)
        if k:
            strings.append(value)
    labels = rng.sample(STREETS + CITIES, 6)
    for k, label in enumerate(labels):
        x = left + 40 + k * 170
        bar = rng.randint(80, 520)
        draw.rectangle((x, base - bar, x + 80, base), fill=tuple(rng.randint(60, 200) for _ in range(3)))
        draw.text((x, base + 14), label, font=load_cjk_font(16), fill=INK)
        strings.append(label)
    return img, strings


def diagram_samples(count: int, seed: int = 5) -> list[Sample]:
    rng = random.Random(seed)
    makers: list[Callable[[random.Random], tuple[Image.Image, list[str]]]] = [flowchart, table_screenshot, bar_chart]
    samples = []
    for k in range(count):
        img, strings = makers[k % len(makers)](rng)
        samples.append(Sample(_model_copy(img), strings))
    return samples


def fixture_samples(work: Path, n_text: int, n_photos: int) -> tuple[list[Sample], list[Sample]]:
    """The standard fixture's first text images (as the crawl bench's OCR figure takes them) and photos."""
    site = work / "ocr-site"
    manifest = generate_site(site, seed=7, profile="standard")
    texts: list[Sample] = []
    photos: list[Sample] = []
    for image in manifest.images.values():
        if image.outcome != "accepted" or not image.file:
            continue
        wanted = texts if image.text else photos if image.kind == "photo" else None
        if wanted is None or len(wanted) >= (n_text if image.text else n_photos):
            continue
        decision = inspect_and_normalize((site / "www" / image.file).read_bytes(), image.content_type)
        assert decision.model is not None
        wanted.append(Sample(decision.model.data, list(image.text or [])))
    return texts, photos


class StageClock:
    """CPU seconds inside an engine's detector, angle classifier and recogniser."""

    def __init__(self, engine: Any) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        for stage, attr in (("det", "text_det"), ("cls", "text_cls"), ("rec", "text_rec")):
            part = getattr(engine, attr)
            original = type(part)
            part.__class__ = type(f"Timed{original.__name__}", (original,),
                                  {"__call__": self._timed(stage, original.__call__)})

    def _timed(self, stage: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(part: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return call(part, *args, **kwargs)
            finally:
                self.seconds[stage] += time.process_time() - started

        return timed


def run(sets: dict[str, list[Sample]], paths: dict[str, OcrParams], rounds: int) -> dict[str, Any]:
    clocks = {}
    for name, params in paths.items():
        clocks[name] = StageClock(ocr_engine(1, params))
        extract_text(sets["text"][0].data, threads=1, params=params)  # load the models outside the timing
    result: dict[str, Any] = {}
    names = list(paths)
    for kind, samples in sets.items():
        cpu = dict.fromkeys(names, 0.0)
        stages_before = {name: dict(clocks[name].seconds) for name in names}
        texts: dict[str, list[str]] = {name: [] for name in names}
        for round_ in range(rounds):
            for i, sample in enumerate(samples):
                order = names if (i + round_) % 2 == 0 else names[::-1]
                for name in order:
                    started = time.process_time()
                    found = extract_text(sample.data, threads=1, params=paths[name])
                    cpu[name] += time.process_time() - started
                    if round_ == 0:
                        texts[name].append(found.text)
        n = len(samples) * rounds
        per_kind: dict[str, Any] = {"images": len(samples), "rounds": rounds}
        for name in names:
            recalls = [char_recall("".join(s.strings), t) for s, t in zip(samples, texts[name], strict=True)
                       if s.strings]
            # The same measure over the Chinese characters only: the recogniser writes a drawn ":" as
            # ":" or "：" depending on the crop's exact edges, which counts as a miss above.
            cjk = [char_recall("".join(CJK_RE.findall("".join(s.strings))), t)
                   for s, t in zip(samples, texts[name], strict=True) if s.strings]
            stage = {k: round((v - stages_before[name].get(k, 0.0)) / n * 1000, 1)
                     for k, v in clocks[name].seconds.items()}
            per_kind[name] = {
                "images_per_s_per_core": round(n / cpu[name], 2),
                "cpu_ms_per_image": round(cpu[name] / n * 1000, 1),
                "stage_ms": stage,
                "recall_mean": round(statistics.fmean(recalls), 4) if recalls else None,
                "recall_min": round(min(recalls), 4) if recalls else None,
                "recall_cjk_mean": round(statistics.fmean(cjk), 4) if cjk else None,
                "recalls": recalls,
                "images_with_text_found": sum(1 for t in texts[name] if t),
            }
        per_kind["speedup"] = round(cpu[names[0]] / cpu[names[1]], 2)
        old, new = (per_kind[name].pop("recalls") for name in names)
        # Images whose recall moved between the paths (which strings they are is in the JSON of a run
        # with --text/--diagrams small enough to inspect).
        per_kind["recall_lower_on"] = sum(1 for a, b in zip(old, new, strict=True) if b < a)
        per_kind["recall_higher_on"] = sum(1 for a, b in zip(old, new, strict=True) if b > a)
        result[kind] = per_kind
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=int, default=50, help="fixture text images")
    parser.add_argument("--diagrams", type=int, default=24, help="diagram-like images (flowcharts, tables, charts)")
    parser.add_argument("--photos", type=int, default=20, help="fixture photos (no text)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over each set (recall from the first)")
    parser.add_argument("--new", default="", help="JSON: fields of OCR_PARAMS replaced for this run (A/B of a variant)")
    args = parser.parse_args([] if argv is None else argv)  # `python -m bench ocr` passes none
    new = OCR_PARAMS
    if args.new:
        changes = json.loads(args.new)
        if "rec_img_shape" in changes:
            changes["rec_img_shape"] = tuple(changes["rec_img_shape"])
        new = dataclasses.replace(OCR_PARAMS, **changes)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tuwen-bench-ocr-") as tmp:
        texts, photos = fixture_samples(Path(tmp), args.text, args.photos)
    sets = {"text": texts, "diagram": diagram_samples(args.diagrams), "photo": photos}
    prepared_s = time.perf_counter() - started
    result = {"baseline": dataclasses.asdict(BASELINE), "new": dataclasses.asdict(new),
              "prepared_s": round(prepared_s, 1), **run(sets, {"baseline": BASELINE, "new": new}, args.rounds)}
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
