"""The local S3 server's objects on disk: written through on every change, loaded back at start.

MinIO keeps its objects on disk, so a restarted production stack still has every object its
database rows point at. moto keeps them in memory only; this module gives the local server the same
property. moto's S3 backend funnels every change of an object through `put_object` (plain PUT,
copy, completed multipart upload) and `delete_object` (single and multi-object delete), and every
change of a bucket through `create_bucket` / `delete_bucket`. `DiskMirror.install` wraps those four
to note what changed; once moto has answered a request (moto sets an object's metadata after
`put_object` returns) the server takes the changes (`take_changes`, on the event loop, where moto's
state is consistent) and writes them in one writer thread, in order, before the answer is sent: an
acknowledged write is on disk (in the page cache: a process stop or kill loses nothing; a power
loss may lose the last writes, as nothing is fsynced), and the loop serves other requests while the
filesystem works.

Layout under the data folder:
  <bucket>/bucket.json                   the bucket's account, partition and region
  <bucket>/objects/<h[:2]>/<h>           one file per object, h = SHA-256 of its key: a JSON header
                                         line (key, ETag, last modified, storage class, metadata
                                         including Content-Type and x-amz-meta-*), then the bytes

Keys are hashed into file names so that any key S3 allows (1,024 bytes, `a` beside `a/b`, `..`)
maps to one file. Only each key's current version is kept; tags, ACLs and bucket configuration
(versioning, policies) are not.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moto.s3.models import FakeKey, S3Backend, s3_backends

logger = logging.getLogger(__name__)

BUCKET_FILE = "bucket.json"
OBJECTS_DIR = "objects"


def object_file_name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class DiskMirror:
    """A folder holding every bucket and object of moto's S3 backends in this process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dirty_keys: set[tuple[str, str]] = set()
        self._dirty_buckets: set[str] = set()
        self._made_dirs: set[Path] = set()

    # --- at start ---------------------------------------------------------------------------

    def load(self) -> int:
        """Create every stored bucket and object in moto's backends; the number of objects loaded."""
        self.root.mkdir(parents=True, exist_ok=True)
        loaded = 0
        for bucket_dir in sorted(p for p in self.root.iterdir() if (p / BUCKET_FILE).is_file()):
            info = json.loads((bucket_dir / BUCKET_FILE).read_text(encoding="utf-8"))
            backend: S3Backend = s3_backends[info["account_id"]][info["partition"]]
            backend.create_bucket(info["name"], info["region"])
            objects = bucket_dir / OBJECTS_DIR
            for path in sorted(objects.glob("*/*")) if objects.is_dir() else []:
                if path.name.endswith(".tmp"):  # a write the server was stopped in the middle of
                    path.unlink(missing_ok=True)
                    continue
                try:
                    self._load_object(backend, info["name"], path)
                    loaded += 1
                except (ValueError, KeyError, UnicodeDecodeError) as exc:
                    logger.warning("s3 data: skipping unreadable object file %s: %s", path, exc)
        return loaded

    @staticmethod
    def _load_object(backend: S3Backend, bucket: str, path: Path) -> None:
        with open(path, "rb") as f:
            header = json.loads(f.readline())
            value = f.read()
        if len(value) != header["size"]:
            raise ValueError(f"holds {len(value)} bytes, its header says {header['size']}")
        key = backend.put_object(bucket, header["key"], value, storage=header["storage_class"],
                                 etag=header["etag"], disable_notification=True)
        key.set_metadata(dict(header["metadata"]))
        key.last_modified = dt.datetime.fromisoformat(header["last_modified"])

    # --- while serving ----------------------------------------------------------------------

    def install(self) -> None:
        """Note every bucket and object moto's S3 backends change from now on (for `flush`)."""
        def noting(method: Callable[..., Any], note: Callable[[tuple[Any, ...], dict[str, Any]], None]
                   ) -> Callable[..., Any]:
            def wrapper(backend: S3Backend, *args: Any, **kwargs: Any) -> Any:
                try:
                    return method(backend, *args, **kwargs)
                finally:  # even a failed call may have changed something half-way
                    note(args, kwargs)
            return wrapper

        def key_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            bucket = kwargs["bucket_name"] if "bucket_name" in kwargs else args[0]
            key = kwargs["key_name"] if "key_name" in kwargs else args[1]
            self._dirty_keys.add((str(bucket), str(key)))

        def bucket_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self._dirty_buckets.add(str(kwargs["bucket_name"] if "bucket_name" in kwargs else args[0]))

        S3Backend.put_object = noting(S3Backend.put_object, key_of)  # type: ignore[method-assign]
        S3Backend.delete_object = noting(S3Backend.delete_object, key_of)  # type: ignore[method-assign]
        S3Backend.create_bucket = noting(S3Backend.create_bucket, bucket_of)  # type: ignore[method-assign]
        S3Backend.delete_bucket = noting(S3Backend.delete_bucket, bucket_of)  # type: ignore[method-assign]

    def take_changes(self) -> Callable[[], None] | None:
        """What changed since the last call, read from moto now, as a function that writes it to disk
        (buckets first, then their objects) and touches nothing of moto's, so another thread may run it.
        None when nothing changed."""
        buckets, self._dirty_buckets = self._dirty_buckets, set()
        keys, self._dirty_keys = self._dirty_keys, set()
        if not buckets and not keys:
            return None
        writes = [self._bucket_write(bucket) for bucket in sorted(buckets)]
        writes += [self._key_write(bucket, key) for bucket, key in sorted(keys)]

        def write() -> None:
            for one in writes:
                one()
        return write

    def flush(self) -> None:
        """Write what changed since the last call, here and now."""
        write = self.take_changes()
        if write is not None:
            write()

    @staticmethod
    def _bucket(name: str) -> Any:
        """moto's bucket of that name, or None."""
        owner = s3_backends.bucket_accounts.get(name)
        if owner is None:
            return None
        partition, account_id = owner
        return s3_backends[account_id][partition].buckets.get(name)

    def _bucket_write(self, name: str) -> Callable[[], None]:
        bucket_dir = self.root / name
        bucket = self._bucket(name)
        if bucket is None:
            def remove() -> None:
                shutil.rmtree(bucket_dir, ignore_errors=True)
                self._made_dirs = {d for d in self._made_dirs if bucket_dir not in d.parents}
            return remove
        info = json.dumps({"name": name, "account_id": bucket.account_id, "partition": bucket.partition,
                           "region": bucket.region_name}).encode("utf-8")

        def create() -> None:
            bucket_dir.mkdir(parents=True, exist_ok=True)
            self._replace(bucket_dir / BUCKET_FILE, [info])
        return create

    def _key_write(self, bucket_name: str, key_name: str) -> Callable[[], None]:
        h = object_file_name(key_name)
        folder = self.root / bucket_name / OBJECTS_DIR / h[:2]
        bucket = self._bucket(bucket_name)
        key = None if bucket is None else bucket.keys.get(key_name)
        if not isinstance(key, FakeKey):  # deleted (or only a delete marker left in a versioned bucket)
            return lambda: (folder / h).unlink(missing_ok=True)
        value = key.value
        header = json.dumps({"key": key.name, "size": len(value), "etag": key.etag.strip('"'),
                             "last_modified": key.last_modified.isoformat(), "storage_class": key.storage_class,
                             "metadata": dict(key.metadata)}).encode("utf-8")

        def put() -> None:
            if folder not in self._made_dirs:
                folder.mkdir(parents=True, exist_ok=True)
                self._made_dirs.add(folder)
            self._replace(folder / h, [header, b"\n", value])
        return put

    @staticmethod
    def _replace(path: Path, chunks: list[bytes]) -> None:
        """Write a file whole or not at all: a reader (or the next start) never sees half of it."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
