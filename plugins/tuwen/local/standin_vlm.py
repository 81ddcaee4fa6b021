"""A stand-in for vLLM's OpenAI-compatible server, for tests and demos without a GPU.

This is a test double of the HTTP API that `vllm serve Qwen/Qwen2.5-VL-32B-Instruct` speaks. It is
not a model and never claims to be one: `/v1/models` lists it as owned by "tuwen-stand-in", and
every completion carries `system_fingerprint: "tuwen-stand-in"`. Its answers are Chinese (or
English) text assembled from templates, seeded by the SHA-256 of (image bytes, prompt text), and
grounded only in what is cheap to measure: size, orientation, dominant colours, brightness, and -
with `--ocr` - text recognised by RapidOCR.

What it copies from vLLM (checked against vllm/entrypoints/openai/engine/protocol.py):
- `GET /health` -> 200 with an empty body; `GET /v1/models` -> {"object": "list", "data": [...]};
- `POST /v1/chat/completions` with OpenAI content parts (text / image_url as a data URL or http(s)
  URL), extra vLLM fields (`mm_processor_kwargs`, `seed`, `top_k`, ...) accepted and ignored;
- errors as {"error": {"message", "type", "param", "code"}}: 400 BadRequestError for malformed
  requests, undecodable images and more than one image (vLLM's --limit-mm-per-prompt image=1),
  404 NotFoundError for an unknown model;
- usage counted the Qwen2.5-VL way for the image (one token per 28x28 patch after smart resize).
  Text is counted as one token per character, a deliberate over-estimate that keeps it cheap.

What it adds, for testing the client (stand-in only, under /stand-in/):
- fault injection: latency (fixed or log-normal with a heavy tail), HTTP 500/503/429 (+Retry-After),
  connection resets (RST, no response), hangs, truncated / malformed / refusal answers; chosen
  per request from rates, deterministically when a seed is set, or "fail the first N requests";
- counters (`GET /stand-in/stats`), including requests per image hash, so a test can assert that
  stored answers were not requested again.

Run it with `python -m tuwen.local.standin_vlm --port 8000`; from Python use `serve(...)` or, in tests and
benchmarks, the `StandinProcess` context manager that starts it as a subprocess on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import io
import json
import math
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from PIL import Image, UnidentifiedImageError

DEFAULT_MODEL = "tuwen-standin-vlm"
OWNED_BY = "tuwen-stand-in"
SYSTEM_FINGERPRINT = "tuwen-stand-in"
READY_LINE_PREFIX = "tuwen stand-in VLM (a test double of vLLM's API, not a model) listening on"

# Qwen2.5-VL turns each 28x28 pixel patch into one visual token; vLLM's defaults for its processor.
PATCH = 28
QWEN_MIN_PIXELS = 4 * PATCH * PATCH
QWEN_MAX_PIXELS = 16384 * PATCH * PATCH
MAX_MODEL_LEN = 32768

# Fault kinds in the fixed order in which rates are laid out on [0, 1): the order is part of what
# makes a seeded run reproducible, so new kinds go at the end.
HTTP_FAULTS = ("500", "503", "429")
FAULT_KINDS = (*HTTP_FAULTS, "reset", "timeout", "truncated", "malformed", "refusal")

IMAGE_FETCH_TIMEOUT_S = 10.0
MAX_IMAGE_BYTES = 32 * 1024 * 1024
FEATURE_CACHE_SIZE = 4096

TASK_MARKERS = {
    "conversation": (
        "设计一个你和一个询问这张照片的人之间的对话",
        "design a conversation between you and a person asking about this photo",
    ),
    "complex_reasoning": ("设计一个关于这张照片的问题", "design a question about this photo"),
    "detail": ("详细描述这张照片的场景", "describe the scene in this photo in detail"),
}

REFUSAL = {"zh": "抱歉，我无法查看这张图片。", "en": "Sorry, I can't view this image."}


# --------------------------------------------------------------------------------------------
# Fault configuration
# --------------------------------------------------------------------------------------------


class StandinConfigError(ValueError):
    """A latency, fault-rate or fault JSON setting is malformed; the message says which."""


@dataclass(frozen=True)
class LatencySpec:
    """How long a request takes before it is answered: fixed seconds, or log-normal (median, p99)."""

    kind: str = "fixed"
    seconds: float = 0.0
    median: float = 0.0
    p99: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> LatencySpec:
        """'fixed:1.0' or 'lognormal:MEDIAN,P99' (seconds)."""
        kind, _, args = spec.strip().partition(":")
        try:
            if kind == "fixed":
                seconds = float(args or 0)
                if seconds < 0:
                    raise ValueError
                return cls("fixed", seconds=seconds)
            if kind == "lognormal":
                median_s, p99_s = (float(a) for a in args.split(","))
                if not 0 < median_s <= p99_s:
                    raise ValueError
                return cls("lognormal", median=median_s, p99=p99_s)
        except ValueError:
            pass
        raise StandinConfigError(
            f"latency must be 'fixed:SECONDS' or 'lognormal:MEDIAN,P99' with 0 < MEDIAN <= P99, got {spec!r}"
        )

    def __str__(self) -> str:
        return (
            f"fixed:{self.seconds:g}" if self.kind == "fixed" else f"lognormal:{self.median:g},{self.p99:g}"
        )

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.seconds
        # p99 = median * exp(2.326 sigma): the 99th percentile of a normal is 2.326 sigma above its mean.
        sigma = math.log(self.p99 / self.median) / 2.3263478740408408
        return rng.lognormvariate(math.log(self.median), sigma)


def parse_fault_rates(spec: str | Mapping[str, float] | None) -> dict[str, float]:
    """'500=0.1,429=0.05' (or a mapping) -> {kind: probability}; kinds are FAULT_KINDS, sum <= 1."""
    if not spec:
        return {}
    items: list[tuple[str, Any]]
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for part in spec.split(","):
            kind, sep, value = part.partition("=")
            if not sep:
                raise StandinConfigError(f"fault rate {part!r} is not KIND=PROBABILITY")
            items.append((kind.strip(), value.strip()))
    rates: dict[str, float] = {}
    for kind, value in items:
        kind = str(kind)
        if kind not in FAULT_KINDS:
            raise StandinConfigError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        try:
            rate = float(value)
        except (TypeError, ValueError):
            raise StandinConfigError(f"fault rate for {kind!r} must be a number, got {value!r}") from None
        if not 0.0 <= rate <= 1.0:
            raise StandinConfigError(f"fault rate for {kind!r} must be in [0, 1], got {rate}")
        if rate:
            rates[kind] = rate
    if sum(rates.values()) > 1.0 + 1e-9:
        raise StandinConfigError(f"fault rates add up to {sum(rates.values()):g}, more than 1")
    return rates


@dataclass(frozen=True)
class FaultConfig:
    """What goes wrong, and how slowly things go right. JSON form: see `to_json`."""

    latency: LatencySpec = field(default_factory=LatencySpec)
    rates: Mapping[str, float] = field(default_factory=dict)
    seed: int | None = None
    fail_first: int = 0
    fail_first_kind: str = "503"
    hang_s: float = 30.0
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if self.fail_first_kind not in FAULT_KINDS:
            raise StandinConfigError(
                f"fail_first_kind must be one of {', '.join(FAULT_KINDS)}, got {self.fail_first_kind!r}"
            )
        if self.fail_first < 0 or self.hang_s < 0 or self.retry_after_s < 0:
            raise StandinConfigError("fail_first, hang_s and retry_after_s must not be negative")

    @classmethod
    def from_json(cls, data: Any) -> FaultConfig:
        """Build from the faults endpoint's JSON; keys left out take their defaults."""
        if not isinstance(data, dict):
            raise StandinConfigError("fault config must be a JSON object")
        known = {
            "latency",
            "fault_rates",
            "fault_seed",
            "fail_first",
            "fail_first_kind",
            "hang_s",
            "retry_after_s",
        }
        if unknown := set(data) - known:
            raise StandinConfigError(f"unknown fault config keys: {', '.join(sorted(unknown))}")
        try:
            seed = data.get("fault_seed")
            return cls(
                latency=LatencySpec.parse(str(data.get("latency", "fixed:0"))),
                rates=parse_fault_rates(data.get("fault_rates")),
                seed=None if seed is None else int(seed),
                fail_first=int(data.get("fail_first", 0)),
                fail_first_kind=str(data.get("fail_first_kind", "503")),
                hang_s=float(data.get("hang_s", 30.0)),
                retry_after_s=int(data.get("retry_after_s", 1)),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, StandinConfigError):
                raise
            raise StandinConfigError(f"malformed fault config: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "latency": str(self.latency),
            "fault_rates": dict(self.rates),
            "fault_seed": self.seed,
            "fail_first": self.fail_first,
            "fail_first_kind": self.fail_first_kind,
            "hang_s": self.hang_s,
            "retry_after_s": self.retry_after_s,
        }


