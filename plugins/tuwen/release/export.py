"""Releases: LLaVA JSON (all tasks and one file per task), JSONL, images, manifest, dataset card.

How a release is made (`write_release`):

1. Takedowns are re-applied (images crawled since a domain was taken down are caught), then the
   selection — one sample per image, the newest passing the filters — goes into a temp table, and the
   release's contents are fixed in `export_item` in one INSERT ... SELECT: position (sample-id order),
   per-task file name and image path per sample. `export_item` is the source of truth: every file is
   rendered from it, and the analysts' "which release holds this" queries read it.
2. JSON files are streamed from `export_item` joined to `sample` (constant memory in the number of
   samples). Each record is the sample's stored JSONB text as PostgreSQL prints it, wrapped in
   {"id", "image", "conversations"}: exporting never re-encodes or changes a sample, and the bytes are
   the same for the same lineage. Every record is checked against the trainers' rules
   (`tuwen.release.trainer_formats.check_record`); one that fails stops the release (nothing ships silently broken).
3. Images are streamed in image-path order into a folder and/or deterministic tar shards
   (`images-00000.tar`, ...: ustar, mtime 0, uid/gid 0, mode 0644, sorted), with `images.sha256`
   (`sha256sum -c` format) listing every image.
4. `dataset_info.json` (LLaMA-Factory), `README.md` (the dataset card, from lineage) and
   `manifest.json` (SHA-256 and size of every other file, counts, params) are written last.

The release is written to a temporary local folder and renamed into place only when complete; in the
object store its files go under `exports/<name>/` and `manifest.json` is uploaded last, so a release
without a manifest is never complete. No timestamps go into any file: same params over the same
lineage give byte-identical files.

Published releases are immutable. Re-exporting a published name is refused unless `overwrite` is set;
then the new version goes under its own prefix (`exports/<name>@v2/`, ...) and replaces the old one
only once complete, in one transaction that marks the old `export` row `superseded` (its items, files
and objects are kept, so the releases that shipped a sample stay queryable). A failed export changes
nothing that was published.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from sqlalchemy import Connection, Engine

from tuwen.domain import TASK_TYPES
from tuwen.progress import progress_iter
from tuwen.release import queries
from tuwen.release.params import ReleaseParams
from tuwen.release.trainer_formats import check_record, iter_json_array
from tuwen.resources import Resources
from tuwen.storage import ObjectStore

log = logging.getLogger(__name__)

# File names follow LLaVA-Instruct-150K (conversation_58k.json, detail_23k.json, ...).
TASK_FILE_STEM = {"conversation": "conversation", "complex_reasoning": "complex_reasoning", "detail": "detail"}
MANIFEST = "manifest.json"
CARD = "README.md"
DATASET_INFO = "dataset_info.json"
QC_REPORT_DIR = "qc_report"
IMAGE_CHECKSUMS = "images.sha256"
_FETCH_WINDOW = 32  # images fetched ahead from the object store while earlier ones are written


class ExportError(RuntimeError):
    """The release could not be written; nothing partial was published."""


class ReleaseExists(ExportError):
    """The name belongs to a published release, and overwrite was not asked for."""


@dataclass
class ReleaseResult:
    name: str
    export_id: int
    n_samples: int
    counts_by_task: dict[str, int]
    local_path: Path
    s3_prefix: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, for logs and the benchmark


def size_label(n: int) -> str:
    """The N in `conversation_<N>.json`: whole thousands rounded down ("247k" for 247,431), so a name
    never claims more samples than the file holds; below 1000 the exact count ("412")."""
    return f"{n // 1000}k" if n >= 1000 else str(n)


def image_path(sha256: str, mime: str | None) -> str:
    """Where an image lives inside a release; keyed by the original's SHA-256, so stable across releases."""
    ext = "png" if mime == "image/png" else "jpg"
    return f"images/{sha256[:2]}/{sha256}.{ext}"


