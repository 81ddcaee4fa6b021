"""Releases: LLaVA JSON (all tasks and one file per task), JSONL, images, manifest, dataset card.

A release is written to a temporary local folder and renamed into place only when complete; in the
object store its files go under `exports/<name>/` and `manifest.json` is uploaded last, so a
release without a manifest is never complete. Output is byte-identical for the same parameters
over the same lineage: rows are ordered by sample id, JSON is written with sorted keys, and no
timestamps go into data files. Samples are streamed from PostgreSQL, so memory does not grow with
the release.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from tuwen.config import TASK_TYPES, Settings
from tuwen.db.models import Export, ExportItem, Generation, Image, Sample
from tuwen.db.session import get_engine, session_scope
from tuwen.storage import ObjectStore

log = logging.getLogger(__name__)

# File names follow LLaVA-Instruct-150K (conversation_58k.json, detail_23k.json, ...).
TASK_FILE_STEM = {"conversation": "conversation", "complex_reasoning": "complex_reasoning", "detail": "detail"}
MANIFEST = "manifest.json"


class ExportError(RuntimeError):
    """The release could not be written; nothing partial was published."""


@dataclass(frozen=True)
class ReleaseParams:
    name: str
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    languages: tuple[str, ...] = ("zh",)
    task_types: tuple[str, ...] = TASK_TYPES
    qc_statuses: tuple[str, ...] = ("passed",)
    max_samples: int | None = None
    include_images: bool = True

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ExportError(f"release name {self.name!r} must be a plain folder name")
        unknown = set(self.task_types) - set(TASK_TYPES)
        if unknown:
            raise ExportError(f"unknown task types {sorted(unknown)}")

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "date_from": self.date_from.isoformat() if self.date_from else None,
            "date_to": self.date_to.isoformat() if self.date_to else None,
            "languages": list(self.languages), "task_types": list(self.task_types),
            "qc_statuses": list(self.qc_statuses), "max_samples": self.max_samples,
            "include_images": self.include_images,
        }


@dataclass
class ReleaseResult:
    name: str
    export_id: int
    n_samples: int
    counts_by_task: dict[str, int]
    local_path: Path
    s3_prefix: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)


def size_label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 else str(n)


def image_path(sha256: str, mime: str | None) -> str:
    ext = "png" if mime == "image/png" else "jpg"
    return f"images/{sha256[:2]}/{sha256}.{ext}"


def _selection(params: ReleaseParams) -> Any:
    """One sample per image (the newest), passing the QC filter, not taken down, ordered by id."""
    query = (
        select(Sample.id, Sample.task_type, Sample.conversations, Sample.image_id, Image.sha256, Image.model_key,
               Image.model_mime)
        .join(Image, Image.id == Sample.image_id)
        .join(Generation, Generation.id == Sample.generation_id)
        .where(Image.status == "accepted", Sample.qc_status.in_(params.qc_statuses),
               Sample.task_type.in_(params.task_types), Sample.language.in_(params.languages))
        .distinct(Sample.image_id)
        .order_by(Sample.image_id, Sample.created_at.desc(), Sample.id)
    )
    if params.date_from:
        query = query.where(Image.crawl_date >= params.date_from)
    if params.date_to:
        query = query.where(Image.crawl_date <= params.date_to)
    inner = query.subquery()
    ordered = select(inner).order_by(inner.c.id)
    if params.max_samples is not None:
        ordered = ordered.limit(params.max_samples)
    return ordered


class _JsonArrayWriter:
    """Writes a JSON array one record at a time (constant memory)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115 — closed in close()
        self.count = 0
        self.handle.write("[")

    def write(self, line: str) -> None:
        self.handle.write(",\n" if self.count else "\n")
        self.handle.write(line)
        self.count += 1

    def close(self) -> None:
        self.handle.write("\n]\n" if self.count else "]\n")
        self.handle.close()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _iter_rows(settings: Settings, params: ReleaseParams) -> Iterator[Any]:
    with get_engine(settings.database_url).connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=2000).execute(_selection(params))
        yield from result


