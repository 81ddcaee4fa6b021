"""The local S3 server (`tuwen.local.s3_server`): moto's app called on uvicorn's loop, its objects kept on disk
across restarts, spoken to over HTTP with the minio client, as the crawler and exporter do."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from tuwen.local.s3_disk import object_file_name
from tuwen.local.s3_server import inline_wsgi, wsgi_environ
from tuwen.local.services import BackgroundService, free_port, s3_data_dir, s3_service


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


def _call(app: Any, body_chunks: list[bytes], take_changes: Any = None,
          sent: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(body_chunks) - 1}
                for i, c in enumerate(body_chunks)]
    sent = [] if sent is None else sent

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "PUT", "path": "/x", "query_string": b"", "http_version": "1.1",
             "headers": []}
    asyncio.run(inline_wsgi(app, take_changes)(scope, receive, send))
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


# --- objects kept on disk across restarts (`tuwen.local.s3_disk`) ----------------------------------


def test_what_a_request_changed_is_written_before_its_answer_and_a_failed_write_is_a_500() -> None:
    events: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        events.append("moto")
        start_response("200 OK", [])
        return [b"stored"]

    sent: list[dict[str, Any]] = []

    def take_changes() -> Any:
        events.append("taken")
        return lambda: events.append(f"written with {len(sent)} messages sent")

    _call(app, [b"x"], take_changes, sent)
    assert events == ["moto", "taken", "written with 0 messages sent"] and sent[0]["status"] == 200

    def disk_full() -> None:
        raise OSError(28, "No space left on device")

    start, body = _call(app, [b"x"], lambda: disk_full)
    assert start["status"] == 500 and body["body"] == b"moto failed\n"  # never acknowledged as stored


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[BackgroundService]:
    """An S3 server of this test's own, on its own run dir, so the test may stop and start it."""
    service = s3_service(free_port(), tmp_path)
    service.start()
    try:
        yield service
    finally:
        service.stop()


def _client(service: BackgroundService) -> Minio:
    return Minio(service.health_url.split("//", 1)[1].split("/", 1)[0], access_key="test", secret_key="test",
                 secure=False)


def _read(client: Minio, bucket: str, key: str) -> bytes:
    response = client.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def test_buckets_objects_and_metadata_survive_a_restart(own_server: BackgroundService) -> None:
    client = _client(own_server)
    client.make_bucket("kept")
    client.make_bucket("dropped")
    photo = bytes(range(256)) * 750  # 192 KB
    big = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(400_000))  # 12.8 MB: multipart
    client.put_object("kept", "raw/ab/图 1+1.jpg", io.BytesIO(photo), len(photo), content_type="image/jpeg",
                      metadata={"x-amz-meta-source": "https://xn--fsqu00a.cn/a.jpg"})
    client.put_object("kept", "exports/big.json", io.BytesIO(big), len(big), content_type="application/json")
    client.put_object("kept", "a", io.BytesIO(b"short key"), 9)
    client.put_object("kept", "a/b", io.BytesIO(b"a key under it"), 14)
    client.put_object("kept", "overwritten", io.BytesIO(b"old"), 3)
    client.put_object("kept", "overwritten", io.BytesIO(b"new bytes"), 9, content_type="text/plain")
    client.copy_object("kept", "copied.jpg", CopySource("kept", "raw/ab/图 1+1.jpg"))
    client.put_object("kept", "deleted", io.BytesIO(b"x"), 1)
    client.remove_object("kept", "deleted")
    client.put_object("kept", "deleted-in-bulk", io.BytesIO(b"y"), 1)
    assert not list(client.remove_objects("kept", [DeleteObject("deleted-in-bulk")]))
    client.remove_bucket("dropped")
    before = {o.object_name: (o.size, o.etag) for o in client.list_objects("kept", recursive=True)}
    stat_before = client.stat_object("kept", "raw/ab/图 1+1.jpg")

    own_server.stop()
    own_server.start()

    client = _client(own_server)
    assert [b.name for b in client.list_buckets()] == ["kept"]
    assert {o.object_name: (o.size, o.etag) for o in client.list_objects("kept", recursive=True)} == before
    assert set(before) == {"raw/ab/图 1+1.jpg", "exports/big.json", "a", "a/b", "overwritten", "copied.jpg"}
    assert _read(client, "kept", "raw/ab/图 1+1.jpg") == photo == _read(client, "kept", "copied.jpg")
    assert _read(client, "kept", "exports/big.json") == big
    assert (_read(client, "kept", "a"), _read(client, "kept", "a/b")) == (b"short key", b"a key under it")
    assert _read(client, "kept", "overwritten") == b"new bytes"
    stat = client.stat_object("kept", "raw/ab/图 1+1.jpg")
    assert (stat.content_type, stat.metadata["x-amz-meta-source"], stat.etag, stat.last_modified) == (
        "image/jpeg", "https://xn--fsqu00a.cn/a.jpg", stat_before.etag, stat_before.last_modified)
    big_stat = client.stat_object("kept", "exports/big.json")
    assert big_stat.etag.endswith("-3") and big_stat.content_type == "application/json"
    assert client.stat_object("kept", "overwritten").content_type == "text/plain"


def test_an_acknowledged_put_survives_a_kill(own_server: BackgroundService) -> None:
    client = _client(own_server)
    client.make_bucket("killed")
    data = os.urandom(190_000)
    client.put_object("killed", "raw/x.jpg", io.BytesIO(data), len(data), content_type="image/jpeg")
    pid = int(own_server.pid_file.read_text())
    os.killpg(pid, signal.SIGKILL)  # no shutdown handler runs: what was acknowledged must be on disk already
    own_server.stop()
    own_server.start()
    assert _read(_client(own_server), "killed", "raw/x.jpg") == data


def test_a_damaged_object_file_is_left_out_not_served_short(own_server: BackgroundService, tmp_path: Path) -> None:
    client = _client(own_server)
    client.make_bucket("damaged")
    for key in ("whole", "cut"):
        client.put_object("damaged", key, io.BytesIO(b"0123456789" * 100), 1000)
    own_server.stop()
    (cut,) = s3_data_dir(tmp_path).glob(f"damaged/objects/*/{object_file_name('cut')}")
    cut.write_bytes(cut.read_bytes()[:-10])  # a disk that lost the file's tail
    (cut.parent / "leftover.tmp").write_bytes(b"a write stopped half-way")
    own_server.start()
    client = _client(own_server)
    assert [o.object_name for o in client.list_objects("damaged")] == ["whole"]
    assert _read(client, "damaged", "whole") == b"0123456789" * 100
    assert not (cut.parent / "leftover.tmp").exists()
    assert "skipping unreadable object file" in own_server.log_file.read_text()