class FaultPlan:
    """Chooses each request's fault and latency from a FaultConfig.

    With a seed, the choice for a request depends only on (seed, request key, how many times that
    key was seen before), not on arrival order, so concurrent runs and retries are reproducible.
    """

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._attempts: Counter[str] = Counter()
        self._served = 0
        self._unseeded = random.Random()

    def choose(self, request_key: str) -> tuple[str | None, float]:
        """-> (fault kind or None, latency in seconds) for the next request with this key."""
        position = self._served
        self._served += 1
        if self.config.seed is None:
            rng = self._unseeded
        else:
            # Attempts are only counted when seeded: an unseeded demo server should not grow a map forever.
            attempt = self._attempts[request_key]
            self._attempts[request_key] += 1
            rng = random.Random(f"{self.config.seed}:{request_key}:{attempt}")
        latency = self.config.latency.sample(rng)
        if position < self.config.fail_first:
            return self.config.fail_first_kind, latency
        draw = rng.random()
        threshold = 0.0
        for kind in FAULT_KINDS:
            threshold += self.config.rates.get(kind, 0.0)
            if draw < threshold:
                return kind, latency
        return None, latency


# --------------------------------------------------------------------------------------------
# What the stand-in "sees" in an image
# --------------------------------------------------------------------------------------------

COLOUR_NAMES = {
    "red": ("红色", "red"),
    "orange": ("橙色", "orange"),
    "yellow": ("黄色", "yellow"),
    "green": ("绿色", "green"),
    "cyan": ("青色", "cyan"),
    "blue": ("蓝色", "blue"),
    "purple": ("紫色", "purple"),
    "pink": ("粉色", "pink"),
    "brown": ("棕色", "brown"),
    "black": ("黑色", "black"),
    "white": ("白色", "white"),
    "grey": ("灰色", "grey"),
}
WARM_COLOURS = {"red", "orange", "yellow", "pink", "brown"}
COOL_COLOURS = {"green", "cyan", "blue", "purple"}


def _colour_of(hue: int, saturation: int, value: int) -> str:
    """Name one pixel from Pillow's 0-255 HSV."""
    if value < 50:
        return "black"
    if saturation < 40:
        return "white" if value > 200 else "grey"
    degrees = hue * 360 / 256
    if degrees < 15 or degrees >= 345:
        if value < 140:
            return "brown"
        return "pink" if saturation < 110 and value > 180 else "red"
    if degrees < 45:
        return "brown" if value < 150 else "orange"
    if degrees < 70:
        return "yellow"
    if degrees < 165:
        return "green"
    if degrees < 195:
        return "cyan"
    if degrees < 255:
        return "blue"
    if degrees < 290:
        return "purple"
    return "pink"


@dataclass(frozen=True)
class ImageFeatures:
    """Cheap measurements of one image; everything an answer says about the image comes from here."""

    sha256: str
    width: int
    height: int
    format: str
    colours: tuple[tuple[str, float], ...]  # colour key, share of pixels; most common first
    brightness: float  # mean luma, 0..1
    saturation: float  # mean HSV saturation, 0..1
    regions: Mapping[str, str]  # "top" / "bottom" / "left" / "right" -> dominant colour key
    region_brightness: Mapping[str, float]
    text: str = ""  # OCR text, only when the server runs with --ocr

    @property
    def orientation(self) -> str:
        ratio = self.width / self.height
        return "landscape" if ratio > 1.1 else "portrait" if ratio < 0.9 else "square"


STATS_GRID = 24  # colour statistics run on a 24x24 grid: enough to name colours, cheap in pure Python


