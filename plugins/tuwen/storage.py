"""The object store (MinIO in production, any S3 server locally), spoken to with the `minio` client.

Layout in the bucket:
  raw/<sha[:2]>/<sha>.<ext>      original bytes, content-addressed by SHA-256
  model/<sha[:2]>/<sha>.<ext>    model-ready copy (RGB, pixel budget, sides multiple of 28)
  exports/<release>/...          releases
  qc/<qc_run>/...                QC reports and Data Docs
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import urllib3
from minio import Minio
from minio.error import S3Error

from tuwen.config import Settings


class StorageError(RuntimeError):
    """The object store refused or could not be reached; the message says which endpoint and key."""


class ObjectMissingError(StorageError):
    """The store answered, and the object is not there: a fact about that one key, not an outage."""


_MISSING_CODES = ("NoSuchKey", "NoSuchObject", "ResourceNotFound")


def raw_key(sha256: str, ext: str) -> str:
    return f"raw/{sha256[:2]}/{sha256}.{ext}"


def model_key(sha256: str, ext: str) -> str:
    return f"model/{sha256[:2]}/{sha256}.{ext}"


class ObjectStore:
    def __init__(self, settings: Settings, *, retries: int = 3) -> None:
        self.endpoint = settings.s3_endpoint
        self.bucket = settings.s3_bucket
        # Bounded retries with backoff on connection errors and 5xx, short connect timeout:
        # an S3 outage must surface as a clear failure, not a hang.
        http = urllib3.PoolManager(
            num_pools=4,
            maxsize=32,
            timeout=urllib3.Timeout(connect=5, read=60),
            retries=urllib3.Retry(total=retries, backoff_factor=0.5, status_forcelist=(500, 502, 503, 504)),
        )
        self.client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=settings.s3_secure,
            region=settings.s3_region,
            http_client=http,
        )

    def _fail(self, action: str, key: str, exc: Exception) -> StorageError:
        return StorageError(f"object store {self.endpoint} bucket {self.bucket!r}: {action} {key!r} failed: {exc}")

    def ensure_bucket(self) -> bool:
        """Create the bucket if missing; True when it was created."""
        try:
            if self.client.bucket_exists(self.bucket):
                return False
            self.client.make_bucket(self.bucket)
            return True
        except (S3Error, urllib3.exceptions.HTTPError) as exc:
            raise self._fail("create bucket", self.bucket, exc) from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, key)
            return True
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                return False
            raise self._fail("stat", key, exc) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise self._fail("stat", key, exc) from exc

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        try:
            self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)
        except (S3Error, urllib3.exceptions.HTTPError) as exc:
            raise self._fail("put", key, exc) from exc

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        try:
            self.client.fput_object(self.bucket, key, str(path), content_type=content_type)
        except (S3Error, urllib3.exceptions.HTTPError) as exc:
            raise self._fail("put", key, exc) from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                raise ObjectMissingError(f"object store {self.endpoint} bucket {self.bucket!r}: no object {key!r}") from exc
            raise self._fail("get", key, exc) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise self._fail("get", key, exc) from exc

    def list_keys(self, prefix: str) -> list[str]:
        try:
            return [o.object_name for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)]
        except (S3Error, urllib3.exceptions.HTTPError) as exc:
            raise self._fail("list", prefix, exc) from exc

    def remove(self, key: str) -> None:
        """Delete one object; a key that is not there is no error (S3 semantics)."""
        try:
            self.client.remove_object(self.bucket, key)
        except (S3Error, urllib3.exceptions.HTTPError) as exc:
            raise self._fail("remove", key, exc) from exc

    def remove_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        for key in keys:
            self.remove(key)
        return len(keys)

    def presigned_get(self, key: str, expires_s: int = 900) -> str:
        # Short-lived by default: presigned URLs are bearer credentials.
        return self.client.presigned_get_object(self.bucket, key, expires=dt.timedelta(seconds=expires_s))