def write_release(settings: Settings, params: ReleaseParams, *, dag_id: str | None = None,
                  run_id: str | None = None, qc_run_id: int | None = None) -> ReleaseResult:
    """Write and publish a release; rewriting an existing name replaces it (same bytes for same lineage)."""
    store = ObjectStore(settings)
    release_dir = settings.release_dir
    final_dir = release_dir / params.name
    tmp_dir = release_dir / f".tmp-{params.name}-{os.getpid()}"
    s3_prefix = f"exports/{params.name}/"
    with session_scope(settings.database_url) as session:
        stmt = insert(Export).values(name=params.name, params=params.as_json(), status="writing",
                                     dag_id=dag_id, run_id=run_id, qc_run_id=qc_run_id)
        export_id = session.execute(
            stmt.on_conflict_do_update(
                index_elements=["name"],
                set_={"params": stmt.excluded.params, "status": "writing", "dag_id": dag_id, "run_id": run_id,
                      "qc_run_id": qc_run_id, "published_at": None},
            ).returning(Export.id)
        ).scalar_one()
        session.execute(delete(ExportItem).where(ExportItem.export_id == export_id))
    try:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir(parents=True)
        counts, files = _write_files(settings, params, store, tmp_dir, export_id)
        # Publish: objects first, manifest last; then the local folder appears in one rename.
        if store.list_keys(s3_prefix):
            store.remove_prefix(s3_prefix)
        for rel in sorted(files):
            store.put_file(s3_prefix + rel, tmp_dir / rel, _content_type(rel))
        store.put_file(s3_prefix + MANIFEST, tmp_dir / MANIFEST, "application/json")
        if final_dir.exists():
            shutil.rmtree(final_dir)
        tmp_dir.rename(final_dir)
    except BaseException as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        with session_scope(settings.database_url) as session:
            session.execute(update(Export).where(Export.id == export_id).values(status="failed"))
        if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, ExportError):
            raise ExportError(f"release {params.name!r} failed and was not published: {exc}") from exc
        raise
    n_samples = sum(counts.values())
    with session_scope(settings.database_url) as session:
        session.execute(
            update(Export).where(Export.id == export_id).values(
                status="published", n_samples=n_samples, files=files, s3_prefix=s3_prefix,
                local_path=str(final_dir), published_at=func.now())
        )
    return ReleaseResult(params.name, export_id, n_samples, dict(counts), final_dir, s3_prefix, files)


def _content_type(rel: str) -> str:
    if rel.endswith(".json"):
        return "application/json"
    if rel.endswith(".jsonl"):
        return "application/x-ndjson"
    if rel.endswith(".md"):
        return "text/markdown; charset=utf-8"
    if rel.endswith(".png"):
        return "image/png"
    if rel.endswith(".jpg"):
        return "image/jpeg"
    return "application/octet-stream"


def _write_files(settings: Settings, params: ReleaseParams, store: ObjectStore, out: Path, export_id: int
                 ) -> tuple[Counter[str], dict[str, dict[str, Any]]]:
    lang = "_".join(params.languages)
    all_writer = _JsonArrayWriter(out / "all.json.part")
    task_writers = {t: _JsonArrayWriter(out / f"{t}.json.part") for t in params.task_types}
    jsonl = open(out / "all.jsonl.part", "w", encoding="utf-8")  # noqa: SIM115
    counts: Counter[str] = Counter()
    items: list[dict[str, Any]] = []
    image_files: list[str] = []
    engine = get_engine(settings.database_url)

    def flush() -> None:
        if items:
            with engine.begin() as conn:
                conn.execute(insert(ExportItem), items)
            items.clear()

    try:
        for position, row in enumerate(_iter_rows(settings, params)):
            path = image_path(row.sha256, row.model_mime)
            record = {"id": row.id, "image": path, "conversations": row.conversations}
            line = json.dumps(record, ensure_ascii=False, sort_keys=True)
            all_writer.write(line)
            task_writers[row.task_type].write(line)
            jsonl.write(line + "\n")
            counts[row.task_type] += 1
            items.append({"export_id": export_id, "sample_id": row.id, "image_id": row.image_id,
                          "position": position, "file": row.task_type, "image_path": path})
            if params.include_images:
                target = out / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(store.get_bytes(row.model_key))
                image_files.append(path)
            if len(items) >= 5000:
                flush()
        flush()
    finally:
        all_writer.close()
        for w in task_writers.values():
            w.close()
        jsonl.close()

    n = sum(counts.values())
    names = {"all.json.part": f"llava_instruct_{lang}_{size_label(n)}.json",
             "all.jsonl.part": f"llava_instruct_{lang}_{size_label(n)}.jsonl"}
    for t in params.task_types:
        names[f"{t}.json.part"] = f"{TASK_FILE_STEM[t]}_{size_label(counts[t])}.json"
    for part, final in names.items():
        (out / part).rename(out / final)
    (out / "dataset_info.json").write_text(_llamafactory_info(params.name, names["all.json.part"]), encoding="utf-8")
    files: dict[str, dict[str, Any]] = {}
    for rel in sorted([*names.values(), "dataset_info.json", *image_files]):
        p = out / rel
        files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {
        "release": params.name, "params": params.as_json(), "samples": n,
        "samples_by_task": {t: counts[t] for t in params.task_types},
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, sort_keys=True, indent=1) + "\n",
                                encoding="utf-8")
    return counts, files


def _llamafactory_info(name: str, json_file: str) -> str:
    """LLaMA-Factory's dataset_info.json entry for this release (sharegpt format, LLaVA roles)."""
    entry = {
        name: {
            "file_name": json_file,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "images": "image"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
        }
    }
    return json.dumps(entry, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