def analyse_image(data: bytes, sha256: str) -> ImageFeatures:
    """Measure an image; raises ValueError when Pillow cannot decode it."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            fmt = img.format or "unknown"
            # draft() lets JPEG decode at 1/2..1/8 scale: the statistics need only a thumbnail.
            img.draft("RGB", (STATS_GRID, STATS_GRID))
            # A fixed square grid (box-averaged) keeps every cell the same share of the picture's area.
            grid = img.convert("RGB").resize((STATS_GRID, STATS_GRID), Image.Resampling.BOX)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot decode image: {exc}") from None
    if width < 1 or height < 1:
        raise ValueError("image has no pixels")
    # Pillow types the flattened pixels loosely: an HSV image's are (h, s, v) tuples, an L image's ints.
    hsv = cast(list[tuple[int, int, int]], list(grid.convert("HSV").get_flattened_data()))
    luma = cast(list[int], list(grid.convert("L").get_flattened_data()))
    names = [_colour_of(h, s, v) for h, s, v in hsv]
    total = len(names)
    colours = tuple((name, count / total) for name, count in Counter(names).most_common(4))

    half = STATS_GRID // 2
    rows = [range(y * STATS_GRID, (y + 1) * STATS_GRID) for y in range(STATS_GRID)]
    cells = {
        "top": [i for row in rows[:half] for i in row],
        "bottom": [i for row in rows[half:] for i in row],
        "left": [i for row in rows for i in row[:half]],
        "right": [i for row in rows for i in row[half:]],
    }
    return ImageFeatures(
        sha256=sha256,
        width=width,
        height=height,
        format=fmt,
        colours=colours,
        brightness=sum(luma) / total / 255,
        saturation=sum(s for _, s, _ in hsv) / total / 255,
        regions={k: Counter(names[i] for i in idx).most_common(1)[0][0] for k, idx in cells.items()},
        region_brightness={k: sum(luma[i] for i in idx) / len(idx) / 255 for k, idx in cells.items()},
    )


def image_token_count(
    width: int, height: int, min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS
) -> int:
    """Visual tokens Qwen2.5-VL spends on an image: its smart_resize to a 28-multiple grid, then one per patch."""
    h = max(PATCH, round(height / PATCH) * PATCH)
    w = max(PATCH, round(width / PATCH) * PATCH)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(PATCH, math.floor(height / beta / PATCH) * PATCH)
        w = max(PATCH, math.floor(width / beta / PATCH) * PATCH)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / PATCH) * PATCH
        w = math.ceil(width * beta / PATCH) * PATCH
    return (h // PATCH) * (w // PATCH)


class OcrReader:
    """RapidOCR behind a per-image cache; it is slow, so it runs in a worker thread and only with --ocr."""

    def __init__(self) -> None:
        from rapidocr_onnxruntime import RapidOCR  # imported here: loading its models takes seconds

        self._engine = RapidOCR()
        self._cache: OrderedDict[str, str] = OrderedDict()

    async def read(self, data: bytes, sha256: str) -> str:
        if sha256 in self._cache:
            return self._cache[sha256]
        result, _elapsed = await asyncio.to_thread(self._engine, data)
        text = " ".join(str(line[1]).strip() for line in result or [] if float(line[2]) >= 0.5).strip()
        self._cache[sha256] = text
        if len(self._cache) > FEATURE_CACHE_SIZE:
            self._cache.popitem(last=False)
        return text


# --------------------------------------------------------------------------------------------
# Writing answers
# --------------------------------------------------------------------------------------------


def lower_first(sentence: str) -> str:
    return sentence[:1].lower() + sentence[1:]


def detect_task(prompt: str) -> tuple[str, str]:
    """-> (task type or "other", "zh" | "en") from the seed prompts' opening sentences."""
    lowered = prompt.lower()
    for task, (zh_marker, en_marker) in TASK_MARKERS.items():
        if zh_marker in prompt:
            return task, "zh"
        if en_marker in lowered:
            return task, "en"
    language = "zh" if re.search(r"[\u4e00-\u9fff]", prompt) else "en"
    return "other", language


