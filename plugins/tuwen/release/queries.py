"""The release stage's SQL, in one place, over the engine or connection its entry point hands in.

One way per purpose: a release's contents are fixed set-wise in PostgreSQL (a temporary pick table,
one INSERT ... SELECT into export_item), its files are written from server-side cursors (constant
memory at 600k samples), and the export rows' lifecycle, the card's facts and the takedowns are a few
statements each in SQLAlchemy Core. Functions that take a Connection run inside the caller's
transaction, which decides what commits together (a version's publication with its predecessor's
superseding, a takedown with its links).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Row, bindparam, delete, func, text, update
from sqlalchemy.dialects.postgresql import insert

from tuwen.db.models import Export, ExportItem
from tuwen.release.params import ReleaseParams

# --- selection ---------------------------------------------------------------------------------

# `tuwen.release.export.image_path` in SQL.
IMAGE_PATH_SQL = ("'images/' || left(i.sha256, 2) || '/' || i.sha256 || "
                  "CASE WHEN i.model_mime = 'image/png' THEN '.png' ELSE '.jpg' END")


def set_work_mem(conn: Connection) -> None:
    """Sorts and hash aggregates over a whole release in memory, not on disk, until the transaction ends."""
    conn.execute(text("SET LOCAL work_mem = '256MB'"))


def pick_samples(conn: Connection, params: ReleaseParams) -> dict[str, int]:
    """Fill the transaction's temporary table release_pick (sample_id, task_type, image_id, image_path)
    with the candidates of the params' filters; returns candidates per task type."""
    where = ["i.status = 'accepted'", "s.qc_status IN :qc", "s.task_type IN :tasks", "s.language IN :langs"]
    binds: dict[str, Any] = {"qc": list(params.qc_statuses), "tasks": list(params.task_types),
                             "langs": list(params.languages)}
    if params.date_from:
        where.append("i.crawl_date >= :date_from")
        binds["date_from"] = params.date_from
    if params.date_to:
        where.append("i.crawl_date <= :date_to")
        binds["date_to"] = params.date_to
    # One sample per image (the database enforces it per release): the newest one passing the filters.
    # Ids order with COLLATE "C" so the order never depends on the database's locale.
    conn.execute(text(f"""
        CREATE TEMP TABLE release_pick ON COMMIT DROP AS
        SELECT DISTINCT ON (s.image_id) s.id COLLATE "C" AS sample_id, s.task_type, s.image_id,
               {IMAGE_PATH_SQL} AS image_path
        FROM sample s JOIN image i ON i.id = s.image_id
        WHERE {' AND '.join(where)}
        ORDER BY s.image_id, s.created_at DESC, s.id COLLATE "C"
    """).bindparams(*(bindparam(k, expanding=True) for k in ("qc", "tasks", "langs"))), binds)
    return {t: int(n) for t, n in conn.execute(text(
        "SELECT task_type, count(*) FROM release_pick GROUP BY 1")).all()}


def picked_first_counts(conn: Connection, cap: int) -> dict[str, int]:
    """Per task type, how many of release_pick's first `cap` samples (in sample id order) it has."""
    return dict(conn.execute(text(
        "SELECT task_type, count(*) FROM (SELECT task_type FROM release_pick ORDER BY sample_id "
        "LIMIT :cap) AS first GROUP BY 1"), {"cap": cap}).all())


def insert_export_items(conn: Connection, export_id: int, task_types: Sequence[str], files: Mapping[str, str],
                        quotas: Mapping[str, int], cap: int | None) -> None:
    """export_item from release_pick: per task type its first `quotas[t]` samples into file `files[t]`,
    at most `cap` in all, positions in sample id order."""
    values = ", ".join(f"(:t{k}, :f{k}, :q{k})" for k in range(len(task_types)))
    binds: dict[str, Any] = {"export_id": export_id, "cap": cap if cap is not None else 2**62}
    for k, t in enumerate(task_types):
        binds |= {f"t{k}": t, f"f{k}": files[t], f"q{k}": quotas[t]}
    conn.execute(text(f"""
        INSERT INTO export_item (export_id, sample_id, image_id, position, file, image_path)
        SELECT :export_id, r.sample_id, r.image_id, row_number() OVER (ORDER BY r.sample_id) - 1, q.file,
               r.image_path
        FROM (SELECT p.*, row_number() OVER (PARTITION BY p.task_type ORDER BY p.sample_id) AS task_rank,
                     row_number() OVER (ORDER BY p.sample_id) AS overall_rank
              FROM release_pick p) AS r
        JOIN (VALUES {values}) AS q(task_type, file, quota) ON q.task_type = r.task_type
        WHERE r.task_rank <= q.quota AND r.overall_rank <= :cap
    """), binds)
    # The planner would otherwise still believe export_item is empty and pick nested loops for the
    # streaming and card queries over 600k rows.
    conn.execute(text("ANALYZE export_item"))


