"""The lineage schema: every image, URL, completion, sample, QC run and release, and how they link.

Unique keys carry the idempotency guarantees: `image.sha256` (one row per distinct image),
`image_source (url, page_url)` (one row per place an image was seen), `generation.request_key`
(one paid completion per request), `sample.generation_id` (one sample per completion),
`export_item (export_id, image_id)` (a release never uses an image twice).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tuwen.domain import CURATION_STATUSES, GENERATION_STATUSES, IMAGE_STATUSES, QC_STATUSES, TASK_TYPES

# Stable constraint names so Alembic migrations (and downgrades) are deterministic.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}



def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONB, list[Any]: JSONB}


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class CrawlRun(Base):
    __tablename__ = "crawl_run"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    spider: Mapped[str] = mapped_column(String(100))
    site: Mapped[str | None] = mapped_column(String(200))
    seeds: Mapped[list[Any]] = mapped_column(server_default=text("'[]'::jsonb"))
    settings: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    stats: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    counts: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    partition_date: Mapped[dt.date] = mapped_column(Date)
    dag_id: Mapped[str | None] = mapped_column(String(250))
    run_id: Mapped[str | None] = mapped_column(String(250))
    status: Mapped[str] = mapped_column(String(20), server_default="running")
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = _now()
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (CheckConstraint(_in("status", ("running", "succeeded", "failed")), name="status"),)


class Image(Base):
    __tablename__ = "image"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    phash: Mapped[int | None] = mapped_column(BigInteger)  # 64-bit perceptual hash, signed
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(20))
    n_bytes: Mapped[int | None] = mapped_column(BigInteger)
    original_key: Mapped[str | None] = mapped_column(Text)
    model_key: Mapped[str | None] = mapped_column(Text)
    model_width: Mapped[int | None] = mapped_column(Integer)
    model_height: Mapped[int | None] = mapped_column(Integer)
    model_mime: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(String(100))
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("image.id"))
    ocr_text: Mapped[str | None] = mapped_column(Text)
    ocr_char_count: Mapped[int | None] = mapped_column(Integer)
    has_zh_text: Mapped[bool | None] = mapped_column(Boolean)
    # The synthesis partition: the data-interval date of the crawl run that first stored the image.
    crawl_date: Mapped[dt.date] = mapped_column(Date)
    first_crawl_run_id: Mapped[int | None] = mapped_column(ForeignKey("crawl_run.id"))
    task_type: Mapped[str | None] = mapped_column(String(30))  # assigned once, then stable
    created_at: Mapped[dt.datetime] = _now()
    taken_down_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(_in("status", IMAGE_STATUSES), name="status"),
        CheckConstraint(f"task_type IS NULL OR {_in('task_type', TASK_TYPES)}", name="task_type"),
        CheckConstraint("status = 'accepted' OR status = 'taken_down' OR reason IS NOT NULL", name="reason"),
        Index("ix_image_crawl_date_status", "crawl_date", "status"),
        Index("ix_image_phash", "phash"),
    )


class Curation(Base):
    """An accepted image's current curation verdict (issue 18, migration 0010): one row per image, rewritten
    when the curation config changes (a threshold, a switched-off filter, the Chinese-text share), so a
    re-curation re-labels without re-crawling. `reasons` are stable filter names; `scores` the filters'
    measurements; personal data is recorded by kind (`personal_data.mobile`), never its value."""

    __tablename__ = "curation"

    image_id: Mapped[int] = mapped_column(ForeignKey("image.id"), primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    reasons: Mapped[list[Any]] = mapped_column(server_default=text("'[]'::jsonb"))
    scores: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    config_version: Mapped[str] = mapped_column(String(40))
    curated_at: Mapped[dt.datetime] = _now()
    dag_id: Mapped[str | None] = mapped_column(String(250))
    run_id: Mapped[str | None] = mapped_column(String(250))
    task_id: Mapped[str | None] = mapped_column(String(250))
    map_index: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        CheckConstraint(_in("status", CURATION_STATUSES), name="status"),
        CheckConstraint("status = 'curated' OR reasons <> '[]'::jsonb", name="reason"),
        Index("ix_curation_status", "status"),
    )


class ImageSource(Base):
    """Every URL a candidate image was seen at — kept for duplicates and rejections too."""

    __tablename__ = "image_source"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("image.id"))
    crawl_run_id: Mapped[int] = mapped_column(ForeignKey("crawl_run.id"))
    last_crawl_run_id: Mapped[int | None] = mapped_column(ForeignKey("crawl_run.id"))
    site: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(Text)
    page_url: Mapped[str] = mapped_column(Text)
    page_title: Mapped[str | None] = mapped_column(Text)
    alt_text: Mapped[str | None] = mapped_column(Text)
    context_text: Mapped[str | None] = mapped_column(Text)
    found_in: Mapped[str | None] = mapped_column(String(30))  # img, data-src, srcset, picture, og:image
    outcome: Mapped[str] = mapped_column(String(30))  # accepted / duplicate / near_duplicate / rejected
    reason: Mapped[str | None] = mapped_column(String(100))
    http_status: Mapped[int | None] = mapped_column(Integer)
    content_type: Mapped[str | None] = mapped_column(String(200))
    fetched_at: Mapped[dt.datetime] = _now()
    last_seen_at: Mapped[dt.datetime] = _now()

    __table_args__ = (
        UniqueConstraint("url", "page_url", name="uq_image_source_url_page"),
        # (image_id, site): lookups by image and samples per site as an index-only scan (migration 0007)
        Index("ix_image_source_image_site", "image_id", "site"),
        Index("ix_image_source_site", "site"),
        Index("ix_image_source_page_url", "page_url"),  # lineage and takedowns by page URL (migration 0004)
    )


class Generation(Base):
    """One paid completion; also the response cache that makes reruns free."""

    __tablename__ = "generation"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    request_key: Mapped[str] = mapped_column(String(64), unique=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id"))
    task_type: Mapped[str] = mapped_column(String(30))
    language: Mapped[str] = mapped_column(String(8))
    prompt_id: Mapped[str] = mapped_column(String(100))
    prompt_version: Mapped[int] = mapped_column(Integer)
    prompt_sha256: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    sampling: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(20), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    raw_text: Mapped[str | None] = mapped_column(Text)
    response: Mapped[dict[str, Any] | None] = mapped_column()
    finish_reason: Mapped[str | None] = mapped_column(String(30))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    error_type: Mapped[str | None] = mapped_column(String(50))
    error: Mapped[str | None] = mapped_column(Text)
    dag_id: Mapped[str | None] = mapped_column(String(250))
    run_id: Mapped[str | None] = mapped_column(String(250))
    task_id: Mapped[str | None] = mapped_column(String(250))
    map_index: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = _now()
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # A mapped task's lease on a pending row (migration 0012, tuwen.synthesis.claims).
    claimed_by: Mapped[str | None] = mapped_column(String(300))
    claimed_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(_in("status", GENERATION_STATUSES), name="status"),
        CheckConstraint(_in("task_type", TASK_TYPES), name="task_type"),
        Index("ix_generation_image_id", "image_id"),
        Index("ix_generation_status", "status"),
        Index("ix_generation_run_pending", "dag_id", "run_id", "id", postgresql_where=text("status = 'pending'")),
        # Covering index for per-model / per-prompt statistics (migration 0005): no wide-row reads.
        Index("ix_generation_stats", "model", "prompt_id", "prompt_version", "status",
              postgresql_include=["attempts", "prompt_tokens", "completion_tokens", "latency_ms"]),
    )


class Judgement(Base):
    """One paid faithfulness-judge completion about one sample (issue 17): the VLM, shown the image and
    the sample, quotes the statements the image contradicts (judge prompt v1: labels every statement
    supported / contradicted / unverifiable). Like `generation`, the
    unique request key (sample, judge prompt, model, params) makes a rerun pay nothing; the quality
    gate reads the latest succeeded judgement of a sample (check `faithfulness.judge`)."""

    __tablename__ = "judgement"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    request_key: Mapped[str] = mapped_column(String(64), unique=True)
    sample_id: Mapped[str] = mapped_column(ForeignKey("sample.id"))
    language: Mapped[str] = mapped_column(String(8))
    prompt_id: Mapped[str] = mapped_column(String(100))
    prompt_version: Mapped[int] = mapped_column(Integer)
    prompt_sha256: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(20), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    # Statement counts and the statements themselves ([{"text", "label"}], bounded by the parser). A v2
    # verdict lists only contradicted statements: n_supported / n_unverifiable are NULL (not asked).
    n_supported: Mapped[int | None] = mapped_column(Integer)
    n_contradicted: Mapped[int | None] = mapped_column(Integer)
    n_unverifiable: Mapped[int | None] = mapped_column(Integer)
    statements: Mapped[list[Any] | None] = mapped_column()
    raw_text: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(30))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    error_type: Mapped[str | None] = mapped_column(String(50))
    error: Mapped[str | None] = mapped_column(Text)
    dag_id: Mapped[str | None] = mapped_column(String(250))
    run_id: Mapped[str | None] = mapped_column(String(250))
    task_id: Mapped[str | None] = mapped_column(String(250))
    map_index: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = _now()
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(_in("status", GENERATION_STATUSES), name="status"),
        Index("ix_judgement_sample_id", "sample_id"),
    )


class QCRun(Base):
    __tablename__ = "qc_run"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    suite: Mapped[str] = mapped_column(String(100))
    suite_version: Mapped[str] = mapped_column(String(40))
    scope: Mapped[dict[str, Any]] = mapped_column()  # partition / release filters
    config: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    n_samples: Mapped[int] = mapped_column(Integer, server_default="0")
    n_passed: Mapped[int] = mapped_column(Integer, server_default="0")
    n_failed: Mapped[int] = mapped_column(Integer, server_default="0")
    pass_rate: Mapped[float | None] = mapped_column(Float)
    success: Mapped[bool | None] = mapped_column(Boolean)
    results: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    data_docs_key: Mapped[str | None] = mapped_column(Text)
    dag_id: Mapped[str | None] = mapped_column(String(250))
    run_id: Mapped[str | None] = mapped_column(String(250))
    created_at: Mapped[dt.datetime] = _now()


class Sample(Base):
    __tablename__ = "sample"

    # Deterministic id derived from the generation's request key, stable across reruns and exports.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generation.id"), unique=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id"))
    task_type: Mapped[str] = mapped_column(String(30))
    language: Mapped[str] = mapped_column(String(8))
    conversations: Mapped[list[Any]] = mapped_column()
    rounds: Mapped[int] = mapped_column(Integer)
    parse_notes: Mapped[list[Any]] = mapped_column(server_default=text("'[]'::jsonb"))
    qc_status: Mapped[str] = mapped_column(String(20), server_default="pending")
    qc_reasons: Mapped[list[Any]] = mapped_column(server_default=text("'[]'::jsonb"))
    qc_metrics: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    qc_run_id: Mapped[int | None] = mapped_column(ForeignKey("qc_run.id"))
    created_at: Mapped[dt.datetime] = _now()

    __table_args__ = (
        CheckConstraint(_in("qc_status", QC_STATUSES), name="qc_status"),
        CheckConstraint(_in("task_type", TASK_TYPES), name="task_type"),
        Index("ix_sample_image_id", "image_id"),
        # Covering index for the per-day / per-site / per-language counts (migration 0005).
        Index("ix_sample_image_task_language_qc", "image_id", "task_type", "language", "qc_status"),
        Index("ix_sample_qc_status_task", "qc_status", "task_type"),
    )


class Export(Base):
    __tablename__ = "export"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # Re-exporting a published name (only with overwrite) adds the next version; the old row is kept.
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    params: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(20), server_default="writing")
    n_samples: Mapped[int] = mapped_column(Integer, server_default="0")
    files: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    s3_prefix: Mapped[str | None] = mapped_column(Text)
    local_path: Mapped[str | None] = mapped_column(Text)
    qc_run_id: Mapped[int | None] = mapped_column(ForeignKey("qc_run.id"))
    dag_id: Mapped[str | None] = mapped_column(String(250))
    run_id: Mapped[str | None] = mapped_column(String(250))
    created_at: Mapped[dt.datetime] = _now()
    published_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    superseded_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(_in("status", ("writing", "published", "failed", "superseded")), name="status"),
        UniqueConstraint("name", "version", name="uq_export_name_version"),
        # A name has at most one published release; superseded and failed versions keep their rows.
        Index("uq_export_published_name", "name", unique=True, postgresql_where=text("status = 'published'")),
    )


class ExportItem(Base):
    """Which sample went where in a release. No foreign keys (migration 0003 dropped them): the rows are
    written by one INSERT ... SELECT from the rows they point at, in one transaction, and lineage rows are
    never deleted; row-level FK checks lock every referenced sample and image (41 s of a 624k-sample
    export, measured). A failed release's items are deleted explicitly (`tuwen.release.export`)."""

    __tablename__ = "export_item"

    export_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sample_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    image_id: Mapped[int] = mapped_column(BigInteger)
    position: Mapped[int] = mapped_column(Integer)
    file: Mapped[str] = mapped_column(Text)
    image_path: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        # "Each sample on a distinct image" is enforced by the database, per release.
        UniqueConstraint("export_id", "image_id", name="uq_export_item_export_image"),
        Index("ix_export_item_sample_id", "sample_id"),
        Index("ix_export_item_image_id", "image_id"),
    )