class AnswerWriter:
    """Template text about one image, in one language, varied by an RNG seeded from (image, prompt)."""

    def __init__(self, features: ImageFeatures, language: str, rng: random.Random) -> None:
        self.f = features
        self.zh = language == "zh"
        self.rng = rng

    # -- small vocabulary ------------------------------------------------------------------
    def t(self, zh: str, en: str) -> str:
        return zh if self.zh else en

    def join(self, *sentences: str) -> str:
        """Chinese sentences run on; English ones need a space between them."""
        return ("" if self.zh else " ").join(s for s in sentences if s)

    def pick(self, zh: Sequence[str], en: Sequence[str]) -> str:
        return self.rng.choice(zh if self.zh else en)

    def colour(self, key: str) -> str:
        return COLOUR_NAMES[key][0 if self.zh else 1]

    def pct(self, share: float) -> str:
        return f"{round(share * 100)}%"

    def orientation(self) -> str:
        o = self.f.orientation
        if self.zh:
            return {"landscape": "横向", "portrait": "竖向", "square": "接近正方形"}[o]
        return {"landscape": "landscape", "portrait": "portrait", "square": "roughly square"}[o]

    def brightness(self) -> str:
        b = self.f.brightness
        if b < 0.3:
            return self.t("偏暗", "dark")
        if b < 0.6:
            return self.t("明暗适中", "moderately lit")
        return self.t("明亮", "bright")

    def saturation(self) -> str:
        s = self.f.saturation
        if s < 0.15:
            return self.t("素雅，接近黑白", "muted, close to black and white")
        if s < 0.4:
            return self.t("柔和", "soft")
        return self.t("鲜艳", "vivid")

    def palette(self) -> str:
        keys = {k for k, share in self.f.colours[:2] if share > 0.15} or {self.f.colours[0][0]}
        if keys <= WARM_COLOURS:
            return "warm"
        if keys <= COOL_COLOURS:
            return "cool"
        if keys <= {"black", "white", "grey"}:
            return "neutral"
        return "mixed"

    def ratio(self) -> str:
        return f"{self.f.width / self.f.height:.2f}"

    def quoted_text(self) -> str:
        return f"「{self.f.text}」"

    # -- facts as sentences ----------------------------------------------------------------
    def colour_sentence(self) -> str:
        (c1, p1), *rest = self.f.colours
        if self.zh:
            s = f"画面以{self.colour(c1)}为主，大约占{self.pct(p1)}"
            if rest:
                s += "，其次是" + "和".join(f"{self.colour(c)}（约{self.pct(p)}）" for c, p in rest[:2])
            return s + "。"
        s = f"The picture is dominated by {self.colour(c1)}, about {self.pct(p1)} of it"
        if rest:
            s += ", followed by " + " and ".join(
                f"{self.colour(c)} (about {self.pct(p)})" for c, p in rest[:2]
            )
        return s + "."

    def split_sentence(self, a: str, b: str) -> str:
        ca, cb = self.f.regions[a], self.f.regions[b]
        ba, bb = self.f.region_brightness[a], self.f.region_brightness[b]
        names_zh = {"top": "上半部分", "bottom": "下半部分", "left": "左侧", "right": "右侧"}
        names_en = {
            "top": "the upper half",
            "bottom": "the lower half",
            "left": "the left side",
            "right": "the right side",
        }
        na, nb = (names_zh if self.zh else names_en)[a], (names_zh if self.zh else names_en)[b]
        if ca == cb:
            s = self.t(
                f"{na}和{nb}都以{self.colour(ca)}为主", f"Both {na} and {nb} are mostly {self.colour(ca)}"
            )
        else:
            s = self.t(
                f"{na}以{self.colour(ca)}为主，{nb}则以{self.colour(cb)}为主",
                f"{na.capitalize()} is mostly {self.colour(ca)}, while {nb} is mostly {self.colour(cb)}",
            )
        if abs(ba - bb) < 0.08:
            s += self.t("，两边亮度相近。", ", and both are about equally bright.")
        else:
            brighter, darker = (na, nb) if ba > bb else (nb, na)
            s += self.t(f"，{brighter}比{darker}更亮一些。", f", and {brighter} is brighter than {darker}.")
        return s

    def sky_hint(self) -> str:
        top, bottom = self.f.regions["top"], self.f.regions["bottom"]
        if (
            top in {"blue", "white", "cyan"}
            and self.f.region_brightness["top"] > self.f.region_brightness["bottom"]
        ):
            return self.t(
                f"上方偏{self.colour(top)}且更亮，这种分布在户外照片里很常见，上方往往是天空。",
                f"The top is {self.colour(top)} and brighter, a layout common in outdoor photos where the sky sits above.",
            )
        if bottom in {"green", "brown"}:
            return self.t(
                f"下方以{self.colour(bottom)}为主，可能是地面、草地或植物。",
                f"The lower part is mostly {self.colour(bottom)}, which may be ground, grass or plants.",
            )
        return ""

    def setting_guess(self) -> str:
        b, s = self.f.brightness, self.f.saturation
        if s < 0.12 and b > 0.7:
            return self.t(
                "大面积浅色、几乎没有饱和色，更像是截图、文档或设计稿，而不是实景照片",
                "large light areas with almost no saturated colour suggest a screenshot, document or design rather than a photo",
            )
        if b < 0.3:
            return self.t(
                "整体偏暗，可能是在夜间或室内弱光环境下拍摄的",
                "the overall darkness suggests night-time or a dim indoor setting",
            )
        if self.palette() == "cool" and b >= 0.45:
            return self.t(
                "冷色调明亮，像是白天的户外场景，例如天空、水面或植物",
                "bright cool tones suggest an outdoor daytime scene such as sky, water or plants",
            )
        if self.palette() == "warm":
            return self.t(
                "暖色调居多，常见于室内灯光、美食、节日装饰或傍晚的光线",
                "mostly warm tones, typical of indoor lighting, food, festive decoration or evening light",
            )
        return self.t(
            "光线和色彩都比较均衡，像是在普通光照条件下拍摄的",
            "light and colour are balanced, as in an ordinary well-lit setting",
        )

    def resolution_sentence(self) -> str:
        px = self.f.width * self.f.height
        if self.zh:
            quality = (
                "分辨率较高，细节应当比较清晰。"
                if px >= 1_000_000
                else "分辨率中等，适合在网页和手机上浏览。"
                if px >= 300_000
                else "分辨率偏低，放大查看时细节会比较模糊。"
            )
            return f"图片分辨率为{self.f.width}×{self.f.height}，约{px / 10000:.1f}万像素，{quality}"
        quality = (
            "a high resolution, so fine details should be clear."
            if px >= 1_000_000
            else "a medium resolution, fine for web pages and phones."
            if px >= 300_000
            else "a low resolution, so details blur when zoomed in."
        )
        return (
            f"The image is {self.f.width}×{self.f.height} pixels, about {px / 1e6:.2f} megapixels: {quality}"
        )

    def orientation_use(self) -> str:
        return {
            "landscape": self.t(
                "这种横幅构图常用于风景、街景或横向排布的版面。",
                "Wide framing like this is common for landscapes, street scenes and banners.",
            ),
            "portrait": self.t(
                "竖幅构图在手机截图、海报和人像照片中很常见。",
                "Tall framing is common for phone screenshots, posters and portraits.",
            ),
            "square": self.t(
                "接近正方形的画面常见于头像、商品图和社交媒体配图。",
                "Near-square framing is common for avatars, product shots and social-media posts.",
            ),
        }[self.f.orientation]

    # -- conversation rounds: (question variants zh, question variants en, answer) ---------------
    def rounds(self) -> list[tuple[Sequence[str], Sequence[str], Callable[[], str]]]:
        f = self.f
        rounds: list[tuple[Sequence[str], Sequence[str], Callable[[], str]]] = [
            (
                ["这张照片的主色调是什么？", "画面里最多的是哪种颜色？", "图片整体是什么颜色的？"],
                ["What is the main colour of this photo?", "Which colour covers most of the picture?"],
                lambda: (
                    self.colour_sentence()
                    + self.t(
                        f"整体色彩{self.saturation()}。", f" Overall the colours are {self.saturation()}."
                    )
                ),
            ),
            (
                ["这张图片是横向还是竖向的？", "这张照片的长宽比例是怎样的？"],
                ["Is this picture landscape or portrait?", "What are the proportions of this photo?"],
                lambda: (
                    self.t(
                        f"这是一张{self.orientation()}的图片，宽{f.width}像素、高{f.height}像素，宽高比约为{self.ratio()}。",
                        f"It is a {self.orientation()} image, {f.width} pixels wide and {f.height} pixels tall (aspect ratio about {self.ratio()}). ",
                    )
                    + self.orientation_use()
                ),
            ),
            (
                ["画面是明亮还是昏暗？", "这张照片的光线怎么样？", "照片看起来是在光线充足的环境下拍的吗？"],
                ["Is the picture bright or dark?", "How is the lighting in this photo?"],
                lambda: self.t(
                    f"画面整体{self.brightness()}，平均亮度约为{self.pct(f.brightness)}。从这一点看，{self.setting_guess()}。",
                    f"The picture is {self.brightness()} overall, with a mean brightness of about {self.pct(f.brightness)}. From that, {self.setting_guess()}.",
                ),
            ),
            (
                ["画面的上半部分和下半部分有什么不同？", "图片上方和下方的颜色一样吗？"],
                [
                    "How do the top and bottom of the picture differ?",
                    "Are the upper and lower parts the same colour?",
                ],
                lambda: self.join(self.split_sentence("top", "bottom"), self.sky_hint()),
            ),
            (
                ["图片左右两侧的颜色有区别吗？", "画面左边和右边分别是什么颜色？"],
                [
                    "Do the left and right sides differ in colour?",
                    "What colours are on the left and the right?",
                ],
                lambda: self.split_sentence("left", "right"),
            ),
            (
                ["这张图片的清晰度如何？", "这张图片有多少像素？"],
                ["How sharp is this image?", "How many pixels does this image have?"],
                self.resolution_sentence,
            ),
            (
                ["这样的图片适合用在什么地方？", "如果要把这张图片用作文章配图，你有什么建议？"],
                [
                    "Where would an image like this work well?",
                    "Any advice on using this picture to illustrate an article?",
                ],
                self.usage_advice,
            ),
            (
                ["这张照片给人什么样的感觉？", "画面的氛围是怎样的？"],
                [
                    "What mood does this photo convey?",
                    "How would you describe the atmosphere of the picture?",
                ],
                self.mood_answer,
            ),
        ]
        if f.text:
            rounds.append(
                (
                    ["图片里有文字吗？写的是什么？", "照片中能看到哪些文字？"],
                    ["Is there any text in the picture?", "What text can be seen in the photo?"],
                    lambda: self.t(
                        f"有，图中可以辨认出文字{self.quoted_text()}。",
                        f"Yes, the picture contains the text {self.quoted_text()}.",
                    ),
                )
            )
        return rounds

    def usage_advice(self) -> str:
        palette_advice = {
            "warm": self.t(
                "暖色调容易营造热闹、温馨的氛围，适合节日宣传、美食或生活类内容。",
                "Warm tones feel lively and cosy, which suits festive promotions, food or lifestyle content.",
            ),
            "cool": self.t(
                "冷色调给人清爽、安静的感觉，适合科技、旅行或自然类主题。",
                "Cool tones feel fresh and calm, which suits technology, travel or nature topics.",
            ),
            "neutral": self.t(
                "中性色为主的画面简洁克制，适合新闻配图、文档插图，或作为叠加文字的背景。",
                "A mostly neutral palette is plain and restrained, good for news, documentation, or as a background for overlaid text.",
            ),
            "mixed": self.t(
                "色彩搭配比较丰富，适合需要吸引注意力的封面或海报。",
                "The mixed palette draws attention, which suits covers and posters.",
            ),
        }[self.palette()]
        first = self.t(
            f"首先看画面本身：{self.colour(self.f.colours[0][0])}占主导，整体{self.brightness()}，色彩{self.saturation()}。",
            f"First, the picture itself: {self.colour(self.f.colours[0][0])} dominates, it is {self.brightness()} overall and the colours are {self.saturation()}. ",
        )
        second = self.t("其次，", "Second, ") + lower_first(palette_advice)
        third = self.t("再次，", " Third, ") + lower_first(self.orientation_use())
        last = self.t(
            "最后，正式使用前还需要确认图片的来源和版权。",
            " Finally, check the image's source and licence before publishing it.",
        )
        return f"{first}{second}{third}{last}"

    def mood_answer(self) -> str:
        palette = self.palette()
        mood = {
            ("warm", True): self.t("温暖而热烈", "warm and lively"),
            ("warm", False): self.t("温馨、略带怀旧", "cosy and slightly nostalgic"),
            ("cool", True): self.t("清新、开阔", "fresh and open"),
            ("cool", False): self.t("安静、略显冷清", "quiet, a little cold"),
            ("neutral", True): self.t("简洁、干净", "clean and simple"),
            ("neutral", False): self.t("沉稳、克制", "sober and restrained"),
            ("mixed", True): self.t("活泼、丰富", "lively and busy"),
            ("mixed", False): self.t("厚重、复杂", "heavy and complex"),
        }[(palette, self.f.brightness >= 0.45)]
        return self.t(
            f"整体给人{mood}的感觉。原因有两点：一是画面{self.brightness()}，平均亮度约{self.pct(self.f.brightness)}；"
            f"二是主色调为{self.colour(self.f.colours[0][0])}，色彩{self.saturation()}。",
            f"It feels {mood}. Two reasons: the picture is {self.brightness()} (mean brightness about {self.pct(self.f.brightness)}), "
            f"and its main colour is {self.colour(self.f.colours[0][0])}, with {self.saturation()} colours.",
        )

    # -- the three tasks -------------------------------------------------------------------
    def conversation(self) -> str:
        rounds = self.rounds()
        chosen = self.rng.sample(rounds, k=min(len(rounds), self.rng.randint(3, 5)))
        user, assistant = self.t("用户:", "User: "), self.t("助手:", "Assistant: ")
        return "\n\n".join(f"{user}{self.pick(qz, qe)}\n\n{assistant}{answer()}" for qz, qe, answer in chosen)

    def complex_reasoning(self) -> tuple[str, str]:
        f = self.f
        brighter = "top" if f.region_brightness["top"] >= f.region_brightness["bottom"] else "bottom"
        calmer = "bottom" if brighter == "top" else "top"
        where_zh = {"top": "上方", "bottom": "下方"}
        where_en = {"top": "top", "bottom": "bottom"}
        ink_zh = "深色（如黑色或深灰色）" if f.region_brightness[calmer] > 0.55 else "白色或浅色"
        ink_en = (
            "dark (black or dark grey)"
            if f.region_brightness[calmer] > 0.55
            else "white or another light colour"
        )
        options = [
            (
                self.pick(
                    [
                        "如果要在这张图片上添加标题文字，放在哪里、用什么颜色比较合适？",
                        "想在这张图上加一行醒目的标题，应该怎么排？",
                    ],
                    ["If I want to add a headline to this image, where should it go and in what colour?"],
                ),
                self.t(
                    f"第一步，看明暗分布：{self.split_sentence('top', 'bottom')}\n"
                    f"第二步，选位置：标题适合放在{where_zh[calmer]}，那里的颜色以{self.colour(f.regions[calmer])}为主，能给文字留出相对统一的底色。\n"
                    f"第三步，选颜色：该区域平均亮度约{self.pct(f.region_brightness[calmer])}，因此用{ink_zh}文字对比度最高，也最易读。"
                    f"如果底色不够均匀，可以给文字加一层半透明的底框。",
                    f"Step one, look at light and dark: {self.split_sentence('top', 'bottom')}\n"
                    f"Step two, placement: the headline belongs at the {where_en[calmer]}, which is mostly {self.colour(f.regions[calmer])} and gives the text a fairly even background.\n"
                    f"Step three, colour: that area's mean brightness is about {self.pct(f.region_brightness[calmer])}, so {ink_en} text gives the strongest contrast. "
                    f"If the background is uneven, put a semi-transparent box behind the text.",
                ),
            ),
            (
                self.pick(
                    [
                        "根据画面的光线和色彩，推测这张照片可能是在什么环境下拍摄的？",
                        "这张照片更可能是在什么时间、什么环境里拍的？",
                    ],
                    ["Judging from light and colour, in what kind of setting was this photo probably taken?"],
                ),
                self.t(
                    f"推理可以分三步。首先，画面整体{self.brightness()}，平均亮度约{self.pct(f.brightness)}。"
                    f"其次，{self.colour_sentence()}色彩{self.saturation()}。{self.sky_hint()}\n"
                    f"综合这些线索：{self.setting_guess()}。当然，仅凭颜色和亮度无法完全确定具体地点，需要结合画面中的物体进一步判断。",
                    f"Three steps. First, the picture is {self.brightness()} overall, with mean brightness about {self.pct(f.brightness)}. "
                    f"Second, {lower_first(self.colour_sentence())} The colours are {self.saturation()}. {self.sky_hint()}\n"
                    f"Putting these together: {self.setting_guess()}. Colour and brightness alone cannot pin down the exact place, so the objects in the picture should be checked as well.",
                ),
            ),
            (
                self.pick(
                    [
                        "如果要把这张图片放到手机竖屏上全屏展示，需要注意什么？",
                        "这张图片在手机上显示时会遇到什么问题？",
                    ],
                    ["What should I watch out for when showing this image full-screen on a phone?"],
                ),
                self.t(
                    f"{self.resolution_sentence()}常见手机竖屏约为1080×2400像素，宽高比约0.45，而这张图的宽高比约为{self.ratio()}。\n"
                    + (
                        "它比手机屏幕宽得多，全屏铺满会裁掉左右两侧的大部分内容，建议保持完整显示并在上下留白，或者只截取主体部分。"
                        if f.width / f.height > 0.6
                        else "它的比例与手机屏幕接近，可以直接铺满，只需注意上下边缘可能被状态栏遮挡。"
                    )
                    + ("另外分辨率偏低，放大后会发虚，最好找更清晰的原图。" if f.width < 1080 else ""),
                    f"{self.resolution_sentence()} A typical phone held upright is about 1080×2400 pixels (aspect ratio 0.45), while this image's aspect ratio is about {self.ratio()}.\n"
                    + (
                        "It is much wider than the screen, so filling the screen would crop most of the sides; show it whole with bars above and below, or crop to the subject."
                        if f.width / f.height > 0.6
                        else "Its proportions are close to the screen's, so it can fill it; just keep the edges clear of the status bar."
                    )
                    + (
                        " It is also narrower than 1080 pixels and will look soft when scaled up."
                        if f.width < 1080
                        else ""
                    ),
                ),
            ),
            (
                self.pick(
                    ["为什么这张图片会给人现在这样的整体印象？", "这张照片的氛围是怎么营造出来的？"],
                    ["Why does this picture leave the overall impression it does?"],
                ),
                self.mood_answer() + "\n" + self.usage_advice(),
            ),
        ]
        return self.rng.choice(options)

    def reasoning(self) -> str:
        question, answer = self.complex_reasoning()
        return self.t(f"问题:{question}\n\n回答:{answer}", f"Question: {question}\n\nAnswer: {answer}")

    def description(self) -> str:
        f = self.f
        opening = self.pick(
            [
                f"这是一张{self.orientation()}的图片，尺寸为{f.width}×{f.height}像素。",
                f"画面呈{self.orientation()}构图，分辨率为{f.width}×{f.height}。",
            ],
            [
                f"This is a {self.orientation()} image of {f.width}×{f.height} pixels.",
                f"The picture has {self.orientation()} framing, {f.width} by {f.height} pixels.",
            ],
        )
        middle = [
            self.colour_sentence(),
            self.split_sentence("top", "bottom"),
            self.split_sentence("left", "right"),
        ]
        self.rng.shuffle(middle)
        light = self.t(
            f"整体光线{self.brightness()}，色彩{self.saturation()}。",
            f"Overall the picture is {self.brightness()} and the colours are {self.saturation()}.",
        )
        text = (
            self.t(
                f"图中可以看到文字{self.quoted_text()}。",
                f"The picture contains the text {self.quoted_text()}.",
            )
            if f.text
            else ""
        )
        closing = self.t(
            f"从这些特征看，{self.setting_guess()}。", f"Taken together, {self.setting_guess()}."
        )
        return self.join(opening, *middle, light, text, self.sky_hint(), closing)


