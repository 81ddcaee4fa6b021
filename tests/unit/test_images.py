"""Unit tests for tuwen.crawl.images: verdicts, hashes and the model-ready copy, on bytes made here."""

from __future__ import annotations

import hashlib
import io
import math
import statistics
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from tuwen.crawl import images
from tuwen.crawl.images import (
    PNG_MAX_COLOURS,
    ImageLimits,
    YCbCrPlanes,
    _decode_plain_jpeg,
    _decode_ycbcr_planes,
    _looks_like_graphic,
    hamming64,
    inspect_and_normalize,
    phash_int64,
    phash_of_bytes,
    planes_to_bgr,
    smart_resize,
)
from tuwen.local.fixture_site import _bomb_png

LIMITS = ImageLimits()
NEAR_DUP_DISTANCE = 6  # the crawler's default TUWEN_NEAR_DUP_DISTANCE


def photo(width: int, height: int, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    noisy = base + rng.integers(-12, 13, size=base.shape, dtype=np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize(("height", "width"), [(224, 224), (600, 800), (3000, 4000), (224, 1790), (50, 60),
                                               (1080, 1920), (7000, 1000), (333, 777)])
def test_smart_resize_keeps_patch_multiples_and_the_budget(height: int, width: int) -> None:
    h, w = smart_resize(height, width, min_pixels=4 * 28 * 28, max_pixels=1280 * 28 * 28)
    assert h % 28 == 0 and w % 28 == 0
    assert 4 * 28 * 28 <= h * w <= 1280 * 28 * 28
    assert abs(math.log((w / h) / (width / height))) < 0.25  # aspect kept within rounding


def test_smart_resize_matches_qwen_on_known_values() -> None:
    # Qwen2.5-VL rounds to the nearest multiple of 28 when within budget...
    assert smart_resize(600, 800) == (588, 812)
    # ...and scales down by sqrt(pixels / max_pixels) with floor otherwise.
    assert smart_resize(3000, 4000) == (840, 1148)  # beta = sqrt(12e6 / 1003520) = 3.458


def test_accepted_photo_has_hashes_and_a_jpeg_model_copy() -> None:
    data = encode(photo(1600, 1200))
    decision = inspect_and_normalize(data, "image/jpeg", LIMITS)
    assert decision.accepted and decision.reason is None
    assert decision.sha256 == hashlib.sha256(data).hexdigest()
    assert (decision.width, decision.height, decision.format) == (1600, 1200, "JPEG")
    assert -(2**63) <= decision.phash < 2**63
    model = decision.model
    assert model is not None and model.mime == "image/jpeg" and model.ext == "jpg"
    assert model.width % 28 == 0 and model.height % 28 == 0 and model.width * model.height <= LIMITS.max_pixels
    with Image.open(io.BytesIO(model.data)) as copy:
        assert copy.size == (model.width, model.height) and copy.mode == "RGB"


def test_flat_graphic_gets_a_png_model_copy() -> None:
    graphic = Image.new("RGB", (600, 400), (255, 255, 255))
    graphic.paste((200, 0, 0), (50, 50, 300, 200))
    decision = inspect_and_normalize(encode(graphic, "PNG"), "image/png", LIMITS)
    assert decision.accepted and decision.model is not None and decision.model.mime == "image/png"


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(photo(500, 300), "JPEG", exif=exif.tobytes())
    decision = inspect_and_normalize(data, "image/jpeg", LIMITS)
    assert decision.accepted and (decision.width, decision.height) == (300, 500)
    assert decision.model is not None and decision.model.height > decision.model.width


def test_transparent_and_grayscale_images_become_rgb() -> None:
    rgba = photo(400, 400).convert("RGBA")
    rgba.putalpha(128)
    for data in (encode(rgba, "PNG"), encode(photo(400, 300).convert("L"), "JPEG")):
        decision = inspect_and_normalize(data, None, LIMITS)
        assert decision.accepted
        with Image.open(io.BytesIO(decision.model.data)) as copy:  # type: ignore[union-attr]
            assert copy.mode == "RGB"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not_image"),
        (b"<!DOCTYPE html><html><body>404</body></html>", "not_image"),
        (encode(photo(100, 80)), "too_small"),
        (encode(photo(400, 223)), "too_small"),
        (encode(photo(3000, 250)), "extreme_aspect"),
        (encode(photo(900, 600))[:4000], "corrupt"),
        (_bomb_png(20000, 20000), "decompression_bomb"),
        (_bomb_png(6000, 5001), "too_many_pixels"),
        (encode(Image.fromarray(np.zeros((300, 300), dtype=np.uint16) + 1000), "PNG"), "unsupported_mode"),
    ],
    ids=["empty", "html", "tiny", "short-side-223", "strip", "truncated", "bomb", "34mp", "16-bit"],
)
def test_rejections_carry_their_reason(data: bytes, reason: str) -> None:
    decision = inspect_and_normalize(data, "image/jpeg", LIMITS)
    assert not decision.accepted
    assert decision.reason == reason
    assert decision.model is None and decision.phash is None


