"""Decide whether downloaded bytes are a usable image, and make the model-ready copy.

Pure functions over bytes (no I/O), so the crawler's pipeline runs them in a worker thread and the
tests run them directly. Every rejection carries one reason from `REJECT_REASONS`.

The model-ready copy follows Qwen2.5-VL's `smart_resize` (qwen-vl-utils): both sides are multiples of
the 28-px patch, the pixel count sits inside [min_pixels, max_pixels], the aspect ratio is kept.
Resizing on our side means the VLM sees exactly the pixels we stored and paid tokens for.

Pillow reads every header and makes every decision (format, size and bomb limits, frames, mode, EXIF
orientation) before a pixel is decoded. The pixels then travel as arrays through the pHash, the resize
and the encode, without round trips between Pillow images and arrays (docs/BENCHMARKS.md has the costs).

- A colour JPEG without an EXIF rotation (the common web photo) stays in the Y, Cb and Cr planes it is
  stored in, each at its own resolution (libjpeg-turbo's planar API, through PyTurboJPEG): the decoder
  skips the chroma upsampling and the colour conversion, the resize touches half the samples of an RGB
  image, the encoder skips the conversion back and the chroma downsampling, and the pHash reads the Y
  plane as it is.
- A grey JPEG without a rotation is decoded by OpenCV into a BGR array; it wraps the same libjpeg-turbo
  as Pillow, so the pixels are identical (a test checks).
- Everything else, and any JPEG that is not complete, is decoded by Pillow and converted to BGR.

Hostile bytes are refused by their structure (docs/OPERATIONS.md, Security, lists every bound).
Before a pixel is decoded: a progressive JPEG with more scans than any encoder writes (`scan_bomb`:
each scan walks the whole image again) and a header whose decode would need more memory than the
per-image budget (`decode_memory`). Right after the decode, before any conversion: a JPEG that libjpeg
says ran out of data with a large part of the picture left flat, and a PNG whose pixel data holds
fewer rows than its header declares (`corrupt`). Whatever still raises while a file is inspected is a
`corrupt` rejection, never an exception. The CPU time, wall time and memory of one inspection are
bounded by the crawler's worker processes (tuwen_crawler.image_pool), which enforce the `job_*`
fields of ImageLimits.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import math
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from turbojpeg import TJFLAG_LIMITSCANS, TJPF_GRAY, TJSAMP_420, TJCS_YCbCr, TurboJPEG

from tuwen.config import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, QWEN_PATCH, Settings

logger = logging.getLogger(__name__)

# Reasons an image (with bytes in hand) is refused. The crawler adds reasons for URLs that never
# yield bytes (http_404, robots_disallowed, ...), see tuwen_crawler.outcomes.
REJECT_REASONS = (
    "not_image",
    "corrupt",
    "too_small",
    "extreme_aspect",
    "too_many_pixels",
    "decompression_bomb",
    "animated",
    "unsupported_mode",
    "scan_bomb",  # a progressive JPEG with more scans than ImageLimits.max_jpeg_scans
    "decode_memory",  # decoding would take more than the memory budget (by the header, or the worker's cap)
    "decode_timeout",  # the inspection ran past its CPU or wall-time limit in a worker process
)

# Formats a browser shows in <img>; anything else Pillow can read (PSD, EPS, ICNS, ...) is not a web image.
WEB_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "MPO"})
# Modes we can faithfully bring to RGB; 16/32-bit and float modes are scientific data, not photos.
CONVERTIBLE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})

# A model copy with at most this many distinct colours (on a 64x64 probe) is a graphic, chart or
# text screenshot: PNG keeps its hard edges legible for OCR and the VLM; everything else is a photo
# and goes to JPEG, which is 5-10x smaller for photos at no visible cost.
PNG_MAX_COLOURS = 256
JPEG_QUALITY = 90
# Callers work on many images at once (the crawler's worker threads); OpenCV's own thread pool per
# resize would only oversubscribe the cores.
cv2.setNumThreads(1)
# pHash input: the shorter side box-reduced to about this (>= 4x the 32-px DCT grid pHash uses).
PHASH_SOURCE_SIDE = 128
ORIENTATION_TAG = 0x0112  # EXIF


@dataclass(frozen=True)
class ImageLimits:
    min_side: int = 224
    max_aspect: float = 8.0  # longer/shorter side; banners and separators make useless samples
    # Above this a web image is implausible (34 MP panoramas exist, but decoding one costs ~100 MB and
    # the model sees 1 MP anyway).
    max_source_pixels: int = 30_000_000
    # Pillow's own bomb threshold (2 x MAX_IMAGE_PIXELS, ~179 MP): a header claiming more is an attack
    # or a broken file, never a photo. Checked from the header, before decoding anything.
    bomb_pixels: int = 2 * int(Image.MAX_IMAGE_PIXELS or 89_478_485)
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_pixels: int = DEFAULT_MIN_PIXELS
    patch: int = QWEN_PATCH
    # libjpeg's progressive script writes 10 scans for a colour image (6 for grey); every scan makes
    # the decoder walk all of the image's blocks again, so a file repeating scans costs seconds.
    max_jpeg_scans: int = 64
    # Peak memory of one image's decode and conversions, estimated from its header (see
    # decode_bytes_per_pixel): every colour JPEG up to max_source_pixels fits, a 30 MP RGBA PNG does not.
    max_decode_bytes: int = 256 << 20
    # What one inspection may take in an image worker process (tuwen_crawler.image_pool). A 30 MP
    # photo takes well under a second of CPU; the wall limit allows for a crowded machine.
    job_cpu_seconds: int = 10
    job_wall_seconds: float = 60.0
    # Address space a job may add to a warmed-up worker: the decode budget and room for the
    # libraries' own buffers.
    job_memory_bytes: int = 1 << 30

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ImageLimits:
        return cls(min_side=settings.min_image_side, max_pixels=settings.max_pixels,
                   min_pixels=settings.min_pixels, **overrides)


@dataclass(frozen=True)
class ModelCopy:
    data: bytes
    width: int
    height: int
    mime: str
    ext: str


@dataclass(frozen=True)
class ImageDecision:
    accepted: bool
    reason: str | None
    sha256: str
    n_bytes: int
    width: int | None = None
    height: int | None = None
    format: str | None = None  # Pillow's format name, e.g. JPEG
    phash: int | None = None  # signed 64-bit, fits PostgreSQL BIGINT
    model: ModelCopy | None = None

    @property
    def original_ext(self) -> str:
        return {"JPEG": "jpg", "MPO": "jpg"}.get(self.format or "", (self.format or "bin").lower())

    @property
    def original_mime(self) -> str:
        return Image.MIME.get(self.format or "", "application/octet-stream")


def smart_resize(height: int, width: int, *, factor: int = QWEN_PATCH, min_pixels: int = DEFAULT_MIN_PIXELS,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Qwen2.5-VL's rule: round sides to the nearest multiple of `factor`, then scale into the budget."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def perceptual_hash(pixels: Image.Image | np.ndarray) -> imagehash.ImageHash:
    """imagehash's 64-bit pHash of the image's luma, box-reduced first to a shorter side of about 128 px.

    `pixels` is a Pillow image, a BGR array (OpenCV's order) or a luma plane (a JPEG's Y). pHash only
    looks at the luma downscaled to 32x32, and imagehash gets there with one Lanczos pass over every
    pixel; a box reduction by an integer factor first costs a fraction of that. Luma is ITU-R BT.601's in every case (a JPEG's Y is
    the same weighted sum the decoder would otherwise turn back into RGB), so a photo's pHash from its
    Y plane and from its RGB pixels differ only by rounding (a test bounds it). The fixture site checks
    its near-duplicate margins with `phash_of_bytes`, the crawler's own decode, so the two agree bit
    for bit.
    """
    if isinstance(pixels, Image.Image):
        pixels = cv2.cvtColor(np.asarray(pixels if pixels.mode == "RGB" else _to_rgb(pixels)), cv2.COLOR_RGB2BGR)
    height, width = pixels.shape[:2]
    factor = min(height, width) // PHASH_SOURCE_SIDE
    if factor > 1:
        # OpenCV's area interpolation has a fast path for whole factors: crop to a multiple of it.
        rows, cols = height // factor, width // factor
        pixels = cv2.resize(pixels[:rows * factor, :cols * factor], (cols, rows), interpolation=cv2.INTER_AREA)
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    return imagehash.phash(Image.fromarray(np.ascontiguousarray(pixels), "L"))


def phash_int64(pixels: Image.Image | np.ndarray) -> int:
    """The 64-bit pHash as a signed integer (PostgreSQL has no unsigned BIGINT)."""
    unsigned = int(str(perceptual_hash(pixels)), 16)
    return unsigned - (1 << 64) if unsigned >= (1 << 63) else unsigned


def hamming64(a: int, b: int) -> int:
    return ((a ^ b) & 0xFFFF_FFFF_FFFF_FFFF).bit_count()


def _reject(reason: str, sha: str, n_bytes: int, **fields: object) -> ImageDecision:
    return ImageDecision(accepted=False, reason=reason, sha256=sha, n_bytes=n_bytes, **fields)  # type: ignore[arg-type]


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels have arbitrary colour underneath; compose on white as a browser page would show it.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")  # no copy of what is RGB already


class YCbCrPlanes(NamedTuple):
    """A JPEG's pixels as stored: full-resolution luma, chroma at the file's subsampling."""

    y: np.ndarray
    cb: np.ndarray
    cr: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.y.shape[:2]

    @property
    def chroma_step(self) -> tuple[int, int]:
        """Luma rows and columns per chroma sample (2, 2 for 4:2:0), from the planes' shapes."""
        return -(-self.y.shape[0] // self.cb.shape[0]), -(-self.y.shape[1] // self.cb.shape[1])


@functools.cache
def turbojpeg() -> TurboJPEG:
    """libjpeg-turbo's TurboJPEG API, loaded once per process; a clear error where it is missing."""
    try:
        return TurboJPEG()
    except (OSError, RuntimeError) as exc:
        raise RuntimeError("libjpeg-turbo's TurboJPEG library is missing: install the Debian package "
                           "libturbojpeg0 (scripts/system-deps.sh does)") from exc


class DamagedImage(Exception):
    """The file's data is damaged in a way a decoder papers over (libjpeg fills what it lost with grey)."""


# A start-of-scan or any other JPEG marker in marker position: 0xFF then a code that is neither a
# stuffed zero, a restart marker nor another 0xFF (fill).
_JPEG_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_JPEG_SOS = 0xDA
_JPEG_EOI = 0xD9


def jpeg_scan_count(data: bytes, stop_after: int) -> int:
    """The scans (start-of-scan markers) of a JPEG, counted until one more than `stop_after`.

    Counting the bytes FF DA is an upper bound (C speed) that settles every ordinary file; above
    `stop_after` the markers are walked segment by segment, since the same two bytes may sit inside
    metadata (an EXIF thumbnail is a JPEG of its own). Linear in the file either way."""
    upper = data.count(b"\xff\xda")
    if upper <= stop_after:
        return upper
    scans, pos = 0, 2
    while (match := _JPEG_MARKER.search(data, pos)) is not None:
        marker, pos = data[match.start() + 1], match.end()
        if marker == _JPEG_EOI:
            break
        if marker == _JPEG_SOS:
            scans += 1
            if scans > stop_after:
                break
        if marker != 0x01 and pos + 2 <= len(data):  # TEM has no length; every other marker here does
            pos += int.from_bytes(data[pos:pos + 2], "big")  # skip the segment (a scan's header only)
    return scans


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # per IHDR colour type
# (first row, first column, row step, column step) of Adam7's seven passes.
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))


