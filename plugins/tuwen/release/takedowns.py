"""Takedowns: remove an image URL, a page URL, a whole domain or one image (by SHA-256) from all future
releases, and say which past releases shipped it.

A takedown is a row in `takedown` (kind, value, reason). Applying it links every matching image in
`takedown_image` (with the status it had, so a mistaken takedown can be reverted by hand), sets the image's
status to `taken_down` (with `taken_down_at`) and its samples' `qc_status` to `taken_down`. Exports select
only accepted images and never taken-down samples, and `write_release` re-applies every takedown first, so
images crawled after a domain was taken down are caught too. Published releases are immutable files;
`releases_with_takedowns` names the ones that hold taken-down items so they can be re-issued or withdrawn.

Matching: `url` equals an image_source's image URL or page URL; `domain` matches the host of either URL,
and its subdomains (`example.com` covers `img.example.com`); `image_sha256` is the image's content hash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, text

from tuwen.config import Settings
from tuwen.db.session import get_engine

TAKEDOWN_KINDS = ("url", "domain", "image_sha256")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HOST_LABELS = re.compile(r"^[a-z0-9\u00a1-\uffff]([a-z0-9\u00a1-\uffff-]*[a-z0-9\u00a1-\uffff])?"
                          r"(\.[a-z0-9\u00a1-\uffff]([a-z0-9\u00a1-\uffff-]*[a-z0-9\u00a1-\uffff])?)*$")
# The host of an absolute URL, lower-cased, in SQL (userinfo and port stripped): what `domain` matches.
_HOST_SQL = r"lower(substring({col} from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#:]+)'))"


class TakedownError(ValueError):
    """The takedown request is malformed; the message says how."""


@dataclass(frozen=True)
class TakedownResult:
    takedown_id: int
    kind: str
    value: str
    images: int  # images this takedown covers (including ones already taken down by another)
    samples: int  # samples on those images, now qc_status taken_down
    releases: list[str]  # published releases that shipped any of them


@dataclass(frozen=True)
class ReleaseHit:
    release: str
    published_at: Any
    takedown_id: int
    kind: str
    value: str
    samples: int


def normalize(kind: str, value: str) -> str:
    """The canonical value stored and matched: hosts lower-cased, hashes lower-case hex, URLs trimmed."""
    if kind not in TAKEDOWN_KINDS:
        raise TakedownError(f"unknown takedown kind {kind!r}; known: {', '.join(TAKEDOWN_KINDS)}")
    value = value.strip()
    if kind == "image_sha256":
        value = value.lower()
        if not _SHA256.match(value):
            raise TakedownError(f"{value!r} is not a SHA-256 hex digest (64 hex characters)")
    elif kind == "url":
        if not urlsplit(value).scheme or not urlsplit(value).netloc:
            raise TakedownError(f"{value!r} is not an absolute URL")
    else:
        host = urlsplit(value).hostname if "://" in value else value.split("/")[0].split(":")[0]
        value = (host or "").lower().removeprefix("*.").rstrip(".")
        if not value or "." not in value or not _HOST_LABELS.match(value):
            raise TakedownError(f"{value!r} is not a domain name like example.com")
    return value


def _link_matches(conn: Connection, takedown_ids: list[int] | None) -> None:
    only = "AND t.id = ANY(:ids)" if takedown_ids is not None else ""
    host_url, host_page = _HOST_SQL.format(col="src.url"), _HOST_SQL.format(col="src.page_url")
    conn.execute(text(f"""
        INSERT INTO takedown_image (takedown_id, image_id, previous_status)
        SELECT DISTINCT ON (m.takedown_id, m.image_id) m.takedown_id, m.image_id, i.status
        FROM (
            SELECT t.id AS takedown_id, i.id AS image_id
            FROM takedown t JOIN image i ON i.sha256 = t.value
            WHERE t.kind = 'image_sha256' {only}
            UNION
            SELECT t.id, src.image_id
            FROM takedown t JOIN image_source src ON src.url = t.value OR src.page_url = t.value
            WHERE t.kind = 'url' AND src.image_id IS NOT NULL {only}
            UNION
            SELECT t.id, src.image_id
            FROM takedown t JOIN image_source src
              ON {host_url} = t.value OR {host_url} LIKE '%.' || t.value
              OR {host_page} = t.value OR {host_page} LIKE '%.' || t.value
            WHERE t.kind = 'domain' AND src.image_id IS NOT NULL {only}
        ) AS m
        JOIN image i ON i.id = m.image_id
        ON CONFLICT DO NOTHING
    """), {"ids": takedown_ids or []})
    # Idempotent: every image ever linked stays down, and so do samples generated for it later.
    conn.execute(text("""
        UPDATE image SET status = 'taken_down', taken_down_at = coalesce(taken_down_at, now())
        WHERE id IN (SELECT image_id FROM takedown_image) AND status <> 'taken_down'"""))
    conn.execute(text("""
        UPDATE sample SET qc_status = 'taken_down'
        WHERE image_id IN (SELECT image_id FROM takedown_image) AND qc_status <> 'taken_down'"""))


def apply_takedowns(settings: Settings) -> None:
    """Re-apply every takedown (cheap when there are none): catches images crawled since it was added."""
    with get_engine(settings.database_url).begin() as conn:
        if conn.execute(text("SELECT EXISTS (SELECT 1 FROM takedown)")).scalar():
            _link_matches(conn, None)


def add_takedown(settings: Settings, kind: str, value: str, reason: str | None = None) -> TakedownResult:
    """Record a takedown and apply it now; adding the same (kind, value) again re-applies it."""
    value = normalize(kind, value)
    with get_engine(settings.database_url).begin() as conn:
        takedown_id = conn.execute(text("""
            INSERT INTO takedown (kind, value, reason) VALUES (:kind, :value, :reason)
            ON CONFLICT (kind, value) DO UPDATE SET reason = coalesce(excluded.reason, takedown.reason)
            RETURNING id"""), {"kind": kind, "value": value, "reason": reason}).scalar_one()
        _link_matches(conn, [takedown_id])
        images, samples = conn.execute(text("""
            SELECT count(DISTINCT ti.image_id), count(s.id)
            FROM takedown_image ti LEFT JOIN sample s ON s.image_id = ti.image_id
            WHERE ti.takedown_id = :id"""), {"id": takedown_id}).one()
        releases = list(conn.execute(text("""
            SELECT DISTINCT e.name FROM takedown_image ti
            JOIN export_item ei ON ei.image_id = ti.image_id JOIN export e ON e.id = ei.export_id
            WHERE ti.takedown_id = :id AND e.status = 'published' ORDER BY e.name"""),
            {"id": takedown_id}).scalars())
    return TakedownResult(takedown_id, kind, value, int(images), int(samples), releases)


def releases_with_takedowns(settings: Settings) -> list[ReleaseHit]:
    """Published releases that contain taken-down items, per takedown, with how many samples."""
    with get_engine(settings.database_url).connect() as conn:
        rows = conn.execute(text("""
            SELECT e.name, e.published_at, t.id, t.kind, t.value, count(DISTINCT ei.sample_id) AS samples
            FROM takedown t
            JOIN takedown_image ti ON ti.takedown_id = t.id
            JOIN export_item ei ON ei.image_id = ti.image_id
            JOIN export e ON e.id = ei.export_id AND e.status = 'published'
            GROUP BY e.name, e.published_at, t.id, t.kind, t.value
            ORDER BY e.name, t.id""")).all()
    return [ReleaseHit(*row) for row in rows]
