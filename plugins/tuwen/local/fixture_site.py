"""A generated Chinese website served on 127.0.0.1: the crawler's test fixture.

`generate_site` writes a seeded, byte-reproducible site (HTML under `www/`, answers in
`manifest.json` beside it, never served) and `serve_site` serves it with the behaviours real
sites have: lying Content-Types, `X-Robots-Tag: noai`, redirects (one a loop), 404s, robots.txt
and raw Chinese file names. The manifest states, for every image URL a page mentions, what an
ideal crawler must conclude about it, so crawler tests can assert exact counts.

    python -m tuwen.local.fixture_site generate --out /tmp/site [--seed 7] [--profile standard|bench|hostile] [--images N]
    python -m tuwen.local.fixture_site serve --dir /tmp/site --port 8765
"""

from __future__ import annotations

import argparse
import hashlib
import html
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tuwen.crawl.images import hamming64, perceptual_hash, phash_of_bytes
from tuwen.local.hostile_images import hostile_images

CJK_FONT_PATH = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
MANIFEST_NAME = "manifest.json"
WEB_ROOT_NAME = "www"
SCHEMA_VERSION = 1

# The limits the expected outcomes are computed against (the crawler's defaults).
MIN_SIDE = 224
MAX_BYTES = 15 * 1024 * 1024
MAX_PIXELS = 30_000_000
MAX_ASPECT_RATIO = 8.0
# Pillow refuses to open images above twice its MAX_IMAGE_PIXELS (DecompressionBombError).
DECOMPRESSION_BOMB_PIXELS = 2 * int(Image.MAX_IMAGE_PIXELS or 89_478_485)

# Perceptual-hash (tuwen.crawl.images.perceptual_hash, the crawler's own, 64 bits) margins the fixture guarantees: different pictures are at
# least DISTINCT apart, near duplicates at most NEAR from their original.
DISTINCT_MIN_PHASH_DISTANCE = 18
# Among 2000 random bench photos about a third fall within 18 of another one (redrawing them all is
# slow), but only ~1% within 12: still twice the near-duplicate margin.
BENCH_DISTINCT_MIN_PHASH_DISTANCE = 12
NEAR_DUPLICATE_MAX_PHASH_DISTANCE = 6
NEAR_DUPLICATE_CROP = 0.02  # per edge

OUTCOMES = ("accepted", "duplicate", "near_duplicate", "rejected", "not_fetched")
PROFILES = ("standard", "bench", "hostile")  # hostile: the adversarial pages (HOSTILE_CASES), a site of its own

CRAWLER_RULES = [
    "Start at /index.html, follow <a href> links on the same host, obey /robots.txt.",
    "Image references: <img src>, <img data-src>, <img data-original>, <img srcset>, "
    "<picture><source srcset>, <meta property='og:image'>. data: URIs are placeholders, never images.",
    "srcset with w descriptors (on <img> or on the <source> of a <picture>): fetch only the largest "
    "candidate; the smaller candidates and the <img src> fallback are not fetched (srcset_smaller_variant).",
    "One record per distinct URL however many pages mention it; pages lists every mention.",
    "Absolute URLs to another host are not fetched (off_domain); robots-disallowed URLs are not fetched.",
    "Redirects are followed; a URL whose redirects come back to a URL already in the chain is redirect_loop.",
    "Content-Type is not trusted: bytes decide whether something is an image (not_image otherwise).",
    "Checks after download: X-Robots-Tag noai/noimageai -> noai; undecodable or truncated -> corrupt; "
    "declared pixels > decompression_bomb_pixels -> decompression_bomb; > max_pixels -> too_many_pixels; "
    "more than one frame -> animated; shorter side < min_side -> too_small; "
    "longer/shorter side > max_aspect_ratio -> extreme_aspect.",
    "Same SHA-256 as an image already kept -> duplicate; perceptually the same picture (re-encoded, "
    "resized to 90%, cropped <= 3% per edge) -> near_duplicate. Which copy of a group is kept depends on "
    "crawl order; the counts do not.",
]


class FontMissingError(RuntimeError):
    """The CJK font the fixture draws its Chinese text with is not installed."""


@lru_cache(maxsize=64)
def load_cjk_font(size: int) -> ImageFont.FreeTypeFont:
    """The WenQuanYi Micro Hei font at `size` px; a clear error when the package is missing."""
    if not CJK_FONT_PATH.is_file():
        raise FontMissingError(
            f"CJK font not found at {CJK_FONT_PATH}; the fixture site draws Chinese text with it. "
            "Install it with `apt-get install fonts-wqy-microhei`."
        )
    return ImageFont.truetype(str(CJK_FONT_PATH), size=size, index=0)


# --------------------------------------------------------------------------------------------
# Manifest


@dataclass
class PageRef:
    page: str  # root-relative page path, e.g. /news/3.html
    how: str  # img | data-src | data-original | srcset | picture | og


@dataclass
class ExpectedImage:
    url: str  # root-relative path as written in the HTML (raw, not percent-encoded), or absolute off-domain
    outcome: str  # one of OUTCOMES
    reason: str | None  # None for accepted
    pages: list[PageRef]
    kind: str  # text | photo | icon | hard_case | variant | curated_away
    file: str | None  # path under www/ (None when nothing is served at this URL)
    text: list[str] | None = None  # the exact strings drawn on the image, one per line
    width: int | None = None
    height: int | None = None
    format: str | None = None  # JPEG | PNG | GIF, None for non-images
    mode: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    content_type: str | None = None  # what the server sends
    duplicate_of: str | None = None  # URL of the kept original, for duplicates and near duplicates
    variant: str | None = None  # near duplicates: requality | resize90 | crop2; srcset: 480w ...
    phash_distance: int | None = None  # near duplicates: perceptual_hash distance to duplicate_of
    final_url: str | None = None  # where a redirect lands
    # Curation (tuwen.curate) of an accepted image: "curated", or "rejected" with the filter's reason.
    # simple_graphic needs OCR text to decide; without OCR such an image is curated with its score only.
    curation: str | None = None
    curation_reason: str | None = None

    @property
    def has_text(self) -> bool:
        return bool(self.text)


