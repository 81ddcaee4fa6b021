"""What the spider hands the pipeline is safe to log: an item's repr never carries the image bytes."""

from __future__ import annotations

from tuwen_crawler.items import FetchedImage, Mention


def test_a_fetched_images_repr_names_it_without_its_bytes() -> None:
    mention = Mention(url="http://example.cn/a.gif", page_url="http://example.cn/p.html", page_title="标题",
                      alt_text=None, context_text=None, found_in="img")
    body = b"GIF89a" + b"\x00" * (5 << 20)
    text = repr(FetchedImage(mention=mention, body=body, http_status=200, content_type="image/gif"))
    assert len(text) < 300
    assert "http://example.cn/a.gif" in text and f"<{len(body)} bytes>" in text
    assert "GIF89a" not in text and "\\x00" not in text