def export_counts(engine: Engine, export_id: int) -> dict[str, int]:
    """Samples per task type of an export."""
    with engine.connect() as conn:
        return {t: int(n) for t, n in conn.execute(text(
            "SELECT s.task_type, count(*) FROM export_item ei JOIN sample s ON s.id = ei.sample_id "
            "WHERE ei.export_id = :e GROUP BY 1"), {"e": export_id}).all()}


# --- streaming the release's rows ---------------------------------------------------------------


def iter_items(engine: Engine, export_id: int) -> Generator[Any, None, None]:
    """position, sample_id, task_type, image_path, conversations (JSON text) of every item, in position
    order, from a server-side cursor."""
    # conversations::text: PostgreSQL's own rendering of the stored JSONB, passed through unchanged.
    query = text("""
        SELECT ei.position, ei.sample_id, s.task_type, ei.image_path, s.conversations::text AS conversations
        FROM export_item ei JOIN sample s ON s.id = ei.sample_id
        WHERE ei.export_id = :e ORDER BY ei.position""")
    with engine.connect() as conn:
        yield from conn.execution_options(stream_results=True, yield_per=5000).execute(query, {"e": export_id})


def iter_image_keys(engine: Engine, export_id: int) -> Generator[Any, None, None]:
    """image_path, model_key of every item, in path order (byte order), from a server-side cursor."""
    query = text("""SELECT ei.image_path, i.model_key FROM export_item ei JOIN image i ON i.id = ei.image_id
                    WHERE ei.export_id = :e ORDER BY ei.image_path COLLATE "C" """)
    with engine.connect() as conn:
        yield from conn.execution_options(stream_results=True, yield_per=2000).execute(query, {"e": export_id})


def qc_report_key(engine: Engine, qc_run_id: int) -> str | None:
    """The key of a qc_run's published report (None: it published none)."""
    with engine.connect() as conn:
        key = conn.execute(text("SELECT results->>'report_key' FROM qc_run WHERE id = :id"), {"id": qc_run_id}).scalar()
    return key


# --- the export rows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """The release currently published under a name."""

    export_id: int
    version: int
    files: dict[str, Any]
    s3_prefix: str
    local_path: str | None


def lock_name(conn: Connection, name: str) -> None:
    """Serialise writers of one release name (until the transaction ends)."""
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('tuwen.export:' || :n))"), {"n": name})


def published(conn: Connection, name: str) -> Published | None:
    row = conn.execute(text("SELECT id, version, files, s3_prefix, local_path FROM export "
                            "WHERE name = :n AND status = 'published'"), {"n": name}).one_or_none()
    return None if row is None else Published(row.id, row.version, row.files, row.s3_prefix, row.local_path)


def reuse_or_add_version(conn: Connection, name: str, floor: int, values: Mapping[str, Any]) -> tuple[int, int]:
    """(export id, version) of the row an attempt writes: a failed or abandoned attempt above version
    `floor` is reused (its items dropped), otherwise the next version is added; `values` set on it."""
    retry = conn.execute(text("""
        SELECT id, version FROM export WHERE name = :n AND status IN ('failed', 'writing') AND version > :v
        ORDER BY version DESC LIMIT 1"""), {"n": name, "v": floor}).one_or_none()
    if retry is not None:
        export_id, version = int(retry.id), int(retry.version)
        conn.execute(delete(ExportItem).where(ExportItem.export_id == export_id))
        conn.execute(update(Export).where(Export.id == export_id).values(**values))
    else:
        version = int(conn.execute(text("SELECT coalesce(max(version), 0) + 1 FROM export WHERE name = :n"),
                                   {"n": name}).scalar_one())
        export_id = conn.execute(insert(Export).values(name=name, version=version, **values)
                                 .returning(Export.id)).scalar_one()
    return export_id, version


def drop_export(engine: Engine, export_id: int) -> None:
    """Remove an export row and its items (an attempt that turned out to repeat the published release)."""
    with engine.begin() as conn:
        conn.execute(delete(ExportItem).where(ExportItem.export_id == export_id))
        conn.execute(delete(Export).where(Export.id == export_id))