@dataclass
class SiteManifest:
    seed: int
    profile: str
    pages: list[dict[str, Any]]  # {"path", "title", "depth"} for every crawlable page
    disallowed_pages: list[str]
    images: dict[str, ExpectedImage]
    routes: dict[str, dict[str, Any]]  # per-path server behaviour, see FixtureRequestHandler
    limits: dict[str, Any]
    expected_counts: dict[str, Any] = field(default_factory=dict)
    start_path: str = "/index.html"
    web_root: str = WEB_ROOT_NAME
    robots_txt: str = ""
    rules: list[str] = field(default_factory=lambda: list(CRAWLER_RULES))
    schema_version: int = SCHEMA_VERSION

    @property
    def page_count(self) -> int:
        return len(self.pages)

    def to_json(self) -> str:
        data = asdict(self)
        data["page_count"] = self.page_count
        data["images"] = {url: asdict(img) for url, img in self.images.items()}
        return json.dumps(data, ensure_ascii=False, indent=1) + "\n"

    @classmethod
    def load(cls, site_dir: Path) -> SiteManifest:
        data = json.loads((Path(site_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
        data.pop("page_count", None)
        images = {}
        for url, raw in data.pop("images").items():
            raw["pages"] = [PageRef(**ref) for ref in raw["pages"]]
            images[url] = ExpectedImage(**raw)
        return cls(images=images, **data)


def count_expected(images: dict[str, ExpectedImage]) -> dict[str, Any]:
    """The summary an ideal crawler reports: per outcome, per reason and per outcome/reason."""
    by_outcome = Counter(img.outcome for img in images.values())
    by_reason = Counter(img.reason for img in images.values() if img.reason)
    by_pair = Counter(f"{img.outcome}/{img.reason}" for img in images.values() if img.reason)
    accepted = [img for img in images.values() if img.outcome == "accepted"]
    return {
        "images_total": len(images),
        "by_outcome": {name: by_outcome.get(name, 0) for name in OUTCOMES},
        "by_reason": dict(sorted(by_reason.items())),
        "by_outcome_reason": dict(sorted(by_pair.items())),
        "accepted_with_text": sum(1 for img in accepted if img.has_text),
        "by_curation": dict(sorted(Counter(img.curation or "curated" for img in accepted).items())),
        "by_curation_reason": dict(sorted(Counter(img.curation_reason for img in accepted
                                                  if img.curation_reason).items())),
        "fetched_urls": sum(1 for img in images.values() if img.outcome != "not_fetched"),
    }


def expected_curation(images: dict[str, ExpectedImage], ocr_ran: bool) -> dict[str, int]:
    """Accepted images per curation verdict an ideal curation reaches: simple_graphic needs OCR text to
    decide, so without OCR those images are curated (with their colour score)."""
    verdicts = Counter("curated" if img.curation_reason == "simple_graphic" and not ocr_ran else img.curation or "curated"
                       for img in images.values() if img.outcome == "accepted")
    return dict(sorted(verdicts.items()))


# --------------------------------------------------------------------------------------------
# Chinese content

CITIES = ["北京", "上海", "广州", "深圳", "杭州", "成都", "重庆", "西安", "南京", "武汉", "苏州", "长沙"]
SHOP_NAMES = ["老王面馆", "福满楼酒家", "好又多超市", "新华书店", "阿香米线", "同仁堂药店", "小杨生煎",
              "春风理发店", "鑫鑫水果店", "金鼎茶庄", "红星五金店", "平安大药房", "喜洋洋烘焙", "山城火锅"]
STREETS = ["人民路", "中山北路", "解放大道", "长江路", "建设路", "文化街", "和平里", "花园路", "滨江大道"]
ROAD_SIGNS = ["前方学校 减速慢行", "禁止停车", "禁止吸烟", "小心地滑", "紧急出口", "前方施工 请绕行",
              "非机动车道", "注意行人", "限速40公里", "请勿乱扔垃圾"]
EVENTS = ["春季音乐节", "周末读书会", "亲子手工坊", "城市马拉松", "非遗文化展", "美食嘉年华", "电影放映周",
          "书法作品展", "摄影大赛", "科技创新展", "中秋游园会", "国潮市集"]
VENUES = ["市文化中心", "人民广场", "科技馆二楼", "体育中心", "滨江公园", "图书馆报告厅", "美术馆一号厅"]
TAGLINES = ["免费入场", "欢迎参加", "名额有限 报名从速", "凭票入场", "全家一起来", "精彩不容错过"]
DISHES = ["宫保鸡丁", "麻婆豆腐", "鱼香肉丝", "红烧肉", "西红柿炒鸡蛋", "酸辣土豆丝", "水煮鱼", "回锅肉",
          "糖醋排骨", "清蒸鲈鱼", "扬州炒饭", "牛肉拉面", "小笼包", "酸菜鱼", "干锅花菜", "蒜蓉西兰花",
          "地三鲜", "京酱肉丝", "东坡肉", "白切鸡", "担担面", "葱油饼"]
MENU_TITLES = ["今日菜单", "本店招牌", "午市套餐", "特色小吃", "厨师推荐", "家常菜"]
PRODUCTS = ["无线蓝牙耳机", "不锈钢保温杯", "纯棉短袖T恤", "智能手环", "有机大米5kg", "进口纯牛奶",
            "电动牙刷", "双肩背包", "跑步鞋", "护眼台灯", "空气炸锅", "羽绒服", "陶瓷茶具", "儿童绘本"]
PROMOS = ["限时特惠", "第二件半价", "新品上市", "买一送一", "清仓处理", "会员专享"]
NOTICE_TITLES = ["温馨提示", "停水通知", "停电通知", "装修公告", "放假通知", "安全提示"]
NOTICE_LINES = ["因管道维修暂停供水", "请各位住户提前储水", "给您带来不便 敬请谅解", "请勿在楼道堆放杂物",
                "电梯维保中 请走楼梯", "本店春节期间正常营业", "外来车辆请登记", "请保管好随身物品",
                "施工期间请注意安全", "节假日照常营业"]
SCENIC = ["黄山风景区", "西湖", "故宫博物院", "张家界国家森林公园", "九寨沟", "丽江古城", "泰山", "桂林漓江",
          "鼓浪屿", "乌镇"]
TRAVEL_LINES = ["欢迎您", "售票处", "游客中心", "观景台", "索道入口", "停车场", "卫生间", "禁止攀爬"]

SECTIONS = {
    "news": ("新闻资讯", "城市新闻、社区动态与公告"),
    "shop": ("购物商城", "精选好物与优惠活动"),
    "travel": ("旅游攻略", "景点介绍、交通与路线"),
    "food": ("美食天地", "餐馆菜单与家常做法"),
    "events": ("活动海报", "近期演出、展览与市集"),
}
SECTION_TEXT_KINDS = {
    "news": ["notice", "sign", "road"],
    "shop": ["price", "sign", "price"],
    "travel": ["travel", "road", "sign"],
    "food": ["menu", "sign", "menu"],
    "events": ["poster", "poster", "notice"],
}
SENTENCES = {
    "news": ["{city}市相关部门近日发布通知，提醒市民合理安排出行。", "记者在{street}附近看到，现场秩序井然。",
             "社区工作人员表示，相关工作将持续到月底。", "不少居民拍下了张贴在小区门口的告示。",
             "据了解，这是今年以来第三次类似的安排。"],
    "shop": ["这款{product}上市以来销量一直不错。", "本周店内多款商品参加{promo}活动。",
             "顾客可以在门店或线上下单，满两百元包邮。", "店员介绍，价签上的价格已经包含优惠。",
             "不少网友晒出了自己的购物清单。"],
    "travel": ["{scenic}是{city}周边最受欢迎的景点之一。", "建议游客提前在网上购票，避开节假日高峰。",
               "景区内的指示牌清楚地标出了各个景点的方向。", "从{city}出发，自驾大约需要三个小时。",
               "春秋两季气候宜人，是游览的最佳时节。"],
    "food": ["{shop}是{street}上的一家老字号。", "招牌菜{dish}几乎每桌必点。", "店里的菜单写在门口的黑板上。",
             "人均消费五十元左右，性价比很高。", "午市套餐附送例汤和米饭。"],
    "events": ["{event}将在{venue}举行。", "主办方表示，本次活动面向全体市民开放。",
               "现场还将设置互动区和文创市集。", "海报上印着活动的时间和地点。", "感兴趣的朋友可以关注官方公众号报名。"],
}
TITLES = {
    "news": ["{city}{street}路段改造工程启动", "{city}发布近期停水安排", "{city}社区开展安全宣传活动",
             "{street}新增一批交通标志", "{city}老城区店招统一更新"],
    "shop": ["{product}限时特惠", "{promo}：本周值得买的好物", "{city}门店开业 多款商品打折", "{product}选购指南"],
    "travel": ["{scenic}游玩攻略", "{city}周末去哪儿", "{scenic}最新开放时间", "带孩子游{scenic}的实用建议"],
    "food": ["{city}必吃的家常菜", "{shop}的招牌{dish}", "{street}美食探店", "午餐吃什么：{dish}做法"],
    "events": ["{event}即将开幕", "{venue}本月活动一览", "{city}{event}报名开始", "周末好去处：{event}"],
}


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        city=rng.choice(CITIES), street=rng.choice(STREETS), product=rng.choice(PRODUCTS),
        promo=rng.choice(PROMOS), scenic=rng.choice(SCENIC), shop=rng.choice(SHOP_NAMES),
        dish=rng.choice(DISHES), event=rng.choice(EVENTS), venue=rng.choice(VENUES),
    )


def _text_lines(kind: str, rng: random.Random) -> list[str]:
    """The strings drawn on one image (a sign, poster, menu, price tag, notice ...)."""
    if kind == "sign":
        return [rng.choice(SHOP_NAMES), f"{rng.choice(STREETS)}{rng.randint(1, 399)}号",
                f"营业时间 {rng.randint(6, 10):02d}:00-{rng.randint(20, 23)}:30"]
    if kind == "road":
        return [rng.choice(ROAD_SIGNS), f"{rng.choice(STREETS)} {rng.randint(100, 900)}米"]
    if kind == "poster":
        return [f"{rng.choice(CITIES)}{rng.choice(EVENTS)}", f"{rng.randint(1, 12)}月{rng.randint(1, 28)}日 "
                f"{rng.randint(9, 20)}:{rng.choice(['00', '30'])}", rng.choice(VENUES), rng.choice(TAGLINES)]
    if kind == "menu":
        dishes = rng.sample(DISHES, rng.randint(3, 4))
        return [rng.choice(MENU_TITLES)] + [f"{d} {rng.randint(12, 88)}元" for d in dishes]
    if kind == "price":
        price = rng.randint(9, 899)
        return [rng.choice(PRODUCTS), f"¥{price}", f"原价 ¥{price + rng.randint(10, 300)}", rng.choice(PROMOS)]
    if kind == "notice":
        return [rng.choice(NOTICE_TITLES), *rng.sample(NOTICE_LINES, 2),
                f"{rng.choice(STREETS)}物业 {rng.randint(1, 12)}月{rng.randint(1, 28)}日"]
    if kind == "travel":
        return [rng.choice(SCENIC), rng.choice(TRAVEL_LINES),
                f"开放时间 {rng.randint(7, 9):02d}:00-{rng.randint(16, 18)}:30"]
    raise ValueError(f"unknown text kind {kind!r}")


# --------------------------------------------------------------------------------------------
# Pixels


def _photo_array(nrng: np.random.Generator, width: int, height: int, noise: int) -> np.ndarray:
    """A photo-like RGB array: a random low-frequency colour field (so perceptual hashes of
    different images differ), a few shapes, and grain (so JPEG does not shrink it to nothing)."""
    grid = nrng.integers(0, 256, size=(int(nrng.integers(2, 5)), int(nrng.integers(2, 5)), 3), dtype=np.uint8)
    base = Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(int(nrng.integers(2, 6))):
        x0, y0 = int(nrng.integers(-width // 4, width)), int(nrng.integers(-height // 4, height))
        x1 = x0 + int(nrng.integers(width // 8, width // 2))
        y1 = y0 + int(nrng.integers(height // 8, height // 2))
        colour = tuple(int(c) for c in nrng.integers(0, 256, 3))
        if nrng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
    if not noise:
        return np.asarray(base)
    arr = np.asarray(base, dtype=np.int16) + nrng.integers(-noise, noise + 1, size=(height, width, 3),
                                                            dtype=np.int16)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _photo_image(nrng: np.random.Generator, width: int, height: int, noise: int = 14) -> Image.Image:
    return Image.fromarray(_photo_array(nrng, width, height, noise), "RGB")


def _text_image(nrng: np.random.Generator, lines: list[str], width: int, height: int, noise: int) -> Image.Image:
    """A sign/poster/menu: photo-like background, a solid panel, the lines drawn large enough to read."""
    img = Image.fromarray(_photo_array(nrng, width, height, 0), "RGB")
    draw = ImageDraw.Draw(img)
    panel_w = int(width * nrng.uniform(0.72, 0.92))
    panel_h = int(height * nrng.uniform(0.6, 0.88))
    px = int(nrng.integers(0, width - panel_w + 1))
    py = int(nrng.integers(0, height - panel_h + 1))
    panel = tuple(int(c) for c in nrng.integers(0, 256, 3))
    luminance = 0.299 * panel[0] + 0.587 * panel[1] + 0.114 * panel[2]
    ink = (20, 20, 20) if luminance > 128 else (250, 250, 245)
    draw.rounded_rectangle((px, py, px + panel_w, py + panel_h), radius=min(panel_w, panel_h) // 12,
                           fill=panel, outline=ink, width=max(2, min(width, height) // 120))
    longest = max(len(line) for line in lines)
    size = int(min(panel_w * 0.86 / longest, panel_h * 0.8 / (len(lines) * 1.3)))
    size = max(16, min(size, 120))
    font = load_cjk_font(size)
    line_h = int(size * 1.3)
    y = py + (panel_h - line_h * len(lines)) // 2
    centred = bool(nrng.random() < 0.6)
    for line in lines:
        line_w = draw.textlength(line, font=font)
        x = px + (panel_w - line_w) / 2 if centred else px + panel_w * 0.07
        draw.text((x, y), line, font=font, fill=ink)
        y += line_h
    if not noise:
        return img
    arr = np.asarray(img, dtype=np.int16) + nrng.integers(-noise, noise + 1, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _encode(img: Image.Image, fmt: str, quality: int = 88) -> bytes:
    """Encoded bytes with no metadata (no EXIF, no timestamps) so output is reproducible."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality, optimize=False, progressive=False)
    elif fmt == "PNG":
        img.save(buf, "PNG", compress_level=6)
    else:
        raise ValueError(fmt)
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG that declares width x height 1-bit pixels; compressed row by row to stay small in memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * 500) for _ in range(height // 500)]
    parts.append(compressor.compress(row * (height % 500)))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def _not_image_html(title: str) -> bytes:
    return (f"<!DOCTYPE html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><title>{title}</title></head>"
            f"<body><h1>{title}</h1><p>您访问的资源暂时无法显示，请稍后再试。</p></body></html>\n").encode()


# --------------------------------------------------------------------------------------------
# Generation


@dataclass
class _Page:
    path: str
    title: str
    section: str | None
    intro: list[str]
    blocks: list[str] = field(default_factory=list)  # HTML fragments: figures and paragraphs
    links: list[tuple[str, str]] = field(default_factory=list)  # extra (href, label) links
    og_image: str | None = None
    head: str = ""  # extra <head> markup (a robots meta tag ...)


class _SiteBuilder:
    def __init__(self, out_dir: Path, seed: int, profile: str) -> None:
        self.out_dir = out_dir
        self.www = out_dir / WEB_ROOT_NAME
        self.seed = seed
        self.profile = profile
        self.rng = random.Random(seed)
        self.nrng = np.random.default_rng(seed)
        self.images: dict[str, ExpectedImage] = {}
        self.routes: dict[str, dict[str, Any]] = {}
        self.used_texts: set[tuple[str, ...]] = set()
        self.fingerprints: list[imagehash.ImageHash] = []

    # files ------------------------------------------------------------------------------
    def write(self, url_path: str, data: bytes) -> str:
        rel = url_path.lstrip("/")
        target = self.www / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return rel

    def add_image(self, url: str, data: bytes | None, *, outcome: str, reason: str | None, kind: str,
                  text: list[str] | None = None, content_type: str | None = None, **extra: Any) -> ExpectedImage:
        """Write the bytes at `url` (when there are any) and record what the crawler must conclude."""
        if url in self.images:
            raise ValueError(f"image URL {url} generated twice")
        entry = ExpectedImage(url=url, outcome=outcome, reason=reason, pages=[], kind=kind, file=None,
                              text=text, content_type=content_type, **extra)
        if data is not None:
            entry.file = self.write(url, data)
            entry.bytes = len(data)
            entry.sha256 = hashlib.sha256(data).hexdigest()
            try:
                with Image.open(io.BytesIO(data)) as probe:
                    entry.format, entry.mode = probe.format, probe.mode
                    entry.width, entry.height = probe.size
            except Exception:  # not an image, or one Pillow refuses: the header fields stay as given
                pass
            if entry.content_type is None:
                entry.content_type = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif"}.get(
                    entry.format or "", "application/octet-stream")
        self.images[url] = entry
        return entry

    # pixels -----------------------------------------------------------------------------
    def new_text(self, kind: str) -> list[str]:
        while True:  # unique strings per image, so OCR assertions point at exactly one image
            lines = _text_lines(kind, self.rng)
            if tuple(lines) not in self.used_texts:
                self.used_texts.add(tuple(lines))
                return lines

    def size(self, lo: int = 360, hi: int = 1200) -> tuple[int, int]:
        width = self.rng.randint(lo, hi)
        height = max(lo, min(hi, int(width / self.rng.uniform(0.7, 1.7))))
        return width, height

    def distinct(self, img: Image.Image) -> bool:
        """Keep only pictures perceptually far from every kept one, so that an ideal crawler's
        near-duplicate check can never confuse two different fixture images."""
        fingerprint = perceptual_hash(img)
        if any(fingerprint - seen < DISTINCT_MIN_PHASH_DISTANCE for seen in self.fingerprints):
            return False
        self.fingerprints.append(fingerprint)
        return True

    def informative(self, img: Image.Image) -> bool:
        """A photo stand-in curation must keep: its detail box and edges at least twice curation's
        low-information thresholds (measured as curation measures them, like `distinct` uses the crawler's
        own pHash), so a seed cannot draw a colour field with its shapes off the canvas."""
        from tuwen.curate.filters import CurationConfig, analysis_copy, information

        bgr = analysis_copy(np.asarray(img)[..., ::-1].copy())
        config = CurationConfig()
        info = information(bgr, np.asarray(img.convert("L").resize(bgr.shape[1::-1])), config.content_tolerance)
        return (info["content_share"] >= 2 * config.min_content_share
                and info["edge_density"] >= 2 * config.min_edge_density)

    def text_picture(self, kind: str, size: tuple[int, int] | None = None, fmt: str = "JPEG",
                     ) -> tuple[Image.Image, list[str]]:
        while True:
            lines = self.new_text(kind)
            width, height = size or self.size()
            # PNG keeps grain as is and would grow past a megabyte, so PNG text images stay clean.
            img = _text_image(self.nrng, lines, width, height, noise=10 if fmt == "JPEG" else 0)
            if self.distinct(img):
                return img, lines

    def text_image(self, url: str, kind: str, size: tuple[int, int] | None = None, **extra: Any,
                   ) -> ExpectedImage:
        fmt = "PNG" if url.endswith(".png") else "JPEG"
        img, lines = self.text_picture(kind, size, fmt)
        return self.add_image(url, _encode(img, fmt), text=lines, kind="text",
                              outcome=extra.pop("outcome", "accepted"), reason=extra.pop("reason", None), **extra)

    def photo_image(self, url: str, size: tuple[int, int] | None = None, **extra: Any) -> ExpectedImage:
        fmt = "PNG" if url.endswith(".png") else "JPEG"
        while True:
            width, height = size or self.size()
            img = _photo_image(self.nrng, width, height, noise=14 if fmt == "JPEG" else 0)
            if self.informative(img) and self.distinct(img):
                break
        return self.add_image(url, _encode(img, fmt), kind="photo", outcome=extra.pop("outcome", "accepted"),
                              reason=extra.pop("reason", None), **extra)


def _figure(url: str, alt: str, caption: str, how: str = "img", srcset: str = "", placeholder: bool = False,
            ) -> str:
    alt_q, url_q = html.escape(alt), html.escape(url)
    if how == "img":
        tag = f'<img src="{url_q}" alt="{alt_q}">'
    elif how in ("data-src", "data-original"):
        src = ' src="data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"' if placeholder else ""
        tag = f'<img class="lazy"{src} {how}="{url_q}" alt="{alt_q}">'
    elif how == "srcset":
        tag = f'<img src="{url_q}" srcset="{html.escape(srcset)}" sizes="(max-width: 800px) 100vw, 800px" alt="{alt_q}">'
    elif how == "picture":
        tag = (f'<picture><source type="image/jpeg" srcset="{html.escape(srcset)}">'
               f'<img src="{url_q}" alt="{alt_q}"></picture>')
    else:
        raise ValueError(how)
    return f"<figure>{tag}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _nav_html() -> str:
    links = ['<a href="/index.html">首页</a>']
    links += [f'<a href="/{key}/index.html">{name}</a>' for key, (name, _) in SECTIONS.items()]
    links.append('<a href="/about.html">关于我们</a>')
    return "<nav>" + " | ".join(links) + "</nav>"


def _render_page(page: _Page, logo: str) -> bytes:
    og = f'<meta property="og:image" content="{html.escape(page.og_image)}">\n' if page.og_image else ""
    body = "\n".join(f"<p>{html.escape(p)}</p>" for p in page.intro)
    links = "".join(f'<li><a href="{html.escape(href)}">{html.escape(label)}</a></li>' for href, label in page.links)
    doc = f"""<!DOCTYPE html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<title>{html.escape(page.title)} - 城市生活网</title>
<meta name="description" content="{html.escape(page.intro[0] if page.intro else page.title)}">
{og}{page.head}</head>
<body>
<header><a href="/index.html"><img src="{logo}" alt="城市生活网" width="64" height="64"></a>{_nav_html()}</header>
<main>
<h1>{html.escape(page.title)}</h1>
{body}
{chr(10).join(page.blocks)}
<ul class="links">{links}</ul>
</main>
<footer><p>城市生活网 版权所有 · 本站内容仅供测试</p></footer>
</body>
</html>
"""
    return doc.encode("utf-8")


def _near_duplicate_variants(original_file: Path) -> dict[str, tuple[bytes, int]] | None:
    """Re-encoded, 90%-resized and lightly cropped copies with their phash distance to the original,
    or None when one of them drifts further than NEAR_DUPLICATE_MAX_PHASH_DISTANCE. The distances are
    the crawler's own: its pHash of each file's bytes, decoded as it decodes them."""
    original = original_file.read_bytes()
    with Image.open(io.BytesIO(original)) as opened:
        src = opened.convert("RGB")
    w, h = src.size
    dx, dy = int(w * NEAR_DUPLICATE_CROP), int(h * NEAR_DUPLICATE_CROP)
    encoded = {
        "requality": _encode(src, "JPEG", quality=55),
        "resize90": _encode(src.resize((int(w * 0.9), int(h * 0.9)), Image.Resampling.LANCZOS), "JPEG"),
        "crop2": _encode(src.crop((dx, dy, w - dx, h - dy)), "JPEG"),
    }
    reference = phash_of_bytes(original)
    variants = {}
    for name, data in encoded.items():
        distance = hamming64(phash_of_bytes(data), reference)
        if distance > NEAR_DUPLICATE_MAX_PHASH_DISTANCE:
            return None
        variants[name] = (data, distance)
    return variants


# The standard profile: a city news site. Its content is laid out in the order below; the order is part
# of the site, since every choice draws from the builder's seeded generators (same seed, same bytes).


@dataclass
class _Standard:
    """The standard site while it is built: its articles and the rule that places an image on a page."""

    b: _SiteBuilder
    articles: dict[str, list[_Page]]  # section -> its six articles
    ordinary: list[ExpectedImage] = field(default_factory=list)

    @property
    def all_articles(self) -> list[_Page]:
        return [a for sec in SECTIONS for a in self.articles[sec]]

    def article(self, index: int) -> _Page:
        articles = self.all_articles
        return articles[index % len(articles)]

    def section_kind(self, page: _Page) -> str:
        return self.b.rng.choice(SECTION_TEXT_KINDS[page.section or "news"])

    def place(self, page: _Page, entry: ExpectedImage, how: str = "img", **fig: Any) -> None:
        rng = self.b.rng
        entry.pages.append(PageRef(page.path, how))
        alt = (entry.text[0] if entry.text else rng.choice(["街景", "风景照片", "现场图片", "实拍图"]))
        caption = _fill(rng.choice(SENTENCES[page.section or "news"]), rng)
        page.blocks.append(_figure(fig.pop("shown_src", entry.url), alt, caption, how, **fig))


def _standard_articles(b: _SiteBuilder) -> _Standard:
    """Six articles per section, each with a seeded title and three intro sentences."""
    rng = b.rng
    articles: dict[str, list[_Page]] = {}
    for sec in SECTIONS:
        articles[sec] = []
        for n in range(1, 7):
            title = _fill(rng.choice(TITLES[sec]), rng)
            intro = [_fill(s, rng) for s in rng.sample(SENTENCES[sec], 3)]
            articles[sec].append(_Page(f"/{sec}/{n}.html", title, sec, intro))
    return _Standard(b, articles)


def _ordinary_images(s: _Standard) -> None:
    """120 text images and 20 photos dealt over the articles; a few shown on a second page too."""
    b = s.b
    for i in range(140):
        page = s.article(i)
        ext = ".png" if b.rng.random() < 0.2 else ".jpg"
        if i % 7 == 3:
            entry = b.photo_image(f"/img/{page.section}/photo-{i:03d}{ext}")
        else:
            entry = b.text_image(f"/img/{page.section}/{i:03d}{ext}", s.section_kind(page))
        s.place(page, entry)
        s.ordinary.append(entry)
    for i in range(5, 30, 6):  # one URL, two mentions
        s.place(s.article(i + 11), s.ordinary[i])


def _lazy_and_responsive_images(s: _Standard) -> None:
    """A MIN_SIDE boundary case, lazy loading, srcset and <picture>: where real pages hide images."""
    b, rng = s.b, s.b.rng
    s.place(s.article(1), b.text_image("/img/banner/slim-480x224.jpg", "road", size=(480, MIN_SIDE)))
    for k in range(6):
        how = "data-src" if k < 3 else "data-original"
        page = s.article(k * 5 + 2)
        url = f"/img/lazy/{k + 1}.jpg"
        entry = b.text_image(url, s.section_kind(page)) if k % 2 == 0 else b.photo_image(url)
        s.place(page, entry, how, placeholder=k in (0, 3))
    # srcset: three widths of one picture; only the largest is fetched.
    for g in range(3):
        page = s.article(g * 9 + 4)
        big, lines = b.text_picture(s.section_kind(page), size=(1200, 800))
        widths = (480, 800, 1200)
        urls = [f"/img/srcset/g{g + 1}-{w}w.jpg" for w in widths]
        for w, url in zip(widths, urls, strict=True):
            pic = big if w == 1200 else big.resize((w, w * 2 // 3), Image.Resampling.LANCZOS)
            if w == 1200:
                b.add_image(url, _encode(pic, "JPEG"), outcome="accepted", reason=None, kind="text", text=lines,
                            variant=f"{w}w")
            else:
                b.add_image(url, _encode(pic, "JPEG"), outcome="not_fetched", reason="srcset_smaller_variant",
                            kind="variant", text=lines, variant=f"{w}w", duplicate_of=urls[-1])
        srcset = ", ".join(f"{u} {w}w" for u, w in zip(urls, widths, strict=True))
        fallback = urls[0] if g == 0 else urls[1]
        for url in urls:
            b.images[url].pages.append(PageRef(page.path, "srcset"))
        page.blocks.append(_figure(fallback, lines[0], _fill(rng.choice(SENTENCES[page.section or "news"]), rng),
                                   "srcset", srcset=srcset))
    # <picture><source srcset>: the source's largest candidate is taken, the <img> fallback is not.
    for g in range(2):
        page = s.article(g * 13 + 7)
        big, lines = b.text_picture(s.section_kind(page), size=(1280, 720))
        small_url, big_url = f"/img/picture/p{g + 1}-640w.jpg", f"/img/picture/p{g + 1}-1280w.jpg"
        b.add_image(big_url, _encode(big, "JPEG"), outcome="accepted", reason=None, kind="text", text=lines,
                    variant="1280w")
        b.add_image(small_url, _encode(big.resize((640, 360), Image.Resampling.LANCZOS), "JPEG"),
                    outcome="not_fetched", reason="srcset_smaller_variant", kind="variant", text=lines,
                    variant="640w", duplicate_of=big_url)
        for url in (big_url, small_url):
            b.images[url].pages.append(PageRef(page.path, "picture"))
        page.blocks.append(_figure(small_url, lines[0], lines[-1], "picture",
                                   srcset=f"{small_url} 640w, {big_url} 1280w"))


def _names_modes_and_serving(s: _Standard) -> None:
    """Raw Chinese file names, grayscale and transparent-palette images, a redirect, a lying Content-Type."""
    b = s.b
    for k, url in enumerate(["/图片/菜单.jpg", "/图片/海报.png", "/商品/保温杯-特价.jpg"]):
        s.place(s.article(k * 7 + 3), b.text_image(url, ["menu", "poster", "price"][k]))
    # Kept, converted to RGB downstream.
    for k in range(2):
        img, lines = b.text_picture("notice")
        entry = b.add_image(f"/img/gray/{k + 1}.jpg", _encode(img.convert("L"), "JPEG"), outcome="accepted",
                            reason=None, kind="text", text=lines)
        s.place(s.article(k * 11 + 6), entry)
        img, lines = b.text_picture("sign", fmt="PNG")
        pal = img.quantize(colors=64, method=Image.Quantize.FASTOCTREE)
        corner = pal.getpixel((0, 0))
        buf = io.BytesIO()
        pal.save(buf, "PNG", transparency=corner)
        entry = b.add_image(f"/img/palette/{k + 1}.png", buf.getvalue(), outcome="accepted", reason=None,
                            kind="text", text=lines)
        s.place(s.article(k * 11 + 8), entry)
    entry = b.photo_image("/img/redirected/photo.jpg")
    b.images.pop(entry.url)
    entry.url, entry.final_url = "/go/photo.jpg", "/img/redirected/photo.jpg"
    b.images[entry.url] = entry
    b.routes["/go/photo.jpg"] = {"status": 301, "location": "/img/redirected/photo.jpg"}
    s.place(s.article(9), entry)
    entry = b.photo_image("/download/photo-raw", content_type="application/octet-stream")
    b.routes["/download/photo-raw"] = {"content_type": "application/octet-stream"}
    s.place(s.article(21), entry)


def _duplicates(s: _Standard) -> None:
    """Exact duplicates (same bytes, another URL and page) and near duplicates of two JPEG originals."""
    b = s.b
    all_articles = s.all_articles
    for k, original in enumerate(s.ordinary[2:120:31]):
        ext = Path(original.url).suffix
        data = (b.www / (original.file or "")).read_bytes()
        dup = b.add_image(f"/uploads/2024/{k + 1:02d}/copy-{k + 1}{ext}", data, outcome="duplicate",
                          reason="duplicate", kind=original.kind, text=original.text, duplicate_of=original.url)
        origin_index = [a.path for a in all_articles].index(original.pages[0].page)
        s.place(s.article(origin_index + 8), dup)
    # Another quality, 90% size, 2% cropped per edge.
    duplicated = {e.duplicate_of for e in b.images.values() if e.duplicate_of}
    for k, wanted_kind in enumerate(["text", "photo"]):
        for original in (e for e in s.ordinary if e.url.endswith(".jpg") and e.kind == wanted_kind
                         and e.url not in duplicated):
            variants = _near_duplicate_variants(b.www / (original.file or ""))
            if variants:  # the first original whose variants stay within the promised margin
                break
        else:
            raise RuntimeError(f"no {wanted_kind} image gives near duplicates within the phash margin")
        for v, (name, (data, distance)) in enumerate(variants.items()):
            near = b.add_image(f"/img/similar/{k + 1}-{name}.jpg", data, outcome="near_duplicate",
                               reason="near_duplicate", kind=original.kind, text=original.text,
                               duplicate_of=original.url, variant=name, phash_distance=distance)
            s.place(s.article(k * 3 + v * 10 + 12), near)


def _served_as(b: _SiteBuilder, entry: ExpectedImage, route: dict[str, Any]) -> ExpectedImage:
    b.routes[entry.url] = route
    return entry


def _animated_gif(b: _SiteBuilder) -> bytes:
    frames = [_photo_image(b.nrng, 480, 360, 0).quantize(colors=64, method=Image.Quantize.FASTOCTREE)
              for _ in range(4)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    return buf.getvalue()


def _incompressible_png(b: _SiteBuilder) -> bytes:
    """~20 MB of noise pixels: over MAX_BYTES, yet only 6.8 MP."""
    noise = b.nrng.integers(0, 256, size=(2600, 2600, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise, "RGB").save(buf, "PNG", compress_level=0)  # noise does not compress anyway
    return buf.getvalue()


def _truncated_jpeg(b: _SiteBuilder) -> bytes:
    jpeg = _encode(_photo_image(b.nrng, 900, 600), "JPEG")
    return jpeg[: len(jpeg) // 2]


def _noai_poster(b: _SiteBuilder, number: int, tag: str) -> ExpectedImage:
    entry = b.text_image(f"/img/noai/{number}.jpg", "poster", outcome="rejected", reason="noai")
    return _served_as(b, entry, {"headers": {"X-Robots-Tag": tag}})


def _redirect_loop(b: _SiteBuilder) -> ExpectedImage:
    b.routes["/loop/a.jpg"] = {"status": 302, "location": "/loop/b.jpg"}
    b.routes["/loop/b.jpg"] = {"status": 302, "location": "/loop/a.jpg"}
    return b.add_image("/loop/a.jpg", None, outcome="rejected", reason="redirect_loop", kind="hard_case")


@dataclass(frozen=True)
class _Case:
    """One image an ideal crawler refuses, the articles (by index) that show it, and how it is made."""

    articles: tuple[int, ...]
    make: Callable[[_SiteBuilder], ExpectedImage]


def _hard(url: str, data: Callable[[_SiteBuilder], bytes | None], reason: str, outcome: str = "rejected",
          **extra: Any) -> Callable[[_SiteBuilder], ExpectedImage]:
    return lambda b: b.add_image(url, data(b), outcome=outcome, reason=reason, kind="hard_case", **extra)


# In site order; each case is made, then placed, before the next.
REFUSED_CASES: list[_Case] = [
    _Case((0, 6, 12, 18), lambda b: b.add_image("/img/icons/dot-11.png", _encode(_photo_image(b.nrng, 11, 11, 0), "PNG"),
                                                outcome="rejected", reason="too_small", kind="icon")),
    _Case((14,), lambda b: b.photo_image("/img/thumbs/thumb-400x200.jpg", size=(400, 200), outcome="rejected",
                                         reason="too_small")),
    _Case((15,), _hard("/img/broken/truncated.jpg", _truncated_jpeg, "corrupt", width=900, height=600,
                       format="JPEG")),
    _Case((16,), _hard("/img/missing/gone.jpg", lambda b: None, "http_404")),
    _Case((17,), _hard("/图片/已删除.jpg", lambda b: None, "http_404")),
    _Case((18,), lambda b: _served_as(b, _hard("/img/fake/banner.jpg", lambda b: _not_image_html("页面未找到"),
                                               "not_image", content_type="image/jpeg")(b),
                                      {"content_type": "image/jpeg"})),
    _Case((19,), lambda b: _served_as(b, _hard("/api/image/ad-42", lambda b: _not_image_html("广告位招租"),
                                               "not_image", content_type="image/png")(b),
                                      {"content_type": "image/png"})),
    _Case((20,), lambda b: _noai_poster(b, 1, "noai")),
    _Case((21,), lambda b: _noai_poster(b, 2, "noimageai")),
    _Case((22,), _redirect_loop),
    _Case((23,), _hard("/img/bomb/huge.png", lambda b: _bomb_png(20000, 20000), "decompression_bomb",
                       width=20000, height=20000, format="PNG", mode="1")),
    _Case((24,), _hard("/img/large/poster-20mb.png", _incompressible_png, "too_large_bytes")),
    _Case((25,), _hard("/img/large/panorama-34mp.jpg",
                       lambda b: _encode(_photo_image(b.nrng, 7200, 4800, noise=0), "JPEG", quality=80),
                       "too_many_pixels")),
    _Case((26,), _hard("/img/anim/banner.gif", _animated_gif, "animated")),
    _Case((27,), lambda b: b.text_image("/img/banner/strip-3000x250.jpg", "road", size=(3000, 250),
                                        outcome="rejected", reason="extreme_aspect")),
    # Never fetched: off-domain and robots-disallowed.
    _Case((28,), _hard("http://cdn.example.invalid/x.jpg", lambda b: None, "off_domain", outcome="not_fetched")),
    _Case((29,), _hard("https://img.example.invalid/banner/2.png", lambda b: None, "off_domain",
                       outcome="not_fetched")),
    _Case((2,), lambda b: b.text_image("/private/a.jpg", "notice", outcome="not_fetched",
                                       reason="robots_disallowed")),
    _Case((6,), lambda b: b.text_image("/private/b.png", "notice", outcome="not_fetched",
                                       reason="robots_disallowed")),
]


def _refused_images(s: _Standard) -> None:
    for case in REFUSED_CASES:
        entry = case.make(s.b)
        for index in case.articles:
            s.place(s.article(index), entry)


def _navigation_pages(s: _Standard) -> tuple[list[_Page], _Page]:
    """Section pages (og:image, article lists; articles 4-6 only on a second list page: depth 3), article
    links, the home page and about page; and the robots-disallowed members page."""
    b, rng = s.b, s.b.rng
    section_pages: list[_Page] = []
    extra_pages: list[_Page] = []
    for sec in SECTIONS:
        name, blurb = SECTIONS[sec]
        og = b.text_image(f"/img/og/{sec}.jpg", SECTION_TEXT_KINDS[sec][0], size=(1200, 630))
        page = _Page(f"/{sec}/index.html", name, sec, [blurb, _fill(rng.choice(SENTENCES[sec]), rng)])
        page.og_image = og.url
        og.pages.append(PageRef(page.path, "og"))
        page.links = [(a.path, a.title) for a in s.articles[sec][:3]] + [(f"/{sec}/list-2.html", "下一页")]
        more = _Page(f"/{sec}/list-2.html", f"{name}（第2页）", sec, [blurb])
        more.links = [(a.path, a.title) for a in s.articles[sec][3:]] + [(page.path, "上一页")]
        section_pages.append(page)
        extra_pages.append(more)
    for sec in SECTIONS:
        items = s.articles[sec]
        for n, article in enumerate(items):
            if n + 1 < len(items) and n != 2:  # article 3 does not link on, so 4-6 are reached via list-2
                article.links.append((items[n + 1].path, "下一篇：" + items[n + 1].title))
            article.links.append((f"/{sec}/index.html", "返回" + SECTIONS[sec][0]))
    index = _Page("/index.html", "城市生活网", None,
                  ["城市生活网汇集本地新闻、购物、旅游、美食和活动信息。", "每天更新，欢迎收藏。"])
    s.place(index, b.text_image("/img/home/hero.jpg", "poster", size=(1200, 500)))
    for article in (s.articles["news"][0], s.articles["food"][1]):
        s.place(index, next(e for e in s.ordinary if e.pages[0].page == article.path))
    index.links = [(a.path, a.title) for a in (s.articles["news"][0], s.articles["travel"][0])]
    index.links.append(("/private/members.html", "会员中心"))
    about = _Page("/about.html", "关于我们", None, ["城市生活网是一个用于测试爬虫的示例站点。", "联系邮箱：contact@example.invalid"])
    private = _Page("/private/members.html", "会员中心", None, ["本页面仅对登录会员开放。"])
    return [index, *section_pages, *extra_pages, *s.all_articles, about], private


# Images an ideal crawler accepts and curation keeps from synthesis (issue 18), in site order: a QR-code
# poster, a "scan to follow" card, a placeholder with a tiny icon, a gradient placeholder, a logo and a flat
# banner strip. Made after every other image, so the rest of the site keeps its bytes.


def _qr_module_image(payload: str, module: int) -> Image.Image:
    import cv2

    code = cv2.QRCodeEncoder.create().encode(payload)
    return Image.fromarray(code).resize((code.shape[1] * module, code.shape[0] * module), Image.Resampling.NEAREST)


def _qr_poster(b: _SiteBuilder) -> Image.Image:
    img = Image.new("RGB", (600, 720), (250, 250, 250))
    code = _qr_module_image("https://example.invalid/wx/follow?from=poster", 12).convert("RGB")
    img.paste(code, ((600 - code.width) // 2, 150))
    ImageDraw.Draw(img).text((150, 40), "扫码关注", font=load_cjk_font(72), fill=(20, 20, 20))
    return img


def _qr_card(b: _SiteBuilder) -> Image.Image:
    img = Image.new("RGB", (720, 480), (196, 32, 40))
    code = _qr_module_image("https://example.invalid/shop/coupon/2024", 9).convert("RGB")
    img.paste(code, (360, (480 - code.height) // 2))
    draw = ImageDraw.Draw(img)
    draw.text((40, 150), "领取", font=load_cjk_font(80), fill=(255, 236, 160))
    draw.text((40, 260), "优惠券", font=load_cjk_font(80), fill=(255, 236, 160))
    return img


def _tiny_icon_placeholder(b: _SiteBuilder) -> Image.Image:
    img = Image.new("RGB", (1000, 750), (238, 238, 238))
    draw = ImageDraw.Draw(img)
    draw.rectangle((480, 355, 520, 395), outline=(170, 170, 170), width=3)
    draw.polygon([(486, 389), (498, 372), (506, 382), (512, 376), (516, 389)], fill=(170, 170, 170))
    return img


def _gradient_placeholder(b: _SiteBuilder) -> Image.Image:
    ramp = np.linspace(70, 230, 800, dtype=np.float64)
    rgb = np.stack([np.tile(ramp, (600, 1)), np.tile(ramp[::-1], (600, 1)) * 0.6 + 60,
                    np.full((600, 800), 200.0)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _flat_logo(b: _SiteBuilder) -> Image.Image:
    img = Image.new("RGB", (420, 420), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.ellipse((40, 40, 380, 380), fill=(210, 40, 50))
    draw.text((120, 170), "福满", font=load_cjk_font(88), fill=(255, 255, 255))
    return img


def _banner_strip(b: _SiteBuilder) -> Image.Image:
    img = Image.new("RGB", (1200, 260), (30, 90, 200))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 210, 1200, 260), fill=(250, 200, 40))
    draw.text((420, 55), "新品上市", font=load_cjk_font(110), fill=(255, 255, 255))
    return img


CURATED_AWAY_CASES: list[tuple[str, Callable[[_SiteBuilder], Image.Image], str, int]] = [
    ("/img/promo/qr-follow.png", _qr_poster, "qr_code", 3),
    ("/img/promo/qr-coupon.png", _qr_card, "qr_code", 10),
    ("/img/placeholder/no-image.png", _tiny_icon_placeholder, "low_information", 13),
    ("/img/placeholder/loading.jpg", _gradient_placeholder, "low_information", 19),
    ("/img/brand/logo-420.png", _flat_logo, "simple_graphic", 24),
    ("/img/banner/new-arrivals-1200x260.png", _banner_strip, "simple_graphic", 29),
]


def _curated_away_images(s: _Standard) -> None:
    b = s.b
    for url, make, reason, article in CURATED_AWAY_CASES:
        img = make(b)
        if not b.distinct(img):  # a near duplicate of another fixture image would change the crawl's counts
            raise RuntimeError(f"{url} is perceptually too close to another fixture image")
        fmt = "PNG" if url.endswith(".png") else "JPEG"
        entry = b.add_image(url, _encode(img, fmt), outcome="accepted", reason=None, kind="curated_away",
                            curation="rejected", curation_reason=reason)
        s.place(s.article(article), entry)


def _generate_standard(b: _SiteBuilder) -> SiteManifest:
    s = _standard_articles(b)
    # First: the seeded pictures below are drawn until they are distinct, so they step around these
    # fixed ones whatever the seed (drawn last, a seed could give a picture too close to one of them).
    _curated_away_images(s)
    _ordinary_images(s)
    _lazy_and_responsive_images(s)
    _names_modes_and_serving(s)
    _duplicates(s)
    logo = b.add_image("/img/icons/logo-64.png", _encode(_photo_image(b.nrng, 64, 64, 0), "PNG"),
                       outcome="rejected", reason="too_small", kind="icon")
    _refused_images(s)
    pages, private = _navigation_pages(s)
    for page in pages:
        logo.pages.append(PageRef(page.path, "img"))
        b.write(page.path, _render_page(page, logo.url))
    b.write(private.path, _render_page(private, logo.url))
    robots = "User-agent: *\nDisallow: /private/\n"
    b.write("/robots.txt", robots.encode())
    return SiteManifest(
        seed=b.seed, profile=b.profile,
        pages=[{"path": p.path, "title": p.title, "depth": d}
               for p, d in zip(pages, _link_depths(b.www, [p.path for p in pages]), strict=True)],
        disallowed_pages=[private.path], images=b.images, routes=b.routes, limits=_limits(), robots_txt=robots,
    )


# The hostile profile: pages an attacker or a careless site would serve, each with the verdict an ideal
# crawler reaches. Kept apart from the standard site, whose counts many tests and `make demo` assert.
# A case is a page under /hostile/ linked from the home page; add one by appending to HOSTILE_CASES.

HOSTILE_MAX_DEPTH = 6  # the sites entry the hostile crawl uses (HostileSite.site_entry)
HOSTILE_GALLERY_IMAGES = 2500  # in one <div>, more than a page may give (tuwen_crawler.extract.MAX_CANDIDATES_PER_PAGE)
HOSTILE_PAGE_CAP = 500
HOSTILE_DEEP_CHAIN = HOSTILE_MAX_DEPTH + 3  # pages past max_depth exist but are never fetched
HOSTILE_NESTING = 2000  # <div> levels around one image


@dataclass(frozen=True)
class HostileCase:
    """One hostile page: `build` fills it (adding each image it shows, with its verdict, to the builder)
    and returns any further pages it needs written."""

    name: str  # the page is /hostile/{name}.html
    title: str
    build: Callable[[_SiteBuilder, _Page], list[_Page]]


def _hostile_ok_image(b: _SiteBuilder, page: _Page, name: str) -> None:
    """An ordinary image beside the tricks: the crawl must store it whatever the rest of the page does."""
    entry = b.photo_image(f"/hostile/img/{name}.jpg", size=(400, 300))
    entry.pages.append(PageRef(page.path, "img"))
    page.blocks.append(_figure(entry.url, "正常图片", "这张图片应当被保存"))


def _refused_url(b: _SiteBuilder, page: _Page, url: str, reason: str, html_tag: str | None = None) -> None:
    entry = b.add_image(url, None, outcome="not_fetched", reason=reason, kind="hard_case")
    entry.pages.append(PageRef(page.path, "img"))
    page.blocks.append(html_tag or f'<p><img src="{html.escape(url)}" alt="陷阱"></p>')


SCHEME_LINKS = ["file:///etc/passwd", "file://127.0.0.1/etc/passwd", "ftp://127.0.0.1/pub/index.html",
                "data:text/html;base64,PGgxPmhpPC9oMT4=", "javascript:alert(document.cookie)", "s3://bucket/key.html"]
SCHEME_IMAGES = ["file:///etc/hostname", "file://127.0.0.1/etc/shadow", "ftp://127.0.0.1/pub/a.jpg",
                 "javascript:void(0)", "s3://bucket/a.jpg"]
SCHEME_REDIRECTS = {"/hostile/go/to-file.jpg": "file:///etc/passwd", "/hostile/go/to-ftp.jpg": "ftp://127.0.0.1/a.jpg",
                    "/hostile/go/to-data.jpg": "data:image/png;base64,iVBORw0KGgo="}


def _scheme_tricks(b: _SiteBuilder, page: _Page) -> list[_Page]:
    """Links, images and redirects to file:, ftp:, data:, javascript: and s3: URLs: none is ever fetched."""
    page.links += [(url, "本地文件") for url in SCHEME_LINKS]
    for url in SCHEME_IMAGES:
        _refused_url(b, page, url, "unsupported_scheme")
    for url, target in SCHEME_REDIRECTS.items():
        b.routes[url] = {"status": 302, "location": target}
        _refused_url(b, page, url, "unsupported_scheme")
    page.blocks.append('<p><img src="data:image/png;base64,iVBORw0KGgo=" alt="占位"></p>')  # a placeholder: no row
    _hostile_ok_image(b, page, "schemes-ok")
    return []


def _rebinding_name(b: _SiteBuilder, page: _Page) -> list[_Page]:
    """A name inside allowed_domains that resolves to a private address (localhost -> 127.0.0.1, as a
    rebinding answer would): the resolver the connection uses refuses it."""
    _refused_url(b, page, "http://localhost/hostile/img/rebind.jpg", "private_address")
    _refused_url(b, page, "http://localhost:8080/admin/avatar.png", "private_address")
    _hostile_ok_image(b, page, "rebinding-ok")
    return []


def _gallery(b: _SiteBuilder, page: _Page) -> list[_Page]:
    """Thousands of images in one <div> on a noai page: extraction stays linear, none is fetched, and the
    candidates past the page cap are only counted (the crawl's page counts), so they have no entry here."""
    page.head = '<meta name="robots" content="noai">'
    tags = []
    for i in range(HOSTILE_GALLERY_IMAGES):
        url = f"/hostile/gallery/{i:05d}.jpg"
        if i < HOSTILE_PAGE_CAP - 1:  # the page's logo is its first candidate
            entry = b.add_image(url, None, outcome="not_fetched", reason="page_noai", kind="hard_case")
            entry.pages.append(PageRef(page.path, "img"))
        tags.append(f'<span>第{i}张</span><img src="{url}" alt="图{i}">')
    page.blocks.append("<div class=\"gallery\">" + "".join(tags) + "</div>")
    return []


def _deep_chain(b: _SiteBuilder, page: _Page) -> list[_Page]:
    """A chain of pages deeper than max_depth (the case page is depth 1): pages past it are never fetched,
    so only the images of the pages within it are mentioned."""
    chain = [_Page(f"/hostile/deep/{d}.html", f"深层页面 {d}", None, [f"第{d}层"])
             for d in range(2, HOSTILE_DEEP_CHAIN + 1)]
    page.links.append((chain[0].path, chain[0].title))
    for here, after in zip(chain, chain[1:], strict=False):
        here.links.append((after.path, after.title))
    for depth, deep in enumerate(chain, start=2):
        if depth <= HOSTILE_MAX_DEPTH:
            _hostile_ok_image(b, deep, f"deep-{depth}")
    return chain


def _deep_nesting(b: _SiteBuilder, page: _Page) -> list[_Page]:
    """One image inside thousands of nested <div>s."""
    entry = b.photo_image("/hostile/img/nested.jpg", size=(400, 300))
    entry.pages.append(PageRef(page.path, "img"))
    page.blocks.append("<div>" * HOSTILE_NESTING + f'<img src="{entry.url}" alt="嵌套">' + "</div>" * HOSTILE_NESTING)
    return []


def _hostile_image_files(b: _SiteBuilder, page: _Page) -> list[_Page]:
    """Scan bombs, memory bombs, truncated files and lying headers of every web format
    (tuwen.local.hostile_images), each refused with its reason."""
    for image in hostile_images():
        entry = b.add_image(f"/hostile/img/bad/{image.name}.{image.ext}", image.data, outcome=image.outcome,
                            reason=image.reason, kind="hard_case", content_type=image.content_type)
        entry.pages.append(PageRef(page.path, "img"))
        page.blocks.append(_figure(entry.url, "恶意图片", image.what))
    _hostile_ok_image(b, page, "images-ok")
    return []


HOSTILE_CASES: list[HostileCase] = [
    HostileCase("schemes", "协议陷阱", _scheme_tricks),
    HostileCase("rebinding", "域名重绑定", _rebinding_name),
    HostileCase("gallery", "超大图库", _gallery),
    HostileCase("deep", "深层链接", _deep_chain),
    HostileCase("nested", "深层嵌套", _deep_nesting),
    HostileCase("images", "恶意图片", _hostile_image_files),
]


def hostile_site_entry(name: str, base_url: str) -> dict[str, Any]:
    """The sites-file entry the hostile crawl uses: private addresses refused except the fixture's own."""
    host = urllib.parse.urlsplit(base_url).hostname or "127.0.0.1"
    return {
        "name": name, "start_urls": [f"{base_url}/index.html"], "allowed_domains": [host, "localhost"],
        "max_depth": HOSTILE_MAX_DEPTH, "max_pages": 100, "allow_private_addresses": False,
        "allow_private_hosts": [host],
        "politeness": {"download_delay": 0, "concurrency_per_domain": 16, "autothrottle_target": 16.0},
    }


def _generate_hostile(b: _SiteBuilder) -> SiteManifest:
    index = _Page("/index.html", "恶意站点样本", None, ["这些页面模拟真实网站可能发来的恶意内容。"])
    pages: list[_Page] = [index]
    for case in HOSTILE_CASES:
        page = _Page(f"/hostile/{case.name}.html", case.title, None, [case.title])
        index.links.append((page.path, case.title))
        pages += [page, *case.build(b, page)]
    logo = b.add_image("/img/icons/logo-64.png", _encode(_photo_image(b.nrng, 64, 64, 0), "PNG"),
                       outcome="rejected", reason="too_small", kind="icon")
    for page in pages:
        b.write(page.path, _render_page(page, logo.url))
    robots = "User-agent: *\nDisallow: /private/\n"
    b.write("/robots.txt", robots.encode())
    depths = _link_depths(b.www, [p.path for p in pages])
    reached = [(p, d) for p, d in zip(pages, depths, strict=True) if d <= HOSTILE_MAX_DEPTH]
    logo.pages = [PageRef(p.path, "img") for p, _ in reached]
    return SiteManifest(seed=b.seed, profile=b.profile,
                        pages=[{"path": p.path, "title": p.title, "depth": d} for p, d in reached],
                        disallowed_pages=[], images=b.images, routes=b.routes,
                        limits={**_limits(), "max_depth": HOSTILE_MAX_DEPTH, "page_image_cap": HOSTILE_PAGE_CAP},
                        robots_txt=robots)


def _limits(distinct_min_phash_distance: int = DISTINCT_MIN_PHASH_DISTANCE) -> dict[str, Any]:
    return {"min_side": MIN_SIDE, "max_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS,
            "max_aspect_ratio": MAX_ASPECT_RATIO, "decompression_bomb_pixels": DECOMPRESSION_BOMB_PIXELS,
            "phash_distinct_min_distance": distinct_min_phash_distance,
            "phash_near_duplicate_max_distance": NEAR_DUPLICATE_MAX_PHASH_DISTANCE}


def _bench_image(seed: int, index: int, attempt: int = 0) -> tuple[bytes, np.ndarray]:
    """One bench photo (~170 KB JPEG) and its phash bits; seeded by (seed, index, attempt) alone so
    worker processes can make them in any order."""
    nrng = np.random.default_rng([seed, index, attempt])
    width = int(nrng.integers(700, 1000))
    img = _photo_image(nrng, width, width * 3 // 4, noise=24)
    return _encode(img, "JPEG", quality=88), perceptual_hash(img).hash.flatten()


def _bench_images(seed: int, count: int) -> Iterator[bytes]:
    """`count` bench JPEGs, made in worker processes, each perceptually distinct from the others."""
    kept_bits = np.zeros((count, 64), dtype=bool)
    workers = max(1, min(4, os.cpu_count() or 1))
    with ProcessPoolExecutor(workers) as pool:
        made = pool.map(_bench_image, [seed] * count, range(count), chunksize=16)
        for index, (data, bits) in enumerate(made):
            attempt = 0
            # Rarely two random colour fields look alike; redraw (deterministically) until they do not.
            while index and (kept_bits[:index] != bits).sum(axis=1).min() < BENCH_DISTINCT_MIN_PHASH_DISTANCE:
                attempt += 1
                data, bits = _bench_image(seed, index, attempt)
            kept_bits[index] = bits
            yield data


def _generate_bench(b: _SiteBuilder, image_count: int, per_page: int = 50) -> SiteManifest:
    page_count = max(1, -(-image_count // per_page))
    pages: list[_Page] = []
    made = _bench_images(b.seed, image_count)
    for p in range(page_count):
        page = _Page(f"/gallery/{p + 1:04d}.html", f"图库第{p + 1}页", None, ["随手拍的城市照片。"])
        for i in range(p * per_page, min(image_count, (p + 1) * per_page)):
            entry = b.add_image(f"/gallery/img/{i + 1:06d}.jpg", next(made), outcome="accepted",
                                reason=None, kind="photo")
            entry.pages.append(PageRef(page.path, "img"))
            page.blocks.append(_figure(entry.url, f"照片{i + 1}", f"第{i + 1}张照片"))
        pages.append(page)
    index = _Page("/index.html", "城市图库", None, ["城市图库收录了大量街景照片。"])
    index.links = [(p.path, p.title) for p in pages]
    logo = b.add_image("/img/icons/logo-64.png", _encode(_photo_image(b.nrng, 64, 64, 0), "PNG"),
                       outcome="rejected", reason="too_small", kind="icon")
    all_pages = [index, *pages]
    for page in all_pages:
        logo.pages.append(PageRef(page.path, "img"))
        b.write(page.path, _render_page(page, logo.url))
    robots = "User-agent: *\nDisallow: /private/\n"
    b.write("/robots.txt", robots.encode())
    return SiteManifest(seed=b.seed, profile=b.profile,
                        pages=[{"path": p.path, "title": p.title, "depth": 0 if p is index else 1} for p in all_pages],
                        disallowed_pages=[], images=b.images, routes={},
                        limits=_limits(BENCH_DISTINCT_MIN_PHASH_DISTANCE), robots_txt=robots)


def generate_site(out_dir: Path, seed: int = 7, profile: str = "standard", images: int = 2000) -> SiteManifest:
    """Write the site under `out_dir/www` and its answers to `out_dir/manifest.json`.

    `images` is the bench profile's image count; the standard profile's content is fixed by the seed.
    An existing `www/` is replaced so a regeneration leaves no stale files behind.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    load_cjk_font(24)  # fail before writing anything when the font is missing
    out_dir = Path(out_dir)
    builder = _SiteBuilder(out_dir, seed, profile)
    if builder.www.exists():
        shutil.rmtree(builder.www)
    builder.www.mkdir(parents=True)
    if profile == "standard":
        manifest = _generate_standard(builder)
    elif profile == "hostile":
        manifest = _generate_hostile(builder)
    else:
        manifest = _generate_bench(builder, images)
    for image in manifest.images.values():
        if image.outcome == "accepted" and image.curation is None:
            image.curation = "curated"  # every ordinary accepted image passes the curation filters
    manifest.expected_counts = count_expected(manifest.images)
    (out_dir / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


# --------------------------------------------------------------------------------------------
# Link graph (used by the generator for page depths and by tests to check reachability)


def extract_links(document: str) -> list[str]:
    """Same-site <a href> targets of an HTML document, as root-relative paths."""
    from html.parser import HTMLParser

    class _Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.hrefs: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            href = dict(attrs).get("href")
            if tag == "a" and href and href.startswith("/"):
                self.hrefs.append(href)

    parser = _Links()
    parser.feed(document)
    return parser.hrefs


def _link_depths(www: Path, paths: list[str]) -> list[int]:
    depth = {"/index.html": 0}
    queue = ["/index.html"]
    while queue:
        current = queue.pop(0)
        file = www / urllib.parse.unquote(current).lstrip("/")
        if not file.is_file():
            continue
        for href in extract_links(file.read_text(encoding="utf-8")):
            if href not in depth:
                depth[href] = depth[current] + 1
                queue.append(href)
    missing = [p for p in paths if p not in depth]
    if missing:
        raise RuntimeError(f"pages not reachable from /index.html: {missing}")
    return [depth[p] for p in paths]


# --------------------------------------------------------------------------------------------
# Server


class FixtureRequestHandler(SimpleHTTPRequestHandler):
    """Serves www/ plus the manifest's routes: {"status": 301|302, "location": ...} redirects,
    {"content_type": ...} forced types and {"headers": {...}} extra headers."""

    server: FixtureSiteServer
    # Keep-alive, as real sites serve: under HTTP/1.0 every image cost the crawler a new connection.
    # Every response below carries a Content-Length (send_error and SimpleHTTPRequestHandler's own).
    protocol_version = "HTTP/1.1"

    def _route(self) -> dict[str, Any]:
        return self.server.routes.get(self._request_path(), {})

    def _request_path(self) -> str:
        raw = urllib.parse.urlsplit(self.path).path
        # http.server decodes the request line as Latin-1: undo that for clients sending raw UTF-8.
        with suppress(UnicodeEncodeError, UnicodeDecodeError):
            raw = raw.encode("latin-1").decode("utf-8")
        return urllib.parse.unquote(raw, encoding="utf-8", errors="replace")

    def translate_path(self, path: str) -> str:
        return super().translate_path(urllib.parse.quote(self._request_path()))

    def send_head(self):  # http.server.SimpleHTTPRequestHandler.send_head is untyped
        route = self._route()
        if "location" in route:
            self.send_response(int(route.get("status", 302)))
            self.send_header("Location", route["location"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        local = Path(self.translate_path(self.path))
        if local.is_dir() and not (local / "index.html").is_file():
            self.send_error(404, "Not Found")  # no directory listings
            return None
        return super().send_head()

    def guess_type(self, path: str | Any) -> str:
        forced = self._route().get("content_type")
        if forced:
            return forced
        guessed = super().guess_type(path)
        return "text/html; charset=utf-8" if guessed == "text/html" else guessed

    def end_headers(self) -> None:
        for name, value in self._route().get("headers", {}).items():
            self.send_header(name, value)
        super().end_headers()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.server.record(self.command, self._request_path(), int(code) if str(code).isdigit() else 0)
        if self.server.verbose:
            super().log_request(code, size)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


class FixtureSiteServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, site_dir: Path, host: str, port: int, request_log: Path | None, verbose: bool) -> None:
        site_dir = Path(site_dir)
        manifest = json.loads((site_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        self.routes: dict[str, dict[str, Any]] = manifest.get("routes", {})
        self.web_root = site_dir / manifest.get("web_root", WEB_ROOT_NAME)
        self.request_log = request_log
        self.verbose = verbose
        self._log_lock = threading.Lock()
        handler = lambda *a, **kw: FixtureRequestHandler(*a, directory=str(self.web_root), **kw)  # noqa: E731
        super().__init__((host, port), handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def record(self, method: str, path: str, status: int) -> None:
        """Append one JSON line per request when a request log is set (tests read which URLs were fetched)."""
        if self.request_log is None:
            return
        line = json.dumps({"method": method, "path": path, "status": status}, ensure_ascii=False)
        with self._log_lock, open(self.request_log, "a", encoding="utf-8") as log:
            log.write(line + "\n")

    @contextmanager
    def running(self) -> Iterator[FixtureSiteServer]:
        """Serve from a background thread for the duration of the block."""
        thread = threading.Thread(target=self.serve_forever, name="fixture-site", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.shutdown()
            thread.join(timeout=5)
            self.server_close()


def serve_site(site_dir: Path, host: str = "127.0.0.1", port: int = 0, request_log: Path | None = None,
               verbose: bool = False) -> FixtureSiteServer:
    """A bound (not yet serving) server for a generated site; port 0 picks a free port.

    Call `serve_forever()` on it, or use `with serve_site(d).running() as server:`.
    """
    return FixtureSiteServer(Path(site_dir), host, port, request_log, verbose)


def read_request_log(request_log: Path) -> list[dict[str, Any]]:
    if not Path(request_log).exists():
        return []
    return [json.loads(line) for line in Path(request_log).read_text(encoding="utf-8").splitlines() if line]


class FixtureSiteProcess:
    """Runs `python -m tuwen.local.fixture_site serve` in a subprocess on a free port.

        with FixtureSiteProcess(site_dir) as site:
            crawl(site.url + "/index.html")
    """

    def __init__(self, site_dir: Path, request_log: Path | None = None, startup_timeout_s: float = 20.0) -> None:
        self.site_dir = Path(site_dir)
        self.request_log = request_log
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> FixtureSiteProcess:
        command = [sys.executable, "-m", "tuwen.local.fixture_site", "serve", "--dir", str(self.site_dir), "--port", "0"]
        if self.request_log is not None:
            command += ["--request-log", str(self.request_log)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert self.process.stdout is not None
            # The child binds port 0 itself and prints its URL: no race for a "free" port.
            first_line = self.process.stdout.readline().strip()
            if not first_line.startswith("http://"):
                raise RuntimeError(f"fixture site did not start (exit {self.process.poll()}): {first_line!r}")
            self.url = first_line.rstrip("/")
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            try:
                with urllib.request.urlopen(self.url + "/robots.txt", timeout=2) as response:
                    response.read()
                return
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fixture site at {self.url} did not answer in time") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuwen.local.fixture_site", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write a site and its manifest.json")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--profile", choices=PROFILES, default="standard")
    gen.add_argument("--images", type=int, default=2000, help="image count for the bench profile")
    serve = commands.add_parser("serve", help="serve a generated site on 127.0.0.1")
    serve.add_argument("--dir", type=Path, required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--request-log", type=Path, default=None, help="append one JSON line per request")
    serve.add_argument("--verbose", action="store_true", help="log every request on stderr")
    args = parser.parse_args(argv)

    if args.command == "generate":
        started = time.perf_counter()
        manifest = generate_site(args.out, seed=args.seed, profile=args.profile, images=args.images)
        counts = manifest.expected_counts
        print(f"wrote {manifest.page_count} pages and {counts['images_total']} image URLs to {args.out} "
              f"in {time.perf_counter() - started:.1f}s")
        print(json.dumps(counts["by_outcome"], ensure_ascii=False))
        return 0
    server = serve_site(args.dir, args.host, args.port, request_log=args.request_log, verbose=args.verbose)
    print(server.url + "/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
