"""The Chinese-text selection: the share of a partition's curated images that carry Chinese text.

The seed dataset is defined by its images — "most of them contain Chinese characters". Among the images
of a partition that passed the filters, every image with Chinese text (OCR's `has_zh_text`) is kept and
only as many without as keep the share at or above `zh_share`; the others are `held` with the reason
`zh_share`, not rejected: raising or lowering TUWEN_CURATE_ZH_SHARE and curating again releases or holds
them, without a new crawl or new OCR.

Which images without text are kept is decided by hash order (the images' SHA-256), so the choice depends
on the set of images and never on the order a query returned them, and a rerun holds the same images.
An image OCR did not run on (`has_zh_text` NULL, e.g. TUWEN_OCR_ENABLED=false) is not subject to the
policy: nothing is known about its text, and holding it would hold everything when OCR is off.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

ZH_SHARE = "zh_share"


@dataclass(frozen=True)
class Candidate:
    image_id: int
    sha256: str
    has_zh_text: bool | None


def without_text_kept(with_text: int, without_text: int, share: float) -> int:
    """How many images without Chinese text may be kept beside `with_text` images with it, so that the
    kept images' share with text is at least `share` (all of them when share is 0)."""
    if share <= 0:
        return without_text
    if share >= 1:
        return 0
    # with / (with + k) >= share  <=>  k <= with * (1 - share) / share; a hair of tolerance keeps exact
    # ratios (0.75 of 4) from losing an image to floating point.
    return min(without_text, math.floor(with_text * (1 - share) / share + 1e-9))


def select_for_zh_share(candidates: Iterable[Candidate], share: float) -> set[int]:
    """The ids to keep curated; the other candidates are held (reason `zh_share`)."""
    candidates = list(candidates)
    keep = {c.image_id for c in candidates if c.has_zh_text is not False}
    with_text = sum(1 for c in candidates if c.has_zh_text)
    without = sorted((c for c in candidates if c.has_zh_text is False), key=lambda c: c.sha256)
    keep.update(c.image_id for c in without[: without_text_kept(with_text, len(without), share)])
    return keep
