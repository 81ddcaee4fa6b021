"""The object store (MinIO in production, any S3 server locally), spoken to with the `minio` client.

Layout in the bucket:
  raw/<sha[:2]>/<sha>.<ext>      original bytes, content-addressed by SHA-256
  model/<sha[:2]>/<sha>.<ext>    model-ready copy (RGB, pixel budget, sides multiple of 28)
  exports/<release>/...          releases
  qc/<qc_run>/...                QC reports and Data Docs
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from pathlib import Path
from urllib.parse import quote

import urllib3
from minio import Minio
from minio.error import S3Error

from tuwen.config import Settings


class StorageError(RuntimeError):
    """The object store refused or could not be reached; the message says which endpoint and key."""


class ObjectMissingError(StorageError):
    """The store answered, and the object is not there: a fact about that one key, not an outage."""


_MISSING_CODES = ("NoSuchKey", "NoSuchObject", "ResourceNotFound")
_SIGNED_HEADERS = "host;x-amz-content-sha256;x-amz-date"
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")


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
        # put_bytes signs its requests itself (see there) and sends them on this pool.
        self._put_pool = http.connection_from_url(f"{'https' if settings.s3_secure else 'http'}://{settings.s3_endpoint}")
        default_port = ":443" if settings.s3_secure else ":80"
        self._host = settings.s3_endpoint.removesuffix(default_port)
        self._access_key = settings.s3_access_key
        self._secret_key = settings.s3_secret_key
        self._region = settings.s3_region
        self._signing_keys: dict[str, bytes] = {}

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

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream", *,
                  sha256: str | None = None) -> None:
        """PUT one object in one request, signed here (AWS Signature V4, path-style, the payload's SHA-256
        signed as minio does over plain HTTP) on the client's connection pool and retry policy.

        `sha256` is the hex SHA-256 of `data` when the caller has it already (the crawler hashes every
        image anyway); otherwise it is computed here. minio's put_object hashed every payload again and
        spent about as much CPU again on its request building (docs/BENCHMARKS.md, Crawl)."""
        payload = sha256 or hashlib.sha256(data).hexdigest()
        path = f"/{self.bucket}/{quote(key, safe='/-_.~')}"
        amz_date = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        scope = f"{amz_date[:8]}/{self._region}/s3/aws4_request"
        canonical = (f"PUT\n{path}\n\nhost:{self._host}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}\n\n"
                     f"{_SIGNED_HEADERS}\n{payload}")
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(amz_date[:8]), to_sign.encode(), hashlib.sha256).hexdigest()
        headers = {
            "Host": self._host, "Content-Type": content_type, "x-amz-content-sha256": payload, "x-amz-date": amz_date,
            "Authorization": f"AWS4-HMAC-SHA256 Credential={self._access_key}/{scope}, "
                             f"SignedHeaders={_SIGNED_HEADERS}, Signature={signature}",
        }
        try:
            response = self._put_pool.urlopen("PUT", path, body=data, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            raise self._fail("put", key, exc) from exc
        if response.status != 200:
            code = _ERROR_CODE.search(response.data)
            raise self._fail("put", key, RuntimeError(
                f"HTTP {response.status}" + (f" {code.group(1).decode(errors='replace')}" if code else "")))

    def _signing_key(self, day: str) -> bytes:
        """SigV4's key for one day (four HMACs), kept for the next requests."""
        key = self._signing_keys.get(day)
        if key is None:
            key = f"AWS4{self._secret_key}".encode()
            for part in (day, self._region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._signing_keys = {day: key}
        return key

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
