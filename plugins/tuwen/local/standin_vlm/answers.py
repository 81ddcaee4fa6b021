"""What the stand-in "sees" in an image and the answers it writes about it.

Answers are Chinese (or English) text assembled from templates, seeded by the SHA-256 of (image
bytes, prompt text), and grounded only in what is cheap to measure: size, orientation, dominant
colours, brightness, and - with `--ocr` - text recognised by RapidOCR.
"""


from __future__ import annotations

import asyncio
import io
import math
import random
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from PIL import Image, UnidentifiedImageError

# Qwen2.5-VL turns each 28x28 pixel patch into one visual token; vLLM's defaults for its processor.
PATCH = 28
QWEN_MIN_PIXELS = 4 * PATCH * PATCH
QWEN_MAX_PIXELS = 16384 * PATCH * PATCH
MAX_MODEL_LEN = 32768

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


def _region_cells(grid: int) -> dict[str, list[int]]:
    """The flat indices of each half of a grid x grid image, in raster order (the order ties are broken in)."""
    half = grid // 2
    rows = [range(y * grid, (y + 1) * grid) for y in range(grid)]
    return {
        "top": [i for row in rows[:half] for i in row],
        "bottom": [i for row in rows[half:] for i in row],
        "left": [i for row in rows for i in row[:half]],
        "right": [i for row in rows for i in row[half:]],
    }


# Built once: the same for every image.
_REGION_CELLS = _region_cells(STATS_GRID)


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

    return ImageFeatures(
        sha256=sha256,
        width=width,
        height=height,
        format=fmt,
        colours=colours,
        brightness=sum(luma) / total / 255,
        saturation=sum(s for _, s, _ in hsv) / total / 255,
        regions={k: Counter(names[i] for i in idx).most_common(1)[0][0] for k, idx in _REGION_CELLS.items()},
        region_brightness={k: sum(luma[i] for i in idx) / len(idx) / 255 for k, idx in _REGION_CELLS.items()},
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

    def __init__(
        self,
        features: ImageFeatures,
        language: str,
        rng: random.Random,
        extra: str | None = None,
        extra_rng: random.Random | None = None,
    ) -> None:
        self.f = features
        self.zh = language == "zh"
        self.rng = rng
        # An injected false sentence (see judging.py) and the RNG that places it: a separate RNG, so
        # the answer around it is the same text as without it.
        self.extra = extra
        self.extra_rng = extra_rng or random.Random(0)

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
        pairs = [(self.pick(qz, qe), answer()) for qz, qe, answer in chosen]
        if self.extra:
            i = self.extra_rng.randrange(len(pairs))
            pairs[i] = (pairs[i][0], self.join(pairs[i][1], self.extra))
        return "\n\n".join(f"{user}{question}\n\n{assistant}{answer}" for question, answer in pairs)

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
        if self.extra:
            answer = self.join(answer, self.extra)
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
        parts = [opening, *middle, light, text, self.sky_hint(), closing]
        if self.extra:
            parts.insert(self.extra_rng.randrange(1, len(parts)), self.extra)
        return self.join(*parts)


def compose_answer(
    task: str,
    language: str,
    features: ImageFeatures | None,
    rng: random.Random,
    extra: str | None = None,
    extra_rng: random.Random | None = None,
) -> str:
    """The stand-in's reply for one request, before any fault or max_tokens cut.

    `extra` is an injected false sentence (judging.plan_injection), placed by `extra_rng` into one
    answer as a sentence of its own; without it the text is exactly what it always was."""
    if features is None:
        return {
            "zh": "这条消息里没有图片。请附上一张图片，我再根据图片内容回答。",
            "en": "There is no image in this message. Please attach one and I will answer about it.",
        }[language]
    writer = AnswerWriter(features, language, rng, extra, extra_rng)
    if task == "conversation":
        return writer.conversation()
    if task == "complex_reasoning":
        return writer.reasoning()
    return writer.description()