def test_animated_gif_is_rejected_single_frame_gif_accepted() -> None:
    frames = [photo(320, 240, seed).quantize(64) for seed in range(3)]
    animated = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert inspect_and_normalize(animated, "image/gif", LIMITS).reason == "animated"
    assert inspect_and_normalize(encode(frames[0], "GIF"), "image/gif", LIMITS).accepted


def test_boundary_side_224_is_kept() -> None:
    assert inspect_and_normalize(encode(photo(480, 224)), "image/jpeg", LIMITS).accepted


def test_phash_sees_reencoding_as_near_and_other_pictures_as_far() -> None:
    original = photo(800, 600, seed=3)
    again = Image.open(io.BytesIO(encode(original, "JPEG", quality=50)))
    other = photo(800, 600, seed=4)
    assert hamming64(phash_int64(original), phash_int64(again)) <= 4
    assert hamming64(phash_int64(original), phash_int64(other)) > 10
    assert hamming64(-1, 0) == 64


def pillow_bgr(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)


@pytest.mark.parametrize("variant", ["420", "444", "progressive", "grey"])
def test_opencv_decodes_plain_jpegs_to_the_same_pixels_as_pillow(variant: str) -> None:
    image = photo(943, 707, seed=5)
    options: dict[str, object] = {"quality": 88}
    if variant == "444":
        options["subsampling"] = 0
    if variant == "progressive":
        options["progressive"] = True
    if variant == "grey":
        image = image.convert("L")
    data = encode(image, "JPEG", **options)
    with Image.open(io.BytesIO(data)) as header:
        decoded = _decode_plain_jpeg(data, header)
    assert decoded is not None and decoded.shape == (707, 943, 3)
    assert np.array_equal(decoded, pillow_bgr(data))


def test_pillow_decodes_what_opencv_would_read_differently() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encode(photo(500, 300), "JPEG", exif=exif.tobytes())
    truncated = encode(photo(900, 600))[:-2000]
    cmyk = encode(photo(400, 300).convert("CMYK"), "JPEG")
    for data in (rotated, truncated, cmyk, encode(photo(400, 300), "PNG")):
        with Image.open(io.BytesIO(data)) as header:
            assert _decode_plain_jpeg(data, header) is None
    # The truncated file is refused as Pillow refuses it, not read with OpenCV's grey fill.
    assert inspect_and_normalize(truncated, "image/jpeg", LIMITS).reason == "corrupt"


def jpeg_variant(image: Image.Image, variant: str) -> bytes:
    options: dict[str, object] = {"quality": 95}
    if variant in ("444", "422"):
        options["subsampling"] = {"444": 0, "422": 1}[variant]
    if variant == "progressive":
        options["progressive"] = True
    return encode(image, "JPEG", **options)


