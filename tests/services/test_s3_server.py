"""The local S3 server (`tuwen.local.s3_server`): moto's app called on uvicorn's loop, spoken to over HTTP with
the minio client, as the crawler and exporter do."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import urllib3
from minio import Minio
from minio.error import S3Error

from tuwen.local.s3_server import inline_wsgi, wsgi_environ


@pytest.fixture
def client(s3_endpoint: str) -> Minio:
    minio = Minio(s3_endpoint, access_key="test", secret_key="test", secure=False)
    bucket = f"moto-{uuid.uuid4().hex[:8]}"
    minio.make_bucket(bucket)
    minio.bucket_name = bucket  # type: ignore[attr-defined]  # where the tests below write
    return minio


def test_objects_round_trip_with_metadata_and_etag(client: Minio) -> None:
    bucket = client.bucket_name  # type: ignore[attr-defined]
    data = bytes(range(256)) * 800  # 200 KB, a crawled photo's size
    result = client.put_object(bucket, "raw/ab/x.jpg", io.BytesIO(data), len(data), content_type="image/jpeg")
    assert result.etag == hashlib.md5(data).hexdigest()
    stat = client.stat_object(bucket, "raw/ab/x.jpg")
    assert (stat.size, stat.content_type) == (len(data), "image/jpeg")
    response = client.get_object(bucket, "raw/ab/x.jpg")
    assert response.read() == data
    response.release_conn()


def test_multipart_upload_of_a_large_file(client: Minio) -> None:
    bucket = client.bucket_name  # type: ignore[attr-defined]
    data = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(400_000))  # 12.8 MB: 3 parts
    client.put_object(bucket, "exports/big.json", io.BytesIO(data), len(data))
    assert client.stat_object(bucket, "exports/big.json").etag.endswith("-3")
    response = client.get_object(bucket, "exports/big.json")
    assert hashlib.sha256(response.read()).digest() == hashlib.sha256(data).digest()
    response.release_conn()


def test_missing_keys_and_head_requests(client: Minio) -> None:
    bucket = client.bucket_name  # type: ignore[attr-defined]
    with pytest.raises(S3Error) as missing:
        client.stat_object(bucket, "nope")
    assert missing.value.code in ("NoSuchKey", "ResourceNotFound")
    # A HEAD answer carries the object's length but no body, and the connection stays usable.
    client.put_object(bucket, "k", io.BytesIO(b"12345"), 5)
    http = urllib3.PoolManager(maxsize=1)
    head = http.request("HEAD", client.get_presigned_url("HEAD", bucket, "k"))
    assert (head.status, head.headers["Content-Length"], head.data) == (200, "5", b"")
    assert http.request("GET", client.presigned_get_object(bucket, "k")).data == b"12345"


def test_concurrent_uploads_over_kept_alive_connections(client: Minio) -> None:
    bucket = client.bucket_name  # type: ignore[attr-defined]
    payloads = {f"raw/{i:03d}": hashlib.sha256(str(i).encode()).digest() * 4000 for i in range(64)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: client.put_object(bucket, kv[0], io.BytesIO(kv[1]), len(kv[1])),
                      payloads.items()))
    listed = {o.object_name: o.size for o in client.list_objects(bucket, prefix="raw/", recursive=True)}
    assert listed == {key: len(value) for key, value in payloads.items()}


def test_environ_follows_pep_3333() -> None:
    scope = {"type": "http", "method": "PUT", "path": "/b/raw/图.jpg", "query_string": b"uploads=&x=1",
             "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 9000), "client": ("127.0.0.1", 5555),
             "headers": [(b"host", b"127.0.0.1:9000"), (b"content-length", b"3"), (b"content-type", b"image/jpeg"),
                         (b"x-amz-meta-a", b"1"), (b"x-amz-meta-a", b"2")]}
    environ = wsgi_environ(scope, b"abc")
    assert environ["PATH_INFO"] == "/b/raw/图.jpg".encode().decode("latin-1")  # WSGI's bytes-as-latin-1
    assert (environ["QUERY_STRING"], environ["CONTENT_LENGTH"], environ["CONTENT_TYPE"]) == (
        "uploads=&x=1", "3", "image/jpeg")
    assert environ["HTTP_X_AMZ_META_A"] == "1,2"
    assert environ["wsgi.input"].read() == b"abc"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"], environ["REMOTE_PORT"]) == ("127.0.0.1", "9000", "5555")


def _call(app: Any, body_chunks: list[bytes]) -> list[dict[str, Any]]:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(body_chunks) - 1}
                for i, c in enumerate(body_chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "PUT", "path": "/x", "query_string": b"", "http_version": "1.1",
             "headers": []}
    asyncio.run(inline_wsgi(app)(scope, receive, send))
    return sent


def test_the_app_sees_the_whole_body_and_a_crash_is_a_500() -> None:
    def echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("201 Created", [("X-Len", str(len(environ["wsgi.input"].read())))])
        return [b"ok"]

    start, body = _call(echo, [b"a" * 10, b"b" * 5, b"c"])
    assert (start["status"], dict(start["headers"])[b"x-len"], body["body"]) == (201, b"16", b"ok")

    def broken(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("boom")

    start, body = _call(broken, [b""])
    assert start["status"] == 500 and b"moto failed" in body["body"]