def compose_answer(task: str, language: str, features: ImageFeatures | None, rng: random.Random) -> str:
    """The stand-in's reply for one request, before any fault or max_tokens cut."""
    if features is None:
        return {
            "zh": "这条消息里没有图片。请附上一张图片，我再根据图片内容回答。",
            "en": "There is no image in this message. Please attach one and I will answer about it.",
        }[language]
    writer = AnswerWriter(features, language, rng)
    if task == "conversation":
        return writer.conversation()
    if task == "complex_reasoning":
        return writer.reasoning()
    return writer.description()


def malformed(answer: str, task: str) -> str:
    """The same content in a shape the parser should reject: markers removed, or JSON instead of prose."""
    if task in {"conversation", "complex_reasoning"}:
        stripped = re.sub(r"(用户|助手|问题|回答|User|Assistant|Question|Answer):\s*", "", answer)
        return re.sub(r"\n+", " ", stripped).strip()
    return json.dumps({"description": answer}, ensure_ascii=False)


def truncate_mid_sentence(answer: str, rng: random.Random) -> str:
    """Cut somewhere in the middle of the text, never right after sentence-ending punctuation."""
    cut = max(1, int(len(answer) * rng.uniform(0.4, 0.7)))
    while cut > 1 and answer[cut - 1] in "。！？.!?\n ":
        cut -= 1
    return answer[:cut]


