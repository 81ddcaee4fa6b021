"""Model answers are untrusted text: what PostgreSQL cannot hold is escaped before any write."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tuwen.synthesis.lineage import storable_json, storable_text


def test_nul_and_lone_surrogates_become_visible_escapes_and_the_rest_is_untouched() -> None:
    assert storable_text("a\x00b") == "a\\u0000b"
    assert storable_text("a\udc80b\ud800") == "a\\udc80b\\ud800"
    clean = "用户：你好 😀 \\u0000 (a backslash, not a NUL)"
    assert storable_text(clean) is clean
    assert storable_text(None) is None


def test_json_for_jsonb_escapes_nul_and_lone_surrogates_anywhere_in_the_value() -> None:
    value = {"choices": [{"message": {"content": "a\x00b\udc80"}}], "k\x00": 1, "emoji": "😀"}
    dumped = storable_json(value)
    assert dumped is not None and "\\u0000" not in dumped.replace("\\\\u0000", "")
    assert json.loads(dumped) == {"choices": [{"message": {"content": "a\\u0000b\\udc80"}}], "k\\u0000": 1,
                                  "emoji": "😀"}
    # A clean value is the same JSON as before (same jsonb stored).
    assert json.loads(storable_json({"a": ["用户", 1, None]}) or "") == {"a": ["用户", 1, None]}
    assert storable_json(None) is None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, categories=None)))
def test_any_text_becomes_storable(text: str) -> None:
    stored = storable_text(text)
    assert stored is not None and "\x00" not in stored
    stored.encode("utf-8")  # raises on a lone surrogate
    dumped = storable_json({"content": text})
    assert dumped is not None and "\\u0000" not in dumped.replace("\\\\", "")