def png_data_is_short(data: bytes) -> bool:
    """Whether a PNG's pixel data (its IDAT chunks, inflated) holds fewer bytes than its header's rows
    need. Pillow stops quietly where a complete zlib stream ends and returns the missing rows blank,
    so a 40-row file can pass as 3000x3000. Inflated in 1 MB pieces that are thrown away."""
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    bits = _PNG_CHANNELS.get(colour, 1) * depth
    if interlace:
        passes = [(-(-(width - c0) // cs), -(-(height - r0) // rs)) for r0, c0, rs, cs in _ADAM7]
        expected = sum((1 + (w * bits + 7) // 8) * h for w, h in passes if w > 0 and h > 0)
    else:
        expected = (1 + (width * bits + 7) // 8) * height
    view, inflater, produced, pos = memoryview(data), zlib.decompressobj(), 0, 8
    while pos + 8 <= len(data) and produced < expected and not inflater.eof:
        length, kind = struct.unpack(">I4s", view[pos:pos + 8])
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            pending: bytes | memoryview = view[pos + 8:pos + 8 + length]
            while pending and produced < expected and not inflater.eof:
                produced += len(inflater.decompress(pending, 1 << 20))
                pending = inflater.unconsumed_tail
        pos += 12 + length
    return produced < expected


def _png_may_be_short(image: Image.Image) -> bool:
    """Whether a decoded PNG needs png_data_is_short: rows Pillow had no data for stay blank (all zero),
    so a last row with data settles it without inflating the file again. Interlaced files spread the
    missing data over every row and are always checked."""
    if image.info.get("interlace"):
        return True
    return image.crop((0, image.height - 1, image.width, image.height)).getbbox() is None


def webp_canvas_size(data: bytes) -> tuple[int, int] | None:
    """A WebP's canvas from its first chunk, read before Pillow opens it: Pillow's WebP decoder
    allocates the whole canvas (twice) as it opens the file."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


_TRANSPARENT_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def decode_bytes_per_pixel(image: Image.Image) -> int:
    """Peak bytes per pixel of inspecting `image` (opened, not decoded): what its decode and the
    conversions to a BGR array hold at once. A plain JPEG goes to libjpeg-turbo's planes or OpenCV's
    BGR array; everything else is Pillow's image (4 bytes a pixel for all but 1-byte modes; a WebP's
    decoder keeps two canvases and a copy besides), its RGB conversion (on white, through RGBA, when
    transparent), the array and its BGR copy."""
    if image.format in ("JPEG", "MPO"):
        rotated = image.getexif().get(ORIENTATION_TAG, 1) != 1  # parsed from APP1 as the file opened
    else:
        rotated = "exif" in image.info  # reading it could mean decoding first (a PNG's eXIf after IDAT)
    if image.format == "JPEG" and image.mode in ("RGB", "L") and not rotated:
        return 6
    stored = 1 if image.mode in ("1", "L", "P") else 4
    decoder = 12 if image.format == "WEBP" else 0
    transparent = image.mode in _TRANSPARENT_MODES or (image.mode == "P" and "transparency" in image.info)
    converted = 8 if transparent else 0 if image.mode == "RGB" else 4
    return stored + decoder + converted + (4 if rotated else 0) + 6


# libjpeg-turbo warns (and decodes on) when a JPEG's data is damaged; it also warns about padding
# before a marker, which is harmless and common.
_HARMLESS_JPEG_WARNING = "extraneous bytes before marker"
# A damaged JPEG is refused when at least this share of its rows, counted from the bottom, came out
# flat: what libjpeg could not decode it fills with one colour. A file a few bytes short (a sliver of
# grey at the bottom, as a browser shows it) is kept.
MAX_FLAT_TAIL_SHARE = 0.1


def _flat_tail_share(luma: np.ndarray) -> float:
    """The share of the rows at the bottom of a luma plane that hold one value (within rounding)."""
    rows = luma.shape[0]
    if rows == 0:
        return 0.0
    varied = np.flatnonzero(np.ptp(luma, axis=1) > 1)
    return (rows - (int(varied[-1]) + 1 if varied.size else 0)) / rows


def _raise_if_damaged(warned: list[warnings.WarningMessage], luma: np.ndarray) -> None:
    """DamagedImage when libjpeg-turbo warned about the data and left a large flat area at the bottom."""
    messages = [str(w.message) for w in warned if issubclass(w.category, UserWarning)
                and _HARMLESS_JPEG_WARNING not in str(w.message)]
    if messages and _flat_tail_share(luma) >= MAX_FLAT_TAIL_SHARE:
        raise DamagedImage(f"libjpeg-turbo: {messages[-1]}; {_flat_tail_share(luma):.0%} of the rows flat")


def _probe_jpeg_damage(data: bytes) -> None:
    """The damage check for a JPEG that does not go through the planar decode: its luma at an eighth
    of the size (libjpeg reads every coefficient but transforms only the DC ones), raising
    DamagedImage as _raise_if_damaged does. A file libjpeg-turbo cannot read this way (CMYK) is left to
    Pillow's decode."""
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        try:
            luma = turbojpeg().decode(data, pixel_format=TJPF_GRAY, scaling_factor=(1, 8),
                                      flags=TJFLAG_LIMITSCANS)[:, :, 0]
        except (OSError, ValueError):
            return
    _raise_if_damaged(warned, luma)


def _is_plain_jpeg(data: bytes, image: Image.Image) -> bool:
    """A JPEG the array decoders read as Pillow would: no EXIF rotation to apply, and complete (ending
    in the end-of-image marker; libjpeg-turbo fills a truncated file with grey where Pillow calls it
    corrupt)."""
    return (image.format == "JPEG" and image.getexif().get(ORIENTATION_TAG, 1) == 1
            and data.rstrip(b"\0").endswith(b"\xff\xd9"))


def _decode_ycbcr_planes(data: bytes, image: Image.Image) -> YCbCrPlanes | None:
    """libjpeg-turbo's planar decode of a plain colour JPEG Pillow has vetted; None when it does not apply
    or libjpeg-turbo has anything to say about the file (it would decode it anyway, with a warning).
    DamagedImage when what it says is that much of the picture is missing."""
    if image.mode != "RGB" or not _is_plain_jpeg(data, image):
        return None
    turbo = turbojpeg()
    try:
        # PyTurboJPEG reports libjpeg-turbo's warnings (corrupt data it decoded anyway) as Python
        # warnings. Recorded, not raised: the filters are process-wide, and in the crawler's thread mode
        # an "error" filter would turn other threads' warnings into exceptions.
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            if turbo.decode_header(data)[3] != TJCS_YCbCr:  # grey, or an Adobe RGB/CMYK transform
                return None
            planes = turbo.decode_to_yuv_planes(data, flags=TJFLAG_LIMITSCANS)
    except OSError:
        return None
    if warned:
        _raise_if_damaged(warned, planes[0][:image.height, :image.width])
        return None
    if len(planes) != 3 or planes[0].shape[0] < image.height or planes[0].shape[1] < image.width:
        return None
    # The planes are padded to whole chroma samples; crop each to the samples of the real image.
    padded = YCbCrPlanes(*planes)
    row_step, col_step = padded.chroma_step
    rows, cols = -(-image.height // row_step), -(-image.width // col_step)
    return YCbCrPlanes(padded.y[:image.height, :image.width], padded.cb[:rows, :cols], padded.cr[:rows, :cols])


def _decode_plain_jpeg(data: bytes, image: Image.Image) -> np.ndarray | None:
    """OpenCV's decode of a plain JPEG Pillow has vetted, as a BGR array; None when Pillow must decode it."""
    if image.mode not in ("RGB", "L") or not _is_plain_jpeg(data, image):
        return None
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        return None
    if pixels is None or pixels.shape[:2] != (image.height, image.width):
        return None
    return pixels


def planes_to_bgr(planes: YCbCrPlanes) -> np.ndarray:
    """The planes as a BGR array: chroma upsampled bilinearly by its whole subsampling factor (as
    libjpeg's "fancy" upsampling does) and cropped, then JFIF's YCbCr to RGB, which is OpenCV's YCrCb."""
    rows, cols = planes.shape
    row_step, col_step = planes.chroma_step
    size = (planes.cb.shape[1] * col_step, planes.cb.shape[0] * row_step)
    cr, cb = (cv2.resize(p, size, interpolation=cv2.INTER_LINEAR)[:rows, :cols] for p in (planes.cr, planes.cb))
    return cv2.cvtColor(cv2.merge([planes.y, cr, cb]), cv2.COLOR_YCrCb2BGR)


def _looks_like_graphic(pixels: np.ndarray | YCbCrPlanes) -> bool:
    """At most PNG_MAX_COLOURS distinct colours (BGR or YCbCr triples) on a 64x64 nearest-pixel probe."""
    channels = pixels if isinstance(pixels, YCbCrPlanes) else cv2.split(pixels)
    probe = [cv2.resize(c, (64, 64), interpolation=cv2.INTER_NEAREST).ravel().astype(np.uint32) for c in channels]
    # Distinct colours by sorting, which is cheaper than numpy 2's hash-based np.unique at this size.
    colours = np.sort((probe[0] << 16) | (probe[1] << 8) | probe[2])
    return int(np.count_nonzero(np.diff(colours))) + 1 <= PNG_MAX_COLOURS


def resize_pixels(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an array (BGR or one plane) with OpenCV: bilinear for the usual small change (smart_resize
    mostly rounds the sides to the next multiple of 28), pixel-area averaging when a side shrinks more
    than twofold so that big photos do not alias. OpenCV's resize is several times faster than Pillow's
    bicubic, which was the largest single cost of a crawled image."""
    rows, cols = pixels.shape[:2]
    if (width, height) == (cols, rows):
        return pixels
    shrinks_a_lot = width * 2 < cols or height * 2 < rows
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA if shrinks_a_lot else cv2.INTER_LINEAR)


def _encode_planes(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> bytes:
    """JPEG from 4:2:0 planes. TurboJPEG takes them packed one after another, rows padded to 4 bytes."""
    padded = [(plane, -(-plane.shape[1] // 4) * 4) for plane in (y, cb, cr)]
    packed = np.zeros(sum(plane.shape[0] * width for plane, width in padded), np.uint8)
    offset = 0
    for plane, width in padded:
        size = plane.shape[0] * width
        packed[offset:offset + size].reshape(plane.shape[0], width)[:, :plane.shape[1]] = plane
        offset += size
    return turbojpeg().encode_from_yuv(packed, y.shape[0], y.shape[1], quality=JPEG_QUALITY,
                                        jpeg_subsample=TJSAMP_420)


def resize_planes(planes: YCbCrPlanes, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The planes resized for a 4:2:0 encode of `width` x `height` (both even: smart_resize's sides are
    multiples of 28, so the chroma is exactly half of each)."""
    half = (width // 2, height // 2)
    return (resize_pixels(planes.y, width, height), resize_pixels(planes.cb, *half),
            resize_pixels(planes.cr, *half))


def make_model_copy(pixels: np.ndarray | YCbCrPlanes, limits: ImageLimits) -> ModelCopy:
    """The model-ready copy of a BGR array or a JPEG's planes: PNG for graphics, JPEG for photos."""
    rows, cols = pixels.shape[:2]
    height, width = smart_resize(rows, cols, factor=limits.patch, min_pixels=limits.min_pixels,
                                 max_pixels=limits.max_pixels)
    graphic = _looks_like_graphic(pixels)
    if isinstance(pixels, YCbCrPlanes):
        if not graphic:
            data = _encode_planes(*resize_planes(pixels, width, height))
            return ModelCopy(data, width, height, "image/jpeg", "jpg")
        pixels = planes_to_bgr(pixels)
    resized = resize_pixels(pixels, width, height)
    if graphic:
        ok, encoded = cv2.imencode(".png", resized, [cv2.IMWRITE_PNG_COMPRESSION, 6])
        mime, ext = "image/png", "png"
    else:
        ok, encoded = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        mime, ext = "image/jpeg", "jpg"
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {width}x{height} {ext}")
    return ModelCopy(encoded.tobytes(), width, height, mime, ext)


def inspect_and_normalize(data: bytes, content_type: str | None = None,
                          limits: ImageLimits | None = None) -> ImageDecision:
    """Decode `data` safely and either reject it with a reason or accept it with hashes and a model copy.

    `content_type` is the server's claim; it is only used to word the verdict, never trusted: the bytes
    decide (servers label WebP as image/jpeg and images as application/octet-stream all the time).
    Never raises for anything in `data`: whatever a decoder raises on it is a `corrupt` rejection (an
    allocation that fails, under a worker's memory cap, is `decode_memory`).
    """
    limits = limits or ImageLimits()
    sha = hashlib.sha256(data).hexdigest()
    n_bytes = len(data)
    try:
        return _inspect(data, limits, sha, n_bytes)
    except MemoryError:
        return _reject("decode_memory", sha, n_bytes)
    except cv2.error as exc:
        reason = "decode_memory" if "Insufficient memory" in str(exc) else "corrupt"
        logger.warning("image %s: OpenCV failed on it (%s); rejected as %s", sha[:16], _short(exc), reason)
        return _reject(reason, sha, n_bytes)
    except DamagedImage as exc:
        logger.info("image %s: %s; rejected as corrupt", sha[:16], exc)
        return _reject("corrupt", sha, n_bytes)
    except Exception as exc:  # a decoder's error on hostile bytes, whatever its class: the bytes' verdict
        logger.warning("image %s: %s while inspecting it (%s); rejected as corrupt", sha[:16],
                       type(exc).__name__, _short(exc))
        return _reject("corrupt", sha, n_bytes)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


def _pixel_reason(n_pixels: int, limits: ImageLimits) -> str | None:
    """The reason a declared size is refused before decoding, if it is."""
    if n_pixels <= 0:
        return "corrupt"
    if n_pixels > limits.max_source_pixels:
        return "decompression_bomb" if n_pixels > limits.bomb_pixels else "too_many_pixels"
    return None


def _inspect(data: bytes, limits: ImageLimits, sha: str, n_bytes: int) -> ImageDecision:
    if not data:
        return _reject("not_image", sha, n_bytes)
    canvas = webp_canvas_size(data)
    if canvas is not None and (reason := _pixel_reason(canvas[0] * canvas[1], limits)) is not None:
        return _reject(reason, sha, n_bytes, width=canvas[0], height=canvas[1], format="WEBP")
    try:
        # Our own checks below replace Pillow's global MAX_IMAGE_PIXELS; silence its warning so a big
        # but legitimate image is not logged as an attack.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        return _reject("decompression_bomb", sha, n_bytes)
    except UnidentifiedImageError:
        return _reject("not_image", sha, n_bytes)

    with image:
        fmt = image.format
        width, height = image.size
        meta = {"width": width, "height": height, "format": fmt}
        if fmt not in WEB_FORMATS:
            return _reject("not_image", sha, n_bytes, **meta)
        # Size, frames, mode, memory and structure come from the headers alone, before a pixel is decoded.
        if (reason := _pixel_reason(width * height, limits)) is not None:
            return _reject(reason, sha, n_bytes, **meta)
        # is_animated looks for a second frame; n_frames would read every frame of a GIF to count them.
        if getattr(image, "is_animated", False) and fmt != "MPO":
            # MPO is a JPEG with a stereo/preview frame, not an animation.
            return _reject("animated", sha, n_bytes, **meta)
        if image.mode not in CONVERTIBLE_MODES:
            return _reject("unsupported_mode", sha, n_bytes, **meta)
        if width * height * decode_bytes_per_pixel(image) > limits.max_decode_bytes:
            return _reject("decode_memory", sha, n_bytes, **meta)
        # Only a progressive JPEG can cover every block with a few bytes per scan (end-of-band runs); a
        # sequential scan codes each block, so its decoding work grows with the file, not faster.
        if (image.info.get("progressive")
                and jpeg_scan_count(data, limits.max_jpeg_scans) > limits.max_jpeg_scans):
            return _reject("scan_bomb", sha, n_bytes, **meta)
        pixels: np.ndarray | YCbCrPlanes | None = _decode_ycbcr_planes(data, image)
        if pixels is None and fmt in ("JPEG", "MPO"):
            _probe_jpeg_damage(data)
        if pixels is None:
            pixels = _decode_plain_jpeg(data, image)
        if pixels is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    image.load()
                    # In place: without an Orientation tag this copies nothing.
                    ImageOps.exif_transpose(image, in_place=True)
            except Image.DecompressionBombError:
                return _reject("decompression_bomb", sha, n_bytes, **meta)
            if fmt == "PNG" and _png_may_be_short(image) and png_data_is_short(data):
                return _reject("corrupt", sha, n_bytes, **meta)
        # Display size after EXIF rotation is what a reader (and the model) sees.
        width, height = image.size
        meta = {"width": width, "height": height, "format": fmt}
        if min(width, height) < limits.min_side:
            return _reject("too_small", sha, n_bytes, **meta)
        if max(width, height) / min(width, height) > limits.max_aspect:
            return _reject("extreme_aspect", sha, n_bytes, **meta)
        if pixels is None:
            pixels = cv2.cvtColor(np.asarray(_to_rgb(image)), cv2.COLOR_RGB2BGR)
        return ImageDecision(
            accepted=True, reason=None, sha256=sha, n_bytes=n_bytes, width=width, height=height, format=fmt,
            phash=phash_int64(pixels.y if isinstance(pixels, YCbCrPlanes) else pixels),
            model=make_model_copy(pixels, limits),
        )


def phash_of_bytes(data: bytes) -> int:
    """The pHash the crawler stores for an image file (its decode, its luma), whatever its size."""
    decision = inspect_and_normalize(data, limits=ImageLimits(min_side=1, max_aspect=math.inf))
    if decision.phash is None:
        raise ValueError(f"not a decodable image: {decision.reason}")
    return decision.phash


def warm_up() -> None:
    """Run the whole accepting path once on a small generated photo: a fresh worker process imports
    and initialises its libraries here (OpenCV, SciPy's DCT under imagehash) instead of on a real image."""
    noise = np.random.default_rng(0).integers(0, 256, (280, 280, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", noise)
    if ok:
        inspect_and_normalize(encoded.tobytes(), "image/jpeg")
