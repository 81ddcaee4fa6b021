"""Personal data in text: which kinds (mobile, id_card, email, plate), never the values.

One set of rules for the two places that look: curation, on an image's OCR text (such images are held
back or rejected), and the quality gate, on the answers (a sample that repeats one fails
`privacy.personal_data`). Pure regular expressions: the gate runs them on every sample.
"""

from __future__ import annotations

import re

# Digits are matched after removing the separators OCR and designers put between groups
# (138 1234 5678, 138-1234-5678); the lookarounds keep a number inside a longer digit run (an order
# number, a barcode) from matching.
_SEPARATED_DIGITS = re.compile(r"(?<=\d)[ \-\u2010-\u2015\u00a0.]+(?=\d)")
MOBILE_RE = re.compile(r"(?<!\d)(?:\+?86)?1[3-9]\d{9}(?!\d)")
ID_CARD_RE = re.compile(r"(?<![0-9A-Za-z])[1-9]\d{16}[\dXx](?![0-9A-Za-z])")
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
# Province abbreviation, the issuing office's letter, then 5 characters (6 for new-energy vehicles);
# letters I and O are never used on plates.
PLATE_RE = re.compile(r"[京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼][A-HJ-NP-Z]"
                      r"[ ·•\-]?[A-HJ-NP-Z0-9]{5,6}(?![A-Za-z0-9])")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def id_checksum_ok(number: str) -> bool:
    """GB 11643: the 18th character is the check digit of the first 17."""
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == number[17].upper()


def personal_data_kinds(ocr_text: str) -> list[str]:
    """The kinds of personal data in the text (mobile, id_card, email, plate), sorted; never the values."""
    if not ocr_text:
        return []
    joined = _SEPARATED_DIGITS.sub("", ocr_text)
    kinds = set()
    if any(id_checksum_ok(m.group(0)) for m in ID_CARD_RE.finditer(joined)):
        kinds.add("id_card")
    if MOBILE_RE.search(joined):
        kinds.add("mobile")
    if EMAIL_RE.search(ocr_text):
        kinds.add("email")
    if PLATE_RE.search(ocr_text.upper()):
        kinds.add("plate")
    return sorted(kinds)