class Takedown(Base):
    __tablename__ = "takedown"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    value: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _now()

    __table_args__ = (
        UniqueConstraint("kind", "value", name="uq_takedown_kind_value"),
        CheckConstraint(_in("kind", ("url", "domain", "image_sha256")), name="kind"),
    )


class TakedownImage(Base):
    """Which images a takedown removed, and what their status was: attribution for the analysts'
    impact query without re-matching URLs, and what a reverted takedown restores."""

    __tablename__ = "takedown_image"

    takedown_id: Mapped[int] = mapped_column(ForeignKey("takedown.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id"), primary_key=True)
    previous_status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = _now()

    __table_args__ = (Index("ix_takedown_image_image_id", "image_id"),)


class VLMFlow(Base):
    """In-flight control shared by every run through one VLM endpoint (issue 19, migration 0011,
    tuwen.synthesis.inflight): the AIMD controller's state, read and written under this row's lock."""

    __tablename__ = "vlm_flow"

    endpoint: Mapped[str] = mapped_column(Text, primary_key=True)  # the model and its sorted base URLs
    state: Mapped[dict[str, Any] | None] = mapped_column()  # AIMDController.state(); None until the first tick
    read_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))  # the last /metrics reading applied
    updated_at: Mapped[dt.datetime] = _now()


class VLMFlowMember(Base):
    """One run (one mapped task's client) in a flow: its requests in flight and its demand, as of its last tick."""

    __tablename__ = "vlm_flow_member"

    endpoint: Mapped[str] = mapped_column(ForeignKey("vlm_flow.endpoint", ondelete="CASCADE"), primary_key=True)
    member: Mapped[str] = mapped_column(Text, primary_key=True)  # host:pid:random
    in_flight: Mapped[int] = mapped_column(Integer)
    demand: Mapped[int] = mapped_column(Integer)  # requests it would have in flight without a limit
    ceiling: Mapped[int] = mapped_column(Integer)  # its TUWEN_VLM_MAX_IN_FLIGHT
    seen_at: Mapped[dt.datetime] = _now()