def mark_failed(engine: Engine, export_id: int) -> None:
    """A failed release holds nothing: "which release contains X" must never name it."""
    with engine.begin() as conn:
        conn.execute(delete(ExportItem).where(ExportItem.export_id == export_id))
        conn.execute(update(Export).where(Export.id == export_id).values(status="failed"))


def set_s3_prefix(engine: Engine, export_id: int, s3_prefix: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(Export).where(Export.id == export_id).values(s3_prefix=s3_prefix))


def supersede(conn: Connection, export_id: int, local_path: str | None) -> None:
    conn.execute(update(Export).where(Export.id == export_id).values(
        status="superseded", superseded_at=func.now(), local_path=local_path))


def publish(conn: Connection, export_id: int, *, n_samples: int, files: Mapping[str, Any], s3_prefix: str,
            local_path: str) -> None:
    conn.execute(update(Export).where(Export.id == export_id).values(
        status="published", n_samples=n_samples, files=dict(files), s3_prefix=s3_prefix,
        local_path=local_path, published_at=func.now()))


# --- the card's facts ---------------------------------------------------------------------------


def _rows(conn: Connection, sql: str, export_id: int) -> list[Any]:
    return list(conn.execute(text(sql), {"e": export_id}).all())


def card_groups(conn: Connection, export_id: int) -> list[Any]:
    """The release's samples grouped by task, prompt, language, model, sampling and finish reason, with
    their counts and sums (tokens, latency, OCR, image sizes) and date ranges: one pass over the release."""
    return _rows(conn, """
        SELECT s.task_type, g.prompt_id, g.prompt_version, g.prompt_sha256, g.language, g.model,
               g.sampling::text AS sampling, g.finish_reason, count(*) AS n, sum(s.rounds) AS rounds,
               sum(g.prompt_tokens) AS prompt_tokens, sum(g.completion_tokens) AS completion_tokens,
               sum(g.latency_ms) AS latency_ms, min(g.completed_at)::date AS first_day,
               max(g.completed_at)::date AS last_day,
               count(*) FILTER (WHERE i.has_zh_text) AS zh_text,
               count(*) FILTER (WHERE NOT i.has_zh_text) AS no_zh_text,
               sum(i.ocr_char_count) AS ocr_chars, count(i.ocr_char_count) AS ocr_measured,
               sum(i.model_width) AS width, sum(i.model_height) AS height,
               min(i.crawl_date) AS first_crawl, max(i.crawl_date) AS last_crawl
        FROM export_item ei JOIN sample s ON s.id = ei.sample_id JOIN generation g ON g.id = s.generation_id
             JOIN image i ON i.id = ei.image_id
        WHERE ei.export_id = :e
        GROUP BY s.task_type, g.prompt_id, g.prompt_version, g.prompt_sha256, g.language, g.model,
                 g.sampling::text, g.finish_reason""", export_id)


def ocr_percentiles(conn: Connection, export_id: int) -> tuple[Any, Any]:
    """(median, 90th percentile) of the release's images' OCR character counts."""
    p50, p90 = _rows(conn, """
        SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY i.ocr_char_count) AS p50,
               percentile_disc(0.9) WITHIN GROUP (ORDER BY i.ocr_char_count) AS p90
        FROM export_item ei JOIN image i ON i.id = ei.image_id WHERE ei.export_id = :e""", export_id)[0]
    return p50, p90


def card_sources(conn: Connection, export_id: int) -> list[Any]:
    """(kind, key, n) rows: images per site ('site', name), and distinct 'pages', 'urls', 'crawl_runs'."""
    # DISTINCT in subqueries hashes; count(DISTINCT ...) would sort every URL of the release.
    return _rows(conn, """
        WITH src AS MATERIALIZED (
            SELECT src.image_id, src.site, src.url, src.page_url, src.crawl_run_id
            FROM export_item ei JOIN image_source src ON src.image_id = ei.image_id WHERE ei.export_id = :e)
        SELECT 'site' AS kind, site AS key, count(*) AS n FROM (SELECT DISTINCT site, image_id FROM src) AS d
        GROUP BY site
        UNION ALL SELECT 'pages', NULL, count(*) FROM (SELECT DISTINCT page_url FROM src) AS p
        UNION ALL SELECT 'urls', NULL, count(*) FROM (SELECT DISTINCT url FROM src) AS u
        UNION ALL SELECT 'crawl_runs', NULL, count(*) FROM (SELECT DISTINCT crawl_run_id FROM src) AS c""",
                 export_id)