# --------------------------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------------------------


class RequestError(Exception):
    """Becomes a vLLM-shaped error response."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """vLLM's ErrorResponse: {"error": {"message", "type", "param", "code"}} with code the HTTP status."""
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "Error"),
            "param": param,
            "code": status,
        }
    }


def error_response(
    status: int, message: str, param: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(error_body(status, message, param), status=status, headers=headers)


@dataclass
class StandinStats:
    """Counters behind GET /stand-in/stats."""

    requests: int = 0
    ok: int = 0
    errors: Counter[str] = field(
        default_factory=Counter
    )  # "400", "404", "429", "500", "503", "reset", "cancelled"
    faults_injected: Counter[str] = field(default_factory=Counter)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    by_image: Counter[str] = field(default_factory=Counter)  # sha256 of image bytes -> chat requests
    in_flight: int = 0
    max_in_flight: int = 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("errors", "faults_injected", "finish_reasons", "by_image"):
            data[key] = dict(getattr(self, key))
        return data


@dataclass
class ParsedRequest:
    prompt: str
    image_url: str | None
    max_tokens: int | None
    mm_processor_kwargs: Mapping[str, Any]


def parse_chat_request(body: Any, served_model: str) -> ParsedRequest:
    """Validate the parts of a chat completion request the stand-in reads; raises RequestError."""
    if not isinstance(body, dict):
        raise RequestError(400, "Request body must be a JSON object.")
    model = body.get("model")
    if model is not None and model != served_model:
        raise RequestError(404, f"The model `{model}` does not exist.", "model")
    if body.get("stream"):
        raise RequestError(
            400, "The tuwen stand-in does not implement streaming; send stream=false.", "stream"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "`messages` must be a non-empty list.", "messages")
    texts: list[str] = []
    image_urls: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in {
            "system",
            "user",
            "assistant",
            "developer",
        }:
            raise RequestError(
                400, f"messages[{i}] must be an object with a role of system, user or assistant.", "messages"
            )
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list):
            raise RequestError(
                400, f"messages[{i}].content must be a string or a list of content parts.", "messages"
            )
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif (
                kind == "image_url"
                and isinstance(part.get("image_url"), dict)
                and isinstance(part["image_url"].get("url"), str)
            ):
                image_urls.append(part["image_url"]["url"])
            else:
                raise RequestError(
                    400,
                    f"messages[{i}].content[{j}] is not a valid text or image_url content part.",
                    "messages",
                )
    if len(image_urls) > 1:
        raise RequestError(
            400, f"At most 1 image(s) may be provided in one prompt; got {len(image_urls)}.", "messages"
        )
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise RequestError(400, "max_tokens must be a positive integer.", "max_tokens")
    mm_kwargs = body.get("mm_processor_kwargs") or {}
    if not isinstance(mm_kwargs, dict):
        raise RequestError(400, "mm_processor_kwargs must be an object.", "mm_processor_kwargs")
    return ParsedRequest("\n".join(texts), image_urls[0] if image_urls else None, max_tokens, mm_kwargs)


def decode_data_url(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise RequestError(400, "Image data URLs must look like data:image/<type>;base64,<data>.", "messages")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "Image data URL is not valid base64.", "messages") from None