@pytest.mark.parametrize("variant", ["420", "444", "422", "progressive"])
@pytest.mark.parametrize(("width", "height", "model_size"), [(943, 707, (952, 700)), (701, 499, (700, 504))])
def test_model_copy_holds_the_resized_picture(variant: str, width: int, height: int,
                                              model_size: tuple[int, int]) -> None:
    # Odd sides leave a half chroma sample to crop; 700 px makes 350-px chroma rows that TurboJPEG pads.
    data = jpeg_variant(photo(width, height, seed=8), variant)
    model = inspect_and_normalize(data, "image/jpeg", LIMITS).model
    assert model is not None and (model.width, model.height) == model_size and model.mime == "image/jpeg"
    expected = cv2.resize(pillow_bgr(data), model_size, interpolation=cv2.INTER_LINEAR)
    with Image.open(io.BytesIO(model.data)) as copy:
        assert copy.size == model_size
        got = cv2.cvtColor(np.asarray(copy.convert("RGB")), cv2.COLOR_RGB2BGR)
    # As faithful as the plain way (decode to BGR, resize, encode at quality 90 and 4:2:0): JPEG noise,
    # plus the chroma detail 4:2:0 drops from a 4:4:4 or 4:2:2 source, not a different picture.
    plain = cv2.imdecode(cv2.imencode(".jpg", expected, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], cv2.IMREAD_COLOR)
    assert np.abs(got.astype(int) - expected).mean() < np.abs(plain.astype(int) - expected).mean() + 0.2
    luma_error = np.abs(cv2.cvtColor(got, cv2.COLOR_BGR2GRAY).astype(int) - cv2.cvtColor(expected, cv2.COLOR_BGR2GRAY))
    assert luma_error.mean() < 2.0
    # Colour channels are not swapped: the photo's mean colour survives the trip.
    assert np.allclose(got.reshape(-1, 3).mean(axis=0), expected.reshape(-1, 3).mean(axis=0), atol=1.5)


@pytest.mark.parametrize("variant", ["420", "444", "422", "progressive"])
def test_colour_jpegs_are_decoded_to_their_planes_and_those_hold_pillows_pixels(variant: str) -> None:
    data = jpeg_variant(photo(943, 707, seed=6), variant)
    with Image.open(io.BytesIO(data)) as header:
        planes = _decode_ycbcr_planes(data, header)
    assert planes is not None and planes.y.shape == (707, 943)
    chroma = {"420": (354, 472), "444": (707, 943), "422": (707, 472), "progressive": (354, 472)}[variant]
    assert planes.cb.shape == planes.cr.shape == chroma
    # Back to BGR they are Pillow's decode up to the upsampling filter and rounding.
    difference = np.abs(planes_to_bgr(planes).astype(int) - pillow_bgr(data))
    assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 4


def test_planes_are_not_used_where_they_would_read_differently() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    for data in (encode(photo(500, 300).convert("L"), "JPEG"), encode(photo(400, 300).convert("CMYK"), "JPEG"),
                 encode(photo(500, 300), "JPEG", exif=exif.tobytes()), encode(photo(900, 600))[:-2000],
                 encode(photo(400, 300), "PNG")):
        with Image.open(io.BytesIO(data)) as header:
            assert _decode_ycbcr_planes(data, header) is None


@pytest.mark.parametrize("variant", ["420", "444"])
def test_phash_of_the_y_plane_is_the_phash_of_the_rgb_pixels_up_to_rounding(variant: str) -> None:
    distances = []
    for seed in range(12):
        data = jpeg_variant(photo(900, 640, seed=20 + seed), variant)
        with Image.open(io.BytesIO(data)) as header:
            planes = _decode_ycbcr_planes(data, header)
        assert isinstance(planes, YCbCrPlanes)
        assert phash_int64(planes.y) == phash_of_bytes(data)  # what the crawler stores
        distances.append(hamming64(phash_int64(planes.y), phash_int64(pillow_bgr(data))))
    # Smooth pictures like these have many coefficients at pHash's median threshold, so rounding flips a
    # pair or two of bits in some (photos far less often), never as many as the near-duplicate distance.
    assert max(distances) <= NEAR_DUP_DISTANCE and statistics.mean(distances) <= NEAR_DUP_DISTANCE / 2


