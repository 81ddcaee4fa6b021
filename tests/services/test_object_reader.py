"""`AsyncObjectReader`: synthesis's image reads on the event loop, with URLs the minio client presigns, against
the local S3 server over HTTP; the same outcomes as `ObjectStore.get_bytes` (bytes, a missing key, an outage)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

import pytest
from aiohttp import web

from tuwen.config import Settings
from tuwen.local.services import free_port
from tuwen.storage import AsyncObjectReader, ObjectMissingError, ObjectStore, StorageError


def _read(store: ObjectStore, *keys: str, exists: bool = False) -> list[bytes | bool | BaseException]:
    async def main() -> list[bytes | bool | BaseException]:
        reader = AsyncObjectReader(store, max_connections=4)
        try:
            calls = [reader.exists(k) if exists else reader.get_bytes(k) for k in keys]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await reader.aclose()

    return asyncio.run(main())


def test_reads_the_bytes_the_blocking_client_reads(settings: Settings) -> None:
    store = ObjectStore(settings)
    store.ensure_bucket()
    # A key the presigned URL must carry quoted (a space, Chinese) beside the hex keys synthesis reads.
    objects = {f"model/{i:02x}/{os.urandom(8).hex()}.jpg": os.urandom(150_000 + i) for i in range(12)}
    objects["model/zz/图片 1.jpg"] = os.urandom(5_000)
    for key, data in objects.items():
        store.put_bytes(key, data, "image/jpeg")
    read = _read(store, *objects)
    assert read == list(objects.values())
    assert all(a == store.get_bytes(k) for k, a in zip(objects, read, strict=True))
    assert _read(store, *objects, exists=True) == [True] * len(objects)


def test_a_missing_key_is_that_key_s_fact_and_a_missing_bucket_is_an_outage(settings: Settings) -> None:
    store = ObjectStore(settings)
    store.ensure_bucket()
    store.put_bytes("model/aa/here.jpg", b"x")
    here, gone = _read(store, "model/aa/here.jpg", "model/aa/gone.jpg")
    assert here == b"x"
    assert type(gone) is ObjectMissingError and "'model/aa/gone.jpg'" in str(gone)
    assert _read(store, "model/aa/here.jpg", "model/aa/gone.jpg", exists=True) == [True, False]

    no_bucket = ObjectStore(dataclasses.replace(settings, s3_bucket="tuwen-no-such-bucket"))
    [error] = _read(no_bucket, "model/aa/here.jpg")
    assert isinstance(error, StorageError) and not isinstance(error, ObjectMissingError)
    assert "NoSuchBucket" in str(error) and "tuwen-no-such-bucket" in str(error)


def test_an_unreachable_store_fails_after_bounded_retries_naming_the_endpoint(settings: Settings) -> None:
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    store = ObjectStore(dataclasses.replace(settings, s3_endpoint=endpoint))
    started = time.monotonic()
    [error] = _read(store, "model/aa/x.jpg")
    elapsed = time.monotonic() - started
    assert isinstance(error, StorageError) and not isinstance(error, ObjectMissingError)
    assert endpoint in str(error) and "'model/aa/x.jpg'" in str(error)
    assert "X-Amz-Signature" not in str(error)  # a presigned URL is a credential
    assert 3.0 <= elapsed < 15  # backoff 0.5 + 1 + 2 s between the 4 attempts, not a hang


def _flaky_server(failures: int, status: int) -> tuple[web.AppRunner, list[str], int]:
    """An HTTP server answering `status` to the first `failures` requests, then the object (fault injection:
    what a gateway in front of MinIO does while it restarts)."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        if len(seen) <= failures:
            return web.Response(status=status, text="<Error><Code>SlowDown</Code></Error>")
        return web.Response(body=b"the object")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return web.AppRunner(app), seen, free_port()


@pytest.mark.parametrize(("failures", "status", "outcome"), [
    (2, 503, b"the object"),  # retried, then read
    (9, 503, "HTTP 503"),  # still failing after the retries: an outage, with the status
    (9, 403, "HTTP 403"),  # refused: not retried, not a missing object
])
def test_server_errors_are_retried_and_refusals_are_not(settings: Settings, failures: int, status: int,
                                                         outcome: bytes | str) -> None:
    async def main() -> tuple[bytes | BaseException, list[str]]:
        runner, seen, port = _flaky_server(failures, status)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        store = ObjectStore(dataclasses.replace(settings, s3_endpoint=f"127.0.0.1:{port}"))
        reader = AsyncObjectReader(store, max_connections=2)
        try:
            [result] = await asyncio.gather(reader.get_bytes("model/aa/x.jpg"), return_exceptions=True)
        finally:
            await reader.aclose()
            await runner.cleanup()
        return result, seen

    result, seen = asyncio.run(main())
    if isinstance(outcome, bytes):
        assert result == outcome and len(seen) == failures + 1
    else:
        assert isinstance(result, StorageError) and not isinstance(result, ObjectMissingError)
        assert outcome in str(result)
        assert len(seen) == (4 if status >= 500 else 1)
    # Every attempt carries the signature minio computed (a re-quoted URL would not match it).
    assert all("X-Amz-Signature=" in path for path in seen)


def test_a_store_that_never_answers_is_bounded_by_the_read_timeout(settings: Settings) -> None:
    async def main() -> tuple[BaseException | bytes, float, int]:
        seen: list[str] = []

        async def hang(request: web.Request) -> web.Response:
            seen.append(request.path_qs)
            await asyncio.sleep(30)
            return web.Response(body=b"too late")

        app = web.Application()
        app.router.add_get("/{tail:.*}", hang)
        runner, port = web.AppRunner(app), free_port()
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        store = ObjectStore(dataclasses.replace(settings, s3_endpoint=f"127.0.0.1:{port}"))
        reader = AsyncObjectReader(store, max_connections=2, retries=1, read_timeout_s=0.5)
        started = time.monotonic()
        try:
            [result] = await asyncio.gather(reader.get_bytes("model/aa/x.jpg"), return_exceptions=True)
        finally:
            elapsed = time.monotonic() - started
            await reader.aclose()
            await runner.cleanup()
        return result, elapsed, len(seen)

    result, elapsed, attempts = asyncio.run(main())
    assert isinstance(result, StorageError) and "TimeoutError" in str(result)
    assert attempts == 2 and elapsed < 5  # two attempts of 0.5 s and a 0.5 s backoff, not the server's 30 s