def reset_connection(request: web.Request) -> None:
    """Drop the TCP connection with an RST and no HTTP response, as a crashed or overloaded peer would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER on with a zero timeout makes close() send RST instead of FIN.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class StandinServer:
    """The aiohttp application and its state: served model name, fault plan, counters, caches."""

    def __init__(
        self, model: str = DEFAULT_MODEL, faults: FaultConfig | None = None, ocr: bool = False
    ) -> None:
        self.model = model
        self.plan = FaultPlan(faults or FaultConfig())
        self.stats = StandinStats()
        self.ocr_enabled = ocr
        self._ocr: OcrReader | None = None
        self._features: OrderedDict[str, ImageFeatures] = OrderedDict()
        self._http: ClientSession | None = None
        self.started = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_IMAGE_BYTES * 2)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/stand-in/faults", self.get_faults)
        app.router.add_post("/stand-in/faults", self.set_faults)
        app.router.add_get("/stand-in/stats", self.get_stats)
        app.router.add_post("/stand-in/stats/reset", self.reset_stats)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self._http = ClientSession(timeout=ClientTimeout(total=IMAGE_FETCH_TIMEOUT_S))
        if self.ocr_enabled:
            try:
                self._ocr = await asyncio.to_thread(OcrReader)
            except ImportError:
                print(
                    "stand-in: --ocr requested but rapidocr_onnxruntime is not importable; OCR stays off",
                    file=sys.stderr,
                )

    async def _on_cleanup(self, _app: web.Application) -> None:
        if self._http is not None:
            await self._http.close()

    # -- plain endpoints -------------------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(self, _request: web.Request) -> web.Response:
        card = {
            "id": self.model,
            "object": "model",
            "created": self.started,
            "owned_by": OWNED_BY,
            "root": self.model,
            "parent": None,
            "max_model_len": MAX_MODEL_LEN,
            "permission": [],
        }
        return web.json_response({"object": "list", "data": [card]})

    async def get_faults(self, _request: web.Request) -> web.Response:
        return web.json_response(self.plan.config.to_json())

    async def set_faults(self, request: web.Request) -> web.Response:
        try:
            config = FaultConfig.from_json(await request.json())
        except (json.JSONDecodeError, StandinConfigError) as exc:
            return error_response(400, str(exc))
        self.plan = FaultPlan(config)
        return web.json_response(config.to_json())

    async def get_stats(self, _request: web.Request) -> web.Response:
        return web.json_response(self.stats.to_json())

    async def reset_stats(self, _request: web.Request) -> web.Response:
        in_flight = self.stats.in_flight
        self.stats = StandinStats(in_flight=in_flight, max_in_flight=in_flight)
        return web.json_response(self.stats.to_json())

    # -- chat completions ------------------------------------------------------------------
    async def load_image(self, url: str) -> bytes:
        if url.startswith("data:"):
            return decode_data_url(url)
        if not url.startswith(("http://", "https://")):
            raise RequestError(
                400, "Image URLs must be data:image/...;base64 URLs or http(s) URLs.", "messages"
            )
        assert self._http is not None
        try:
            async with self._http.get(url) as response:
                if response.status != 200:
                    raise RequestError(
                        400, f"Failed to fetch image from {url}: HTTP {response.status}.", "messages"
                    )
                data = await response.content.read(MAX_IMAGE_BYTES + 1)
        except (ClientError, TimeoutError) as exc:
            raise RequestError(400, f"Failed to fetch image from {url}: {exc!r}.", "messages") from None
        if len(data) > MAX_IMAGE_BYTES:
            raise RequestError(400, f"Image at {url} is larger than {MAX_IMAGE_BYTES} bytes.", "messages")
        return data

    async def features_of(self, data: bytes, sha256: str) -> ImageFeatures:
        cached = self._features.get(sha256)
        if cached is None:
            try:
                # In a worker thread: a PNG has no draft mode and takes tens of ms to decode, which would
                # stall every other request's timers if it ran on the event loop.
                cached = await asyncio.to_thread(analyse_image, data, sha256)
            except ValueError as exc:
                raise RequestError(400, f"Failed to load image: {exc}", "messages") from None
            if self._ocr is not None:
                text = await self._ocr.read(data, sha256)
                cached = ImageFeatures(**{**asdict(cached), "text": text})
            self._features[sha256] = cached
            if len(self._features) > FEATURE_CACHE_SIZE:
                self._features.popitem(last=False)
        else:
            self._features.move_to_end(sha256)
        return cached

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            return await self._chat_completion(request, stats, arrived=time.monotonic())
        except RequestError as exc:
            stats.errors[str(exc.status)] += 1
            return error_response(exc.status, exc.message, exc.param)
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the client hangs up (e.g. a client timeout during a hang).
            stats.errors["cancelled"] += 1
            raise
        finally:
            stats.in_flight -= 1

    async def _chat_completion(
        self, request: web.Request, stats: StandinStats, arrived: float
    ) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(400, "Request body is not valid JSON.") from None
        parsed = parse_chat_request(body, self.model)
        image_bytes = b""
        features: ImageFeatures | None = None
        if parsed.image_url is not None:
            image_bytes = await self.load_image(parsed.image_url)
            image_sha = hashlib.sha256(image_bytes).hexdigest()
            features = await self.features_of(image_bytes, image_sha)
            stats.by_image[image_sha] += 1
        request_key = hashlib.sha256(image_bytes + b"\0" + parsed.prompt.encode()).hexdigest()
        fault, latency = self.plan.choose(request_key)
        config = self.plan.config
        if fault is not None:
            stats.faults_injected[fault] += 1
        # An overloaded server sheds load at once, before doing any work.
        if fault in {"429", "503"}:
            stats.errors[fault] += 1
            headers = {"Retry-After": str(config.retry_after_s)} if fault == "429" else None
            message = (
                "Too many requests (stand-in fault injection)."
                if fault == "429"
                else "Service unavailable (stand-in fault injection)."
            )
            return error_response(int(fault), message, headers=headers)
        # Latency counts from arrival, so decoding time is part of it, as it is on a real server.
        if (remaining := latency - (time.monotonic() - arrived)) > 0:
            await asyncio.sleep(remaining)
        if fault == "timeout":
            await asyncio.sleep(config.hang_s)
        if fault == "500":
            stats.errors["500"] += 1
            return error_response(500, "Internal server error (stand-in fault injection).")
        if fault == "reset":
            stats.errors["reset"] += 1
            reset_connection(request)
            # The handler must still return something; aiohttp discards it because the transport is gone.
            return web.Response(status=500)

        task, language = detect_task(parsed.prompt)
        rng = random.Random(request_key)
        content = compose_answer(task, language, features, rng)
        finish_reason = "stop"
        if fault == "refusal":
            content = REFUSAL[language]
        elif fault == "malformed":
            content = malformed(content, task)
        elif fault == "truncated":
            content, finish_reason = truncate_mid_sentence(content, rng), "length"
        # One token per character: the stand-in's cheap, documented stand-in for a tokenizer.
        if parsed.max_tokens is not None and len(content) > parsed.max_tokens:
            content, finish_reason = content[: parsed.max_tokens], "length"
        image_tokens = 0
        if features is not None:
            kwargs = parsed.mm_processor_kwargs
            image_tokens = image_token_count(
                features.width,
                features.height,
                int(kwargs.get("min_pixels", QWEN_MIN_PIXELS)),
                int(kwargs.get("max_pixels", QWEN_MAX_PIXELS)),
            )
        prompt_tokens = len(parsed.prompt) + image_tokens
        completion_tokens = len(content)
        stats.ok += 1
        stats.finish_reasons[finish_reason] += 1
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "tool_calls": []},
                        "logprobs": None,
                        "finish_reason": finish_reason,
                        "stop_reason": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    "prompt_tokens_details": None,
                },
            },
            dumps=lambda obj: json.dumps(obj, ensure_ascii=False),
        )


async def run_server(
    host: str = "127.0.0.1",
    port: int = 8000,
    model: str = DEFAULT_MODEL,
    faults: FaultConfig | None = None,
    ocr: bool = False,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set (or SIGINT/SIGTERM); prints one line saying where it listens."""
    server = StandinServer(model=model, faults=faults, ocr=ocr)
    # handler_cancellation: a client that gives up on a hung request frees its handler at once.
    runner = web.AppRunner(server.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    # 1024-deep backlog: a benchmark opens 128+ connections in the same instant.
    site = web.TCPSite(runner, host, port, backlog=1024, shutdown_timeout=1.0)
    await site.start()
    bound_port = runner.addresses[0][1]
    print(
        f"{READY_LINE_PREFIX} http://{host}:{bound_port}/v1 (model {model!r}, faults {json.dumps(server.plan.config.to_json())})",
        flush=True,
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    model: str = DEFAULT_MODEL,
    faults: FaultConfig | None = None,
    ocr: bool = False,
) -> None:
    """Run the stand-in in the foreground (blocking) until SIGINT/SIGTERM. Port 0 picks a free port."""
    try:
        import uvloop  # optional: a faster event loop when installed (it is, via uvicorn)

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run_server(host, port, model, faults, ocr))