def release_qc_run_ids(conn: Connection, export_id: int) -> list[int]:
    """The qc_runs behind a release: the export's own and every one that labelled a shipped sample."""
    return [r.qc_run_id for r in _rows(conn, """
        SELECT qc_run_id FROM export WHERE id = :e AND qc_run_id IS NOT NULL
        UNION SELECT DISTINCT s.qc_run_id FROM export_item ei JOIN sample s ON s.id = ei.sample_id
        WHERE ei.export_id = :e AND s.qc_run_id IS NOT NULL ORDER BY 1""", export_id)]


def qc_run(conn: Connection, qc_run_id: int) -> Row[Any]:
    return conn.execute(text("SELECT * FROM qc_run WHERE id = :id"), {"id": qc_run_id}).one()


# --- takedowns ----------------------------------------------------------------------------------

# The host of an absolute URL, lower-cased, without a trailing dot, in SQL (userinfo and port stripped):
# the cheap pre-filter before URLs are compared in normal form.
_HOST_SQL = (r"rtrim(lower(substring({col} from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#:]+)')), '.')")

# Releases that shipped an item: the published one by its name, a superseded version as name@v<version>.
_RELEASE_LABEL_SQL = "CASE WHEN e.status = 'superseded' THEN e.name || '@v' || e.version ELSE e.name END"


def sources_on_hosts(conn: Connection, hosts: Sequence[str]) -> Iterator[Any]:
    """(image_id, url, page_url) of the image_source rows whose image or page URL is on one of `hosts`."""
    host_url, host_page = _HOST_SQL.format(col="src.url"), _HOST_SQL.format(col="src.page_url")
    return iter(conn.execute(text(f"""
        SELECT DISTINCT src.image_id, src.url, src.page_url FROM image_source src
        WHERE src.image_id IS NOT NULL AND ({host_url} = ANY(:hosts) OR {host_page} = ANY(:hosts))"""),
        {"hosts": list(hosts)}))


def link_hash_and_domain_takedowns(conn: Connection, takedown_ids: list[int] | None) -> None:
    """takedown_image rows for the image_sha256 and domain takedowns (all, or those of `takedown_ids`)."""
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
            FROM takedown t JOIN image_source src
              ON {host_url} = t.value OR {host_url} LIKE '%.' || t.value
              OR {host_page} = t.value OR {host_page} LIKE '%.' || t.value
            WHERE t.kind = 'domain' AND src.image_id IS NOT NULL {only}
        ) AS m
        JOIN image i ON i.id = m.image_id
        ON CONFLICT DO NOTHING
    """), {"ids": takedown_ids or []})


def url_takedowns(conn: Connection, takedown_ids: list[int] | None) -> list[Any]:
    """(id, value) of the url takedowns (all, or those of `takedown_ids`)."""
    only = "AND t.id = ANY(:ids)" if takedown_ids is not None else ""
    return list(conn.execute(text(f"SELECT t.id, t.value FROM takedown t WHERE t.kind = 'url' {only}"),
                             {"ids": takedown_ids or []}))


def link_images(conn: Connection, pairs: Sequence[tuple[int, int]]) -> None:
    """takedown_image rows for (takedown id, image id) pairs; existing links are kept."""
    conn.execute(text("""
        INSERT INTO takedown_image (takedown_id, image_id, previous_status)
        SELECT m.takedown_id, m.image_id, i.status
        FROM unnest(CAST(:t AS bigint[]), CAST(:i AS bigint[])) AS m(takedown_id, image_id)
        JOIN image i ON i.id = m.image_id
        ON CONFLICT DO NOTHING"""), {"t": [p[0] for p in pairs], "i": [p[1] for p in pairs]})


def take_down_linked(conn: Connection) -> None:
    """Every linked image, and every sample on one, taken_down (idempotent)."""
    # Every image ever linked stays down, and so do samples generated for it later.
    conn.execute(text("""
        UPDATE image SET status = 'taken_down', taken_down_at = coalesce(taken_down_at, now())
        WHERE id IN (SELECT image_id FROM takedown_image) AND status <> 'taken_down'"""))
    conn.execute(text("""
        UPDATE sample SET qc_status = 'taken_down'
        WHERE image_id IN (SELECT image_id FROM takedown_image) AND qc_status <> 'taken_down'"""))


def any_takedown(conn: Connection) -> bool:
    return bool(conn.execute(text("SELECT EXISTS (SELECT 1 FROM takedown)")).scalar())


def upsert_takedown(conn: Connection, kind: str, value: str, reason: str | None) -> int:
    """The takedown's id; recording the same (kind, value) again keeps the row (and its reason if none is given)."""
    return int(conn.execute(text("""
        INSERT INTO takedown (kind, value, reason) VALUES (:kind, :value, :reason)
        ON CONFLICT (kind, value) DO UPDATE SET reason = coalesce(excluded.reason, takedown.reason)
        RETURNING id"""), {"kind": kind, "value": value, "reason": reason}).scalar_one())