def test_a_graphic_saved_as_jpeg_gets_a_png_model_copy() -> None:
    blocks = np.kron(np.array([[0, 1], [2, 3]]), np.ones((300, 400), dtype=int))
    palette = np.array([[200, 30, 30], [30, 160, 40], [20, 40, 190], [240, 240, 240]], dtype=np.uint8)
    data = encode(Image.fromarray(palette[blocks], "RGB"), "JPEG", quality=100, subsampling=0)
    with Image.open(io.BytesIO(data)) as header:
        assert _decode_ycbcr_planes(data, header) is not None
    model = inspect_and_normalize(data, "image/jpeg", LIMITS).model
    assert model is not None and model.mime == "image/png" and (model.width, model.height) == (812, 588)
    with Image.open(io.BytesIO(model.data)) as copy:
        got = np.asarray(copy.convert("RGB")).astype(int)
    # Each block keeps its colour (RGB order, not swapped).
    for (row, col), colour in zip([(100, 100), (100, 700), (500, 100), (500, 700)], palette, strict=True):
        assert np.abs(got[row, col] - colour).max() <= 3


def test_phash_of_an_image_and_of_its_opencv_array_agree() -> None:
    image = photo(1200, 900, seed=9)
    bgr = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)
    assert phash_int64(image) == phash_int64(bgr) == phash_int64(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    assert phash_int64(bgr) != phash_int64(np.asarray(image))  # the channel order matters, and is honoured


@pytest.mark.parametrize("colours", [1, 255, 256, 257, 4096])
def test_a_model_copy_is_png_up_to_256_distinct_colours(colours: int) -> None:
    # 64 x 64 is the probe's own size, so it sees every pixel: `colours` distinct ones, then repeats.
    values = np.arange(64 * 64) % colours
    bgr = np.stack([values % 256, values // 256, (values * 7) % 256], axis=-1).astype(np.uint8).reshape(64, 64, 3)
    assert len({tuple(p) for p in bgr.reshape(-1, 3)}) == colours
    assert _looks_like_graphic(bgr) == (colours <= PNG_MAX_COLOURS)


def test_a_missing_libjpeg_turbo_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library() -> None:
        raise RuntimeError("Unable to locate turbojpeg library automatically.")

    monkeypatch.setattr(images, "TurboJPEG", no_library)
    images.turbojpeg.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="install the Debian package libturbojpeg0"):
            images.turbojpeg()
    finally:
        monkeypatch.undo()
        images.turbojpeg.cache_clear()
    assert images.turbojpeg() is not None  # loads again once the library is back


def test_a_jpeg_libjpeg_turbo_warns_about_is_refused_when_much_of_it_came_out_flat() -> None:
    # Scrambled bytes mid-scan: libjpeg-turbo decodes around them with a warning instead of failing,
    # and fills everything after the damage (here half the rows) with one colour.
    data = bytearray(encode(photo(500, 400)))
    middle = len(data) // 2
    for i in range(middle, middle + 40):
        data[i] = 0xFF if i % 7 == 0 else data[i] ^ 0x5A
    with Image.open(io.BytesIO(bytes(data))) as header, pytest.raises(images.DamagedImage, match="rows flat"):
        _decode_ycbcr_planes(bytes(data), header)
    decision = inspect_and_normalize(bytes(data), "image/jpeg", LIMITS)
    assert (decision.accepted, decision.reason) == (False, "corrupt")


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_jpeg_with_most_of_its_data_missing_before_a_valid_end_marker_is_corrupt(mode: str) -> None:
    # libjpeg decodes the missing four fifths as flat grey and only warns; colour JPEGs go through
    # the planar decode, grey ones through the eighth-size probe.
    whole = encode(photo(900, 600).convert(mode), quality=90)
    cut = whole[: len(whole) // 5] + b"\xff\xd9"
    decision = inspect_and_normalize(cut, "image/jpeg", LIMITS)
    assert (decision.accepted, decision.reason) == (False, "corrupt")


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_jpeg_a_few_bytes_short_is_kept_as_a_browser_shows_it(mode: str) -> None:
    # The last few dozen bytes missing: a sliver of the last block row is grey; the picture is whole.
    whole = encode(photo(900, 600).convert(mode), quality=90)
    cut = whole[:-40] + b"\xff\xd9"
    decision = inspect_and_normalize(cut, "image/jpeg", LIMITS)
    assert decision.accepted, decision.reason


def test_scans_are_counted_in_marker_position_only() -> None:
    base = encode(photo(640, 480), progressive=True)
    assert images.jpeg_scan_count(base, LIMITS.max_jpeg_scans) == base.count(b"\xff\xda") == 10
    # A comment segment full of the bytes FF DA (an EXIF thumbnail carries real ones) is no scan.
    comment = b"\xff\xda" * 200
    with_comment = base[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + base[2:]
    assert images.jpeg_scan_count(with_comment, LIMITS.max_jpeg_scans) == 10
    assert inspect_and_normalize(with_comment, "image/jpeg", LIMITS).accepted
    # One scan repeated 100 times past the limit is a scan bomb, whatever the file's size.
    last_scan = base.rindex(b"\xff\xda")
    bomb = base[:-2] + base[last_scan:-2] * 100 + b"\xff\xd9"
    assert images.jpeg_scan_count(bomb, LIMITS.max_jpeg_scans) == LIMITS.max_jpeg_scans + 1
    assert inspect_and_normalize(bomb, "image/jpeg", LIMITS).reason == "scan_bomb"


def test_the_decode_memory_budget_refuses_by_the_header_alone() -> None:
    # 2000x1500 RGBA needs ~54 MB through the conversions; a budget of 32 MB refuses it without decoding.
    rgba = photo(2000, 1500).convert("RGBA")
    data = encode(rgba, "PNG", compress_level=1)
    with Image.open(io.BytesIO(data)) as header:
        assert images.decode_bytes_per_pixel(header) == 18
    assert inspect_and_normalize(data, "image/png", ImageLimits(max_decode_bytes=32 << 20)).reason == "decode_memory"
    assert inspect_and_normalize(data, "image/png", LIMITS).accepted


def test_an_exception_from_a_decoder_is_a_corrupt_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    # Any class of exception (Pillow raises IndexError, struct.error, TypeError on some hostile files).
    def broken(*args: object, **kwargs: object) -> None:
        raise IndexError("index out of range")

    data = encode(photo(400, 300))
    monkeypatch.setattr(images, "_decode_ycbcr_planes", broken)
    decision = inspect_and_normalize(data, "image/jpeg", LIMITS)
    assert (decision.accepted, decision.reason) == (False, "corrupt")
    assert decision.sha256 == hashlib.sha256(data).hexdigest() and decision.n_bytes == len(data)


def test_an_allocation_that_fails_is_decode_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(images, "_decode_ycbcr_planes", out_of_memory)
    assert inspect_and_normalize(encode(photo(400, 300)), "image/jpeg", LIMITS).reason == "decode_memory"


def test_a_png_with_a_black_last_row_and_all_its_data_is_kept() -> None:
    # A blank last row is what a PNG short of data decodes to; the data check then clears this one.
    pixels = np.asarray(photo(400, 300)).copy()
    pixels[-20:] = 0
    decision = inspect_and_normalize(encode(Image.fromarray(pixels), "PNG"), "image/png", LIMITS)
    assert decision.accepted, decision.reason


def test_png_data_is_short_counts_the_rows_the_header_declares() -> None:
    whole = encode(photo(400, 300), "PNG")
    assert not images.png_data_is_short(whole)
    # The same IHDR over a complete zlib stream of half the rows.
    rows = b"".join(b"\x00" + np.asarray(photo(400, 300))[y].tobytes() for y in range(150))
    ihdr_end = 8 + 8 + 13 + 4
    idat = zlib.compress(rows)
    chunk = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    short = whole[:ihdr_end] + chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    assert images.png_data_is_short(short)
    assert inspect_and_normalize(short, "image/png", LIMITS).reason == "corrupt"