# --------------------------------------------------------------------------------------------
# Subprocess helper for tests and benchmarks
# --------------------------------------------------------------------------------------------


class StandinProcess:
    """Start the stand-in as a subprocess on a free port, wait for /health, stop it on exit.

    with StandinProcess(latency="fixed:0.1", fault_rates="500=0.2", fault_seed=1) as vlm:
        client = openai.OpenAI(base_url=vlm.base_url, api_key="EMPTY")
        ...
        assert vlm.stats()["ok"] == 10
    """

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        latency: str = "fixed:0",
        fault_rates: str | Mapping[str, float] | None = None,
        fault_seed: int | None = None,
        fail_first: int = 0,
        fail_first_kind: str = "503",
        hang_s: float = 30.0,
        retry_after_s: int = 1,
        ocr: bool = False,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 30.0,
    ) -> None:
        rates = parse_fault_rates(fault_rates)  # fail here, in the caller, rather than in the child
        self.host = host
        self.model = model
        self.startup_timeout_s = startup_timeout_s
        self.args = [
            sys.executable,
            "-m",
            "tuwen.local.standin_vlm",
            "--host",
            host,
            "--port",
            "0",
            "--model",
            model,
            "--latency",
            str(LatencySpec.parse(latency)),
            "--fail-first",
            str(fail_first),
            "--fail-first-kind",
            fail_first_kind,
            "--hang-s",
            str(hang_s),
            "--retry-after-s",
            str(retry_after_s),
        ]
        if rates:
            self.args += ["--fault-rates", ",".join(f"{k}={v}" for k, v in rates.items())]
        if fault_seed is not None:
            self.args += ["--fault-seed", str(fault_seed)]
        if ocr:
            self.args.append("--ocr")
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def root_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the stand-in is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as base_url."""
        return f"{self.root_url}/v1"

    def log_text(self) -> str:
        if self._log is None:
            return ""
        return Path(self._log.name).read_text(errors="replace")

    def start(self) -> StandinProcess:
        import httpx  # only the helper needs a sync HTTP client

        # Output goes to a file, not a pipe: nobody drains a pipe during a long test, and a full one blocks the server.
        self._log = tempfile.NamedTemporaryFile(prefix="standin-vlm-", suffix=".log", delete=False)  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout_s
        pattern = re.compile(re.escape(READY_LINE_PREFIX) + r" http://[^:]+:(\d+)/v1")
        try:
            while self.port is None:
                if self._process.poll() is not None:
                    raise RuntimeError(f"stand-in exited with {self._process.returncode}:\n{self.log_text()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"stand-in did not start within {self.startup_timeout_s}s:\n{self.log_text()}"
                    )
                if match := pattern.search(self.log_text()):
                    self.port = int(match.group(1))
                else:
                    time.sleep(0.05)
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.root_url}/health", timeout=2.0).status_code == 200:
                        return self
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"stand-in /health did not answer within {self.startup_timeout_s}s:\n{self.log_text()}"
                    )
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._process = None
        if self._log is not None:
            self._log.close()
            with contextlib.suppress(OSError):
                os.unlink(self._log.name)
            self._log = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> StandinProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- stand-in control endpoints --------------------------------------------------------
    def set_faults(self, **config: Any) -> dict[str, Any]:
        """POST /stand-in/faults: replaces the whole fault config (keys as in FaultConfig.to_json)."""
        import httpx

        response = httpx.post(f"{self.root_url}/stand-in/faults", json=config, timeout=10)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        import httpx

        return httpx.get(f"{self.root_url}/stand-in/stats", timeout=10).raise_for_status().json()

    def reset_stats(self) -> dict[str, Any]:
        import httpx

        return httpx.post(f"{self.root_url}/stand-in/stats/reset", timeout=10).raise_for_status().json()


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tuwen.local.standin_vlm",
        description=(
            "A STAND-IN for vLLM's OpenAI-compatible server (GET /health, GET /v1/models, POST /v1/chat/completions), "
            "for testing and demoing tuwen without a GPU. It is NOT a model: answers are templates about image size, "
            "colours and brightness, deterministic per (image, prompt). Stand-in-only endpoints: GET/POST /stand-in/faults, "
            "GET /stand-in/stats, POST /stand-in/stats/reset."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to bind; 0 picks a free one (default 8000)"
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"served model name (default {DEFAULT_MODEL})")
    parser.add_argument(
        "--latency", default="fixed:0", help="'fixed:SECONDS' or 'lognormal:MEDIAN,P99' (default fixed:0)"
    )
    parser.add_argument(
        "--fault-rates", default="", help=f"comma-separated KIND=PROBABILITY, kinds: {', '.join(FAULT_KINDS)}"
    )
    parser.add_argument(
        "--fault-seed", type=int, default=None, help="make fault choice and latency deterministic per request"
    )
    parser.add_argument(
        "--fail-first", type=int, default=0, help="fail the first N chat requests with --fail-first-kind"
    )
    parser.add_argument(
        "--fail-first-kind", default="503", choices=FAULT_KINDS, help="fault for --fail-first (default 503)"
    )
    parser.add_argument(
        "--hang-s", type=float, default=30.0, help="how long the 'timeout' fault hangs before answering"
    )
    parser.add_argument("--retry-after-s", type=int, default=1, help="Retry-After header sent with 429s")
    parser.add_argument(
        "--ocr",
        action="store_true",
        help="quote text read by rapidocr_onnxruntime in answers (slow; off by default)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        faults = FaultConfig(
            latency=LatencySpec.parse(args.latency),
            rates=parse_fault_rates(args.fault_rates),
            seed=args.fault_seed,
            fail_first=args.fail_first,
            fail_first_kind=args.fail_first_kind,
            hang_s=args.hang_s,
            retry_after_s=args.retry_after_s,
        )
    except StandinConfigError as exc:
        parser.error(str(exc))
    serve(args.host, args.port, args.model, faults, args.ocr)


if __name__ == "__main__":
    main()
