"""The object store (MinIO in production, any S3 server locally), spoken to with the `minio` client (and, for
the images synthesis reads on its event loop, over aiohttp with URLs that client presigns: AsyncObjectReader).

Layout in the bucket:
  raw/<sha[:2]>/<sha>.<ext>      original bytes, content-addressed by SHA-256
  model/<sha[:2]>/<sha>.<ext>    model-ready copy (RGB, pixel budget, sides multiple of 28)
  exports/<release>/...          releases
  qc/<qc_run>/...                QC reports and Data Docs
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import re
from pathlib import Path

import aiohttp
import urllib3
import yarl
from minio import Minio
from minio.error import S3Error

from tuwen.config import Settings


class StorageError(RuntimeError):
    """The object store refused or could not be reached; the message says which endpoint and key."""


class ObjectMissingError(StorageError):
    """The store answered, and the object is not there: a fact about that one key, not an outage."""


_MISSING_CODES = ("NoSuchKey", "NoSuchObject", "ResourceNotFound")
# What the blocking client retries (its urllib3 Retry): the gateway statuses and a 500.
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_ERROR_CODE = re.compile(rb"<Code>([A-Za-z0-9.]{1,64})</Code>")
_PRESIGNED_QUERY = re.compile(r"\?X-Amz-[^\s'\"]*")


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

    def presigned_get(self, key: str, expires_s: int = 900, method: str = "GET") -> str:
        # Short-lived by default: presigned URLs are bearer credentials.
        return self.client.get_presigned_url(method, self.bucket, key, expires=dt.timedelta(seconds=expires_s))


class AsyncObjectReader:
    """Reads objects from an asyncio event loop, over its own aiohttp connections, with GET URLs that the
    minio client presigns.

    The synthesis hot path reads one image per request. Through minio's blocking client each read is a
    hand-off to a thread and back, http.client's header parsing, and a thread more contending for the
    GIL: a quarter of a task's CPU (docs/BENCHMARKS.md, session 11). Here a read is a coroutine on the loop
    that sends the requests. Its outcomes are `ObjectStore.get_bytes`'s: the bytes, ObjectMissingError for
    a key that is not there, StorageError for anything else, after the same bounded retries (connection
    errors and 5xx, backoff 0.5, 1, 2 s). Use it from one event loop and close it there.
    """

    def __init__(self, store: ObjectStore, *, max_connections: int, retries: int = 3,
                 connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0) -> None:
        # The blocking client's bounds (connect 5 s, read 60 s), here as one bound on each attempt.
        self.store = store
        self.max_connections = max_connections
        self.retries = retries
        # A whole-request bound rather than a per-read one: aiohttp reschedules a per-read timer on every chunk.
        self.timeout = aiohttp.ClientTimeout(total=read_timeout_s, connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _url(self, method: str, key: str) -> yarl.URL:
        # Presigned for a few minutes: long enough for the retries, short as a bearer credential should be.
        url = self.store.presigned_get(key, expires_s=300, method=method)
        return yarl.URL(url, encoded=True)  # as signed: re-quoting it would break the signature

    async def _request(self, method: str, key: str) -> tuple[int, bytes]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections), timeout=self.timeout,
                read_bufsize=1 << 18)  # a model-ready image in a few reads, not a few dozen
        url = self._url(method, key)
        for attempt in range(self.retries + 1):
            try:
                async with self._session.request(method, url) as response:
                    body = await response.read()
                if response.status not in _RETRY_STATUSES or attempt == self.retries:
                    return response.status, body
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt == self.retries:
                    # A presigned URL is a bearer credential for its minutes: never in a message or a log.
                    reason = _PRESIGNED_QUERY.sub("?<presigned>", f"{type(exc).__name__}: {exc}")
                    raise self.store._fail(method.lower(), key, RuntimeError(reason)) from None
            await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _error(self, action: str, key: str, status: int, body: bytes) -> StorageError:
        code = _error_code(body)
        if status == 404 and (code in _MISSING_CODES or (not body and action == "stat")):
            return ObjectMissingError(f"object store {self.store.endpoint} bucket {self.store.bucket!r}: no object {key!r}")
        return self.store._fail(action, key, RuntimeError(f"HTTP {status} {code or body[:200]!r}"))

    async def get_bytes(self, key: str) -> bytes:
        status, body = await self._request("GET", key)
        if status != 200:
            raise self._error("get", key, status, body)
        return body

    async def exists(self, key: str) -> bool:
        status, body = await self._request("HEAD", key)
        if status == 200:
            return True
        error = self._error("stat", key, status, body)
        if isinstance(error, ObjectMissingError):
            return False
        raise error

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _error_code(body: bytes) -> str | None:
    """The <Code> of an S3 error document, None when the body is not one."""
    found = _ERROR_CODE.search(body[:4096])
    return found.group(1).decode("ascii", "replace") if found else None