def mix_quotas(available: Mapping[str, int], weights: Mapping[str, int], cap: int | None) -> dict[str, int]:
    """Per-task counts for the largest release that meets the weights' ratio with what is available.

    N is the largest total whose exact proportional share of every weighted task fits its availability
    (then capped); shares are rounded by largest remainder, ties in task order. Because each exact share
    is at most the available integer, rounding up never exceeds it.
    """
    total_weight = sum(weights.values())
    weighted = [t for t in weights if weights[t] > 0]
    n = min(available.get(t, 0) * total_weight // weights[t] for t in weighted)
    if cap is not None:
        n = min(n, cap)
    exact = {t: n * weights.get(t, 0) / total_weight for t in available}
    quotas = {t: int(exact[t]) for t in available}
    order = sorted(available, key=lambda t: (-(exact[t] - quotas[t]), list(available).index(t)))
    for t in order[: n - sum(quotas.values())]:
        quotas[t] += 1
    return quotas


def file_names(params: ReleaseParams, counts: Mapping[str, int]) -> dict[str, str]:
    """Data file names by role: "all", "jsonl" and one per task type."""
    lang = "_".join(params.languages)
    n = sum(counts.values())
    names = {"all": f"llava_instruct_{lang}_{size_label(n)}.json"}
    if params.jsonl:
        names["jsonl"] = f"llava_instruct_{lang}_{size_label(n)}.jsonl"
    for t in params.task_types:
        names[t] = f"{TASK_FILE_STEM[t]}_{size_label(counts.get(t, 0))}.json"
    return names


class _HashingWriter:
    """Writes bytes to a file while hashing them, so no file is read back to checksum it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: IO[bytes] = open(path, "wb")  # noqa: SIM115 — closed in close()
        self.digest = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)
        self.bytes += len(data)

    def tell(self) -> int:  # tarfile asks where it is when it opens a file object
        return self.bytes

    def close(self) -> dict[str, Any]:
        self.handle.close()
        return {"sha256": self.digest.hexdigest(), "bytes": self.bytes}


class _JsonArrayWriter(_HashingWriter):
    """A JSON array with one record per line (the same lines as the JSONL file), streamed.

    Lines are joined and written in batches: one write and one hash update per batch, not per record.
    """

    _BATCH = 2000

    def __init__(self, path: Path, *, array: bool = True) -> None:
        super().__init__(path)
        self.array = array
        self.count = 0
        self._pending: list[bytes] = []
        if array:
            self.write(b"[")

    def record(self, line: bytes) -> None:
        self._pending.append(line)
        if len(self._pending) >= self._BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        if self.array:
            self.write((b",\n" if self.count else b"\n") + b",\n".join(self._pending))
        else:
            self.write(b"\n".join(self._pending) + b"\n")
        self.count += len(self._pending)
        self._pending.clear()

    def close(self) -> dict[str, Any]:
        self._flush()
        if self.array:
            self.write(b"\n]\n" if self.count else b"]\n")
        return super().close()


def _content(files: Mapping[str, Any]) -> dict[str, Any]:
    """What a release ships, less the files that describe the run that made it (the card, with its
    latencies, and the QC report, with its run id and time): a rerun over the same samples and images is
    the same release, and the published one stands."""
    return {name: entry for name, entry in files.items()
            if name != CARD and not name.startswith(f"{QC_REPORT_DIR}/")}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- selection ---------------------------------------------------------------------------------


def _select_into_export_items(conn: Connection, params: ReleaseParams, export_id: int) -> dict[str, int]:
    """Fix the release's contents in export_item; returns samples per task type."""
    # The selection sorts every sample in scope: in memory, not on disk.
    queries.set_work_mem(conn)
    counted = queries.pick_samples(conn, params)
    available = {t: int(counted.get(t, 0)) for t in params.task_types}
    if params.mix:
        quotas = mix_quotas(available, params.mix, params.max_samples)
        cap = None
    else:
        quotas, cap = dict(available), params.max_samples
        if cap is not None and cap < sum(available.values()):
            quotas = {t: 0 for t in params.task_types} | queries.picked_first_counts(conn, cap)
    queries.insert_export_items(conn, export_id, params.task_types, file_names(params, quotas), quotas, cap)
    return {t: quotas[t] for t in params.task_types}


# --- writing -----------------------------------------------------------------------------------


def _write_json_files(engine: Engine, params: ReleaseParams, out: Path, export_id: int,
                      counts: Mapping[str, int]) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    names = file_names(params, counts)
    writers = {role: _JsonArrayWriter(out / name, array=role != "jsonl") for role, name in names.items()}
    written: collections.Counter[str] = collections.Counter()
    all_writer, jsonl = writers["all"], writers.get("jsonl")
    try:
        for expected, row in enumerate(progress_iter(queries.iter_items(engine, export_id), f"export {params.name}",
                                                     log, total=sum(counts.values()), unit="samples")):
            if row.position != expected:  # a gap would mean export_item and the files disagree
                raise ExportError(f"export_item has no position {expected} (found {row.position})")
            conversations = row.conversations
            if not _looks_loadable(conversations):
                record = {"id": row.sample_id, "image": row.image_path, "conversations": json.loads(conversations)}
                problems = check_record(record)
                if problems:
                    raise ExportError(f"sample {row.sample_id} would be dropped or mis-read by trainers: "
                                      f"{'; '.join(problems)}; fix it or re-run QC before releasing")
            data = ('{"id": ' + json.dumps(row.sample_id) + ', "image": ' + json.dumps(row.image_path)
                    + ', "conversations": ' + conversations + "}").encode("utf-8")
            all_writer.record(data)
            writers[row.task_type].record(data)
            if jsonl is not None:
                jsonl.record(data)
            written[row.task_type] += 1
    finally:
        files = {names[role]: w.close() for role, w in writers.items()}
    if dict(written) != {t: c for t, c in counts.items() if c}:
        raise ExportError(f"wrote {dict(written)} samples but export_item holds {dict(counts)}")
    return names, files


# PostgreSQL prints a stored turn as {"from": "...", "value": "..."} (jsonb orders keys by length). A bare
# `{"` cannot occur inside a JSON string (quotes there are escaped), so these patterns only ever match
# structure, and the common case needs no JSON parse.
_TURN_RE = re.compile(r'\{"from": "([a-z]+)", "value": "')
_BLANK_VALUE_RE = re.compile(r'"value": "(?:\s|\\[nrt])*"\}')
_ALTERNATING = {n: ["human", "gpt"] * (n // 2) for n in range(2, 202, 2)}


def _looks_loadable(conversations: str) -> bool:
    """The fast path of `check_record` for one stored conversation as PostgreSQL prints it: only
    {from, value} turns, strictly human/gpt alternating and ending on gpt, no blank turn, exactly one
    `<image>` and it in the first turn. False sends the sample through `check_record` (parsed)."""
    roles = _TURN_RE.findall(conversations)
    if (not conversations.startswith('[{"from": "') or not conversations.endswith('"}]')
            or conversations.count('{"') != len(roles) or _ALTERNATING.get(len(roles)) != roles
            or conversations.count("<image>") != 1 or _BLANK_VALUE_RE.search(conversations)):
        return False
    first_turn_end = conversations.find('"}, {"from": ')
    return conversations.find("<image>") < first_turn_end


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _ShardWriter:
    """images-00000.tar, images-00001.tar, ...: each closes at shard_max_files or shard_max_bytes."""

    def __init__(self, out: Path, max_files: int, max_bytes: int) -> None:
        self.out, self.max_files, self.max_bytes = out, max_files, max_bytes
        self.shards: list[dict[str, Any]] = []
        self.files: dict[str, dict[str, Any]] = {}
        self._writer: _HashingWriter | None = None
        self._tar: tarfile.TarFile | None = None

    def add(self, name: str, data: bytes) -> None:
        current = self.shards[-1] if self.shards else None
        if current is None or current["count"] >= self.max_files or (
                current["count"] and current["content_bytes"] + len(data) > self.max_bytes):
            self._close_current()
            shard = f"images-{len(self.shards):05d}.tar"
            self._writer = _HashingWriter(self.out / shard)
            # ustar: fixed-size headers, no pax timestamps; our names are short ASCII paths.
            self._tar = tarfile.open(  # noqa: SIM115 — closed in _close_current()
                fileobj=cast(IO[bytes], self._writer), mode="w", format=tarfile.USTAR_FORMAT)
            current = {"file": shard, "count": 0, "content_bytes": 0, "first": name, "last": name}
            self.shards.append(current)
        assert self._tar is not None
        self._tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
        current["count"] += 1
        current["content_bytes"] += len(data)
        current["last"] = name

    def _close_current(self) -> None:
        if self._tar is not None and self._writer is not None:
            self._tar.close()
            self.files[self.shards[-1]["file"]] = self._writer.close()
        self._tar = self._writer = None

    def close(self) -> None:
        self._close_current()


def _iter_image_bytes(engine: Engine, store: ObjectStore, export_id: int) -> Iterator[tuple[str, bytes]]:
    """(release path, bytes) in path order, fetched a bounded window ahead (constant memory)."""
    pending: collections.deque[tuple[str, Future[bytes]]] = collections.deque()
    with ThreadPoolExecutor(max_workers=8) as pool, closing(queries.iter_image_keys(engine, export_id)) as rows:
        for row in rows:
            if not row.model_key:
                raise ExportError(f"image for {row.image_path} has no model-ready copy in the object store")
            pending.append((row.image_path, pool.submit(store.get_bytes, row.model_key)))
            if len(pending) >= _FETCH_WINDOW:
                path, future = pending.popleft()
                yield path, future.result()
        while pending:
            path, future = pending.popleft()
            yield path, future.result()


def _write_images(engine: Engine, params: ReleaseParams, store: ObjectStore, out: Path, export_id: int
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    layout = params.image_layout
    if layout == "none":
        return {}, {"layout": "none", "count": 0}
    shards = _ShardWriter(out, params.shard_max_files, params.shard_max_bytes) if layout in ("tar", "both") else None
    checksums = _HashingWriter(out / IMAGE_CHECKSUMS)
    count = 0
    try:
        for path, data in _iter_image_bytes(engine, store, export_id):
            checksums.write(f"{hashlib.sha256(data).hexdigest()}  {path}\n".encode())
            if layout in ("folder", "both"):
                target = out / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            if shards is not None:
                shards.add(path, data)
            count += 1
    finally:
        files = {IMAGE_CHECKSUMS: checksums.close()}
        if shards is not None:
            shards.close()
            files |= shards.files
    summary: dict[str, Any] = {"layout": layout, "count": count, "checksums": IMAGE_CHECKSUMS}
    if shards is not None:
        summary["shards"] = [{k: s[k] for k in ("file", "count", "first", "last")} for s in shards.shards]
    return files, summary


def _fetch_english_json(store: ObjectStore, key: str, dest: Path) -> Path:
    """The English source, streamed from the bucket (inputs/..., checked by ReleaseParams) to a file."""
    if not store.exists(key):
        raise ExportError(f"english_json: no object {key!r} in bucket {store.bucket!r}; upload it there first")
    try:
        store.client.fget_object(store.bucket, key, str(dest))
    except Exception as exc:  # the client's S3/HTTP errors: a clear message, not a traceback
        raise ExportError(f"english_json: could not download {key!r}: {exc}") from exc
    return dest


def _interleave_english(params: ReleaseParams, source: Path, out: Path, zh_file: str, n_zh: int
                        ) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """One more file: the release and an English LLaVA-Instruct array, evenly interleaved.

    Records of both are copied as they are (ours byte for byte; theirs re-serialised with their own key
    order). The order is a deterministic even spread: the next record comes from whichever source is
    furthest behind its share (ties: ours).
    """
    n_en = 0
    for record in iter_json_array(source):
        if not isinstance(record, dict) or "conversations" not in record:
            raise ExportError(f"{source}: element {n_en} is not a LLaVA record")
        if str(record.get("id", "")).startswith("tw-"):
            raise ExportError(f"{source}: id {record['id']!r} collides with tuwen's sample ids")
        n_en += 1
    name = f"llava_instruct_{'_'.join(params.languages)}_with_en_{size_label(n_zh + n_en)}.json"
    writer = _JsonArrayWriter(out / name)
    ours = _iter_own_lines(out / zh_file)
    theirs = (json.dumps(r, ensure_ascii=False).encode("utf-8") for r in iter_json_array(source))
    i = j = 0
    while i < n_zh or j < n_en:
        if j >= n_en or (i < n_zh and (2 * i + 1) * n_en <= (2 * j + 1) * n_zh):
            writer.record(next(ours))
            i += 1
        else:
            writer.record(next(theirs))
            j += 1
    files = {name: writer.close()}
    summary = {"file": name, "source": Path(params.english_json or source.name).name,
               "source_sha256": sha256_file(source),
               "records_zh": n_zh, "records_en": n_en,
               "share_en": round(n_en / (n_zh + n_en), 4) if n_zh + n_en else 0.0}
    return name, files, summary


def _iter_own_lines(path: Path) -> Iterator[bytes]:
    """Record lines of a JSON array written by _JsonArrayWriter (one record per line)."""
    with open(path, "rb") as handle:
        for raw in handle:
            line = raw.rstrip(b"\n")
            if line in (b"[", b"]", b"[]"):
                continue
            yield line[:-1] if line.endswith(b",") else line


def _llamafactory_info(name: str, names: Mapping[str, str], extra: Mapping[str, str]) -> str:
    """LLaMA-Factory's dataset_info.json for this release: sharegpt format with LLaVA's roles; use with
    `--dataset_dir <release folder>` (media_dir defaults to it, so `images/...` paths resolve)."""
    entry = {
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "images": "image"},
        "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
    }
    datasets = {name: {"file_name": names["all"], **entry}}
    for role, file in names.items():
        if role in TASK_TYPES:
            datasets[f"{name}_{role}"] = {"file_name": file, **entry}
    for key, file in extra.items():
        datasets[f"{name}_{key}"] = {"file_name": file, **entry}
    return json.dumps(datasets, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


_CONTENT_TYPES = {
    ".json": "application/json", ".jsonl": "application/x-ndjson", ".md": "text/markdown; charset=utf-8",
    ".tar": "application/x-tar", ".png": "image/png", ".jpg": "image/jpeg",
    ".sha256": "text/plain; charset=utf-8",
}


def _content_type(rel: str) -> str:
    return _CONTENT_TYPES.get(Path(rel).suffix, "application/octet-stream")


def _copy_qc_report(engine: Engine, store: ObjectStore, qc_run_id: int | None, out: Path
                    ) -> dict[str, dict[str, Any]]:
    """The QC report the gate decided on, copied from the bucket (not re-rendered) into `qc_report/`, so
    it is listed, checksummed and uploaded like every other file of the release; none when the QC run
    published no report."""
    if qc_run_id is None:
        return {}
    if not queries.qc_report_key(engine, qc_run_id):
        return {}
    from tuwen.quality.report import fetch_qc_report

    fetch_qc_report(store, qc_run_id, out / QC_REPORT_DIR)
    return {path.relative_to(out).as_posix(): {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            for path in sorted((out / QC_REPORT_DIR).rglob("*")) if path.is_file()}


def _write_files(resources: Resources, params: ReleaseParams, out: Path, export_id: int,
                 counts: Mapping[str, int], timings: dict[str, float], qc_run_id: int | None = None,
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    from tuwen.release.card import build_card  # the card reads lineage; imported here to keep imports light

    engine, store = resources.engine, resources.store
    started = time.perf_counter()
    names, files = _write_json_files(engine, params, out, export_id, counts)
    timings["json"] = time.perf_counter() - started
    started = time.perf_counter()
    image_files, image_summary = _write_images(engine, params, store, out, export_id)
    timings["images"] = time.perf_counter() - started
    started = time.perf_counter()
    files |= image_files
    extra: dict[str, str] = {}
    mix_summary = None
    if params.english_json:
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            source = _fetch_english_json(store, params.english_json, Path(tmp) / "english.json")
            extra["with_en"], mix_files, mix_summary = _interleave_english(params, source, out, names["all"],
                                                                           sum(counts.values()))
        files |= mix_files
    report_files = _copy_qc_report(engine, store, qc_run_id, out)
    files |= report_files
    (out / DATASET_INFO).write_text(_llamafactory_info(params.name, names, extra), encoding="utf-8")
    files[DATASET_INFO] = {"sha256": sha256_file(out / DATASET_INFO), "bytes": (out / DATASET_INFO).stat().st_size}
    manifest: dict[str, Any] = {
        "release": params.name, "params": params.as_json(), "samples": sum(counts.values()),
        "samples_by_task": {t: counts[t] for t in params.task_types},
        "data_files": names, "images": image_summary, "english_mix": mix_summary,
        "qc_report": f"{QC_REPORT_DIR}/index.html" if report_files else None,
    }
    timings["english_mix"] = time.perf_counter() - started
    started = time.perf_counter()
    card = build_card(engine, resources.settings.prompts_dir, export_id, params, manifest)
    timings["card"] = time.perf_counter() - started
    (out / CARD).write_text(card, encoding="utf-8")
    files[CARD] = {"sha256": sha256_file(out / CARD), "bytes": (out / CARD).stat().st_size}
    manifest["files"] = dict(sorted(files.items()))
    (out / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, sort_keys=True, indent=1) + "\n",
                                encoding="utf-8")
    return manifest["files"], manifest


# --- publishing ---------------------------------------------------------------------------------


def check_can_publish(engine: Engine, params: ReleaseParams) -> None:
    """Refuse, before anything is written (or a gate is run), to replace a published release without
    `overwrite`."""
    with engine.connect() as conn:
        current = queries.published(conn, params.name)
    if current is not None and not params.overwrite:
        raise ReleaseExists(
            f"release {params.name!r} is already published (version {current.version}, s3 {current.s3_prefix}); "
            "published releases are immutable: choose another name, or re-export with overwrite=true to publish "
            "a new version (the old one is kept as superseded)")


def version_prefix(name: str, version: int) -> str:
    """Where a version of a release lives in the bucket: the first at exports/<name>/, later ones beside it."""
    return f"exports/{name}/" if version == 1 else f"exports/{name}@v{version}/"


def _free_prefix(store: ObjectStore, name: str, version: int, manifest: bytes) -> str:
    """The version's prefix, unless a complete release (one with a manifest) that this lineage database
    does not know already sits there (a bucket that outlived its database): then the next free one. The
    same manifest there means the same files (it lists every file's SHA-256): uploading them again changes
    no byte, so that prefix is used. A prefix without a manifest holds only a failed upload's leftovers
    and is cleared."""
    prefix = version_prefix(name, version)
    suffix = 1
    while store.exists(prefix + MANIFEST):
        if store.get_bytes(prefix + MANIFEST) == manifest:
            return prefix
        log.warning("release %s: s3 %s holds a release this lineage database does not know; left as it is",
                    name, prefix)
        suffix += 1
        prefix = f"exports/{name}@v{version}.{suffix}/"
    if store.list_keys(prefix):
        store.remove_prefix(prefix)
    return prefix


def _start_version(engine: Engine, params: ReleaseParams, *, dag_id: str | None, run_id: str | None,
                   qc_run_id: int | None) -> tuple[int, int, queries.Published | None]:
    """The export row this attempt writes (export id, version) and the release it would replace.

    A failed or abandoned attempt under the name is reused (it never shipped); otherwise the next version
    is added. The published release, if any, is not touched here.
    """
    with engine.begin() as conn:
        queries.lock_name(conn, params.name)
        current = queries.published(conn, params.name)
        if current is not None and not params.overwrite:
            raise ReleaseExists(f"release {params.name!r} is already published (version {current.version}); "
                                "re-export with overwrite=true to publish a new version")
        values = {"params": params.as_json(), "status": "writing", "dag_id": dag_id, "run_id": run_id,
                  "qc_run_id": qc_run_id, "published_at": None, "n_samples": 0, "files": {}}
        export_id, version = queries.reuse_or_add_version(
            conn, params.name, current.version if current is not None else 0, values)
    return export_id, version, current


def _upload(store: ObjectStore, params: ReleaseParams, tmp_dir: Path, files: Mapping[str, Any], prefix: str) -> None:
    """Every file under the prefix, manifest last. With tar shards the loose image folder stays local:
    the shards carry the same files in few objects."""
    uploads = sorted(files)
    if params.image_layout == "folder":
        uploads += sorted(p.relative_to(tmp_dir).as_posix() for p in (tmp_dir / "images").rglob("*") if p.is_file())
    # A few uploads at once: one stream to the object store does not fill the link (or the CPU).
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(store.put_file, prefix + rel, tmp_dir / rel, _content_type(rel)) for rel in uploads]
        try:
            for future in futures:
                future.result()
        except BaseException:
            # One failed upload fails the release: do not spend retries on the queued rest.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    store.put_file(prefix + MANIFEST, tmp_dir / MANIFEST, "application/json")


def write_release(resources: Resources, params: ReleaseParams, *, dag_id: str | None = None,
                  run_id: str | None = None, qc_run_id: int | None = None) -> ReleaseResult:
    """Write and publish a release.

    A published name is immutable: without `params.overwrite` this raises ReleaseExists and changes
    nothing. With it, the new version is written under its own prefix and, once complete, published in
    the transaction that marks the previous one `superseded` (its rows, items and objects kept; its local
    folder moved to `<name>@v<version>`). When its samples and images are byte-identical to the published
    ones (the card and QC report aside), nothing is superseded and the published release is returned. A failed export leaves the previous
    release as it was.
    """
    from tuwen.release.takedowns import apply_takedowns

    settings, engine, store = resources.settings, resources.engine, resources.store
    check_can_publish(engine, params)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    apply_takedowns(engine)
    timings["takedowns"] = time.perf_counter() - started
    started = time.perf_counter()
    export_id, version, previous = _start_version(engine, params, dag_id=dag_id, run_id=run_id, qc_run_id=qc_run_id)
    final_dir = settings.release_dir / params.name
    tmp_dir = settings.release_dir / f".tmp-{params.name}-{os.getpid()}"
    s3_prefix: str | None = None
    try:
        with engine.begin() as conn:
            counts = _select_into_export_items(conn, params, export_id)
        timings["select"] = time.perf_counter() - started
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir(parents=True)
        files, _ = _write_files(resources, params, tmp_dir, export_id, counts, timings, qc_run_id)
        if previous is not None and _content(previous.files) == _content(files):
            shutil.rmtree(tmp_dir, ignore_errors=True)
            queries.drop_export(engine, export_id)
            log.info("release %s: the samples and images are byte-identical to published version %d; "
                     "nothing replaced",
                     params.name, previous.version)
            counts = queries.export_counts(engine, previous.export_id)
            return ReleaseResult(params.name, previous.export_id, sum(counts.values()), counts,
                                 Path(previous.local_path or final_dir), previous.s3_prefix, files, timings)
        started = time.perf_counter()
        s3_prefix = _free_prefix(store, params.name, version, (tmp_dir / MANIFEST).read_bytes())
        queries.set_s3_prefix(engine, export_id, s3_prefix)
        _upload(store, params, tmp_dir, files, s3_prefix)
        timings["upload"] = time.perf_counter() - started
        _switch(engine, params, export_id, version, previous, files, counts, tmp_dir, final_dir, s3_prefix)
    except BaseException as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        queries.mark_failed(engine, export_id)
        if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, ExportError):
            raise ExportError(f"release {params.name!r} failed and was not published: {exc}") from exc
        raise
    n_samples = sum(counts.values())
    log.info("release %s version %d: %d samples %s at %s and s3 %s; seconds %s", params.name, version, n_samples,
             dict(counts), final_dir, s3_prefix, {k: round(v, 2) for k, v in timings.items()})
    return ReleaseResult(params.name, export_id, n_samples, dict(counts), final_dir, s3_prefix, files, timings)


def _switch(engine: Engine, params: ReleaseParams, export_id: int, version: int, previous: queries.Published | None,
            files: Mapping[str, Any], counts: Mapping[str, int], tmp_dir: Path, final_dir: Path,
            s3_prefix: str) -> None:
    """Publish the complete new version: the local folder appears in one rename (the previous version's
    folder moved aside first), and one transaction supersedes the previous row and publishes the new;
    if that transaction fails, the folders are put back."""
    kept_dir = final_dir.with_name(f"{params.name}@v{previous.version}") if previous is not None else None
    moved_previous = published_new = False
    try:
        with engine.begin() as conn:
            queries.lock_name(conn, params.name)
            if queries.published(conn, params.name) != previous:
                raise ReleaseExists(f"release {params.name!r} was published by another run while this one was "
                                    "writing; nothing was replaced")
            if final_dir.exists():
                if kept_dir is not None:
                    shutil.rmtree(kept_dir, ignore_errors=True)
                    final_dir.rename(kept_dir)
                    moved_previous = True
                else:  # a folder no release in this database owns: a local copy of nothing it shipped
                    log.warning("release %s: replacing local folder %s that no published release owns",
                                params.name, final_dir)
                    shutil.rmtree(final_dir)
            tmp_dir.rename(final_dir)
            published_new = True
            if previous is not None:
                log.warning("release %s: overwrite: version %d (s3 %s) supersedes version %d, which is kept "
                            "(s3 %s, local copy %s)", params.name, version, s3_prefix, previous.version,
                            previous.s3_prefix, kept_dir if moved_previous else None)
                queries.supersede(conn, previous.export_id, str(kept_dir) if moved_previous else None)
            queries.publish(conn, export_id, n_samples=sum(counts.values()), files=files, s3_prefix=s3_prefix,
                            local_path=str(final_dir))
    except BaseException:
        if published_new:
            final_dir.rename(tmp_dir)
        if moved_previous and kept_dir is not None:
            kept_dir.rename(final_dir)
        raise