def takedown_reach(conn: Connection, takedown_id: int) -> tuple[int, int, list[str]]:
    """(images, samples on them, labels of the releases that shipped any) of one takedown."""
    images, samples = conn.execute(text("""
        SELECT count(DISTINCT ti.image_id), count(s.id)
        FROM takedown_image ti LEFT JOIN sample s ON s.image_id = ti.image_id
        WHERE ti.takedown_id = :id"""), {"id": takedown_id}).one()
    releases = list(conn.execute(text(f"""
        SELECT DISTINCT {_RELEASE_LABEL_SQL} AS label FROM takedown_image ti
        JOIN export_item ei ON ei.image_id = ti.image_id JOIN export e ON e.id = ei.export_id
        WHERE ti.takedown_id = :id AND e.status IN ('published', 'superseded') ORDER BY label"""),
        {"id": takedown_id}).scalars())
    return int(images), int(samples), releases


def release_takedown_hits(engine: Engine) -> list[Any]:
    """(label, published_at, takedown id, kind, value, samples) per release and takedown it shipped items of."""
    with engine.connect() as conn:
        return list(conn.execute(text(f"""
            SELECT {_RELEASE_LABEL_SQL} AS label, e.published_at, t.id, t.kind, t.value,
                   count(DISTINCT ei.sample_id) AS samples
            FROM takedown t
            JOIN takedown_image ti ON ti.takedown_id = t.id
            JOIN export_item ei ON ei.image_id = ti.image_id
            JOIN export e ON e.id = ei.export_id AND e.status IN ('published', 'superseded')
            GROUP BY label, e.published_at, t.id, t.kind, t.value
            ORDER BY label, t.id""")).all())


def curation_counts(conn: Connection, lo: Any, hi: Any) -> tuple[list[Any], list[Any]]:
    """Curation verdicts of the images crawled from `lo` to `hi`: (status, n) rows and (reason, n) rows,
    each in name order."""
    day_range = {"lo": lo, "hi": hi}
    statuses = conn.execute(text("""SELECT c.status, count(*) AS n FROM curation c JOIN image i ON i.id = c.image_id
                                    WHERE i.crawl_date BETWEEN :lo AND :hi GROUP BY c.status ORDER BY c.status"""),
                            day_range).all()
    reasons = conn.execute(text("""SELECT r.reason, count(*) AS n FROM curation c JOIN image i ON i.id = c.image_id,
                                          jsonb_array_elements_text(c.reasons) AS r(reason)
                                   WHERE i.crawl_date BETWEEN :lo AND :hi GROUP BY r.reason ORDER BY r.reason"""),
                           day_range).all()
    return list(statuses), list(reasons)


def any_judgement(conn: Connection) -> bool:
    """Has the faithfulness judge ever run (one index probe)?"""
    return bool(conn.execute(text("SELECT EXISTS (SELECT 1 FROM judgement)")).scalar_one())


def judge_costs(conn: Connection, export_id: int) -> Any:
    """calls, judged (samples with a succeeded judgement), prompt_tokens, completion_tokens, models of
    the judge calls on the release's samples."""
    return conn.execute(text("""
        SELECT count(*) AS calls, count(DISTINCT j.sample_id) FILTER (WHERE j.status = 'succeeded') AS judged,
               coalesce(sum(j.prompt_tokens), 0) AS prompt_tokens,
               coalesce(sum(j.completion_tokens), 0) AS completion_tokens,
               array_remove(array_agg(DISTINCT j.model) FILTER (WHERE j.status = 'succeeded'), NULL) AS models
        FROM export_item ei JOIN judgement j ON j.sample_id = ei.sample_id WHERE ei.export_id = :e"""),
        {"e": export_id}).one()


def gate_judge_counts(conn: Connection, qc_run_ids: list[int]) -> Any:
    """judged, contradicted: samples the judge had judged, and that it failed, in those qc runs."""
    return conn.execute(text("""
        SELECT count(*) FILTER (WHERE (qc_metrics->>'judged')::real = 1) AS judged,
               count(*) FILTER (WHERE qc_reasons ? 'faithfulness.judge') AS contradicted
        FROM sample WHERE qc_run_id = ANY(:ids)"""), {"ids": qc_run_ids}).one()
