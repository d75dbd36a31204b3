"""The object store contract, run over the local-disk store and over the S3 store against the harness's
MinIO: multipart uploads through presigned URLs, resume, completion, hashing, downloads and expiry; then
what only the S3 store does (bucket creation, the public endpoint, outages)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from fastapi import FastAPI
from minio import Minio
from minio.deleteobjects import DeleteObject

from services.common.errors import InvalidRequest, NotFound, Unavailable
from services.common.ids import new_id
from services.common.settings import FileSettings, S3Settings
from services.common.web import install_error_handlers
from services.file.adapters.local import LocalObjectStore, UrlSigner
from services.file.adapters.local_http import blob_router
from services.file.adapters.memory import MemoryFileCatalog
from services.file.adapters.s3 import S3ObjectStore
from services.file.app import (
    FileRef,
    StartUpload,
    UploadRef,
    UploadState,
    complete_upload,
    describe_upload,
    download_url,
    start_upload,
)
from services.file.domain import PartLayout, content_disposition
from services.file.ports import ObjectStore
from tests.harness.infra import ensure_infra

PART = 5 << 20
"""S3's smallest part but the last: uploads of several parts must use at least this."""

URL_TTL_S = 60


class Clock:
    """Real unix time, shifted when a test says so (to sign URLs in the past without waiting)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Backend:
    name: str
    store: ObjectStore
    http: httpx.AsyncClient
    clock: Clock
    layouts: dict[str, PartLayout] = field(default_factory=dict)
    """Part layouts of open uploads, which the local store's blob endpoint asks for."""

    async def create(self, key: str, size: int, part_size: int = PART) -> str:
        upload_id = await self.store.create_multipart(key)
        self.layouts[upload_id] = PartLayout(size, part_size)
        return upload_id

    async def put_part(self, key: str, upload_id: str, number: int, data: bytes) -> httpx.Response:
        url = await self.store.presign_part(key, upload_id, number, URL_TTL_S)
        return await self.http.put(url, content=data)


@contextmanager
def in_the_past(clock: Clock, seconds: float) -> Iterator[None]:
    """URLs signed inside are as old as ``seconds`` (already expired if their lifetime is shorter)."""
    clock.offset -= seconds
    try:
        yield
    finally:
        clock.offset += seconds


def key() -> str:
    return f"{hashlib.sha256(new_id().encode()).hexdigest()}/{new_id()}"


def payload(size: int) -> bytes:
    return os.urandom(size)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def raw_client(settings: S3Settings) -> Minio:
    return Minio(
        settings.endpoint,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        secure=False,
        region=settings.region,
    )


def unique_bucket() -> str:
    return f"courier-test-{uuid.uuid4().hex[:16]}"


def remove_bucket(client: Minio, bucket: str) -> None:
    if not client.bucket_exists(bucket):
        return
    objects = [DeleteObject(o.object_name or "") for o in client.list_objects(bucket, recursive=True)]
    for error in client.remove_objects(bucket, objects):
        raise AssertionError(f"could not remove {error.name}: {error.message}")
    client.remove_bucket(bucket)


@pytest.fixture(scope="session")
def minio() -> Iterator[S3Settings]:
    """The harness's MinIO (started if need be; an error, never a skip, if it cannot start) and a bucket
    name of this session's own, removed at the end."""
    env = ensure_infra(("minio",))["env"]
    settings = S3Settings(
        endpoint=env["COURIER_TEST_S3_ENDPOINT"],
        access_key=env["COURIER_TEST_S3_ACCESS_KEY"],
        secret_key=env["COURIER_TEST_S3_SECRET_KEY"],
        region=env["COURIER_TEST_S3_REGION"],
        bucket=unique_bucket(),
    )
    yield settings
    remove_bucket(raw_client(settings), settings.bucket)


@pytest.fixture
async def s3_store(minio: S3Settings) -> AsyncIterator[S3ObjectStore]:
    store = S3ObjectStore(minio)
    await store.start()
    yield store
    await store.close()


@pytest.fixture(params=["local", "s3"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    clock = Clock()
    if request.param == "s3":
        store = S3ObjectStore(request.getfixturevalue("minio"), clock=clock)
        await store.start()
        async with httpx.AsyncClient(timeout=30) as http:
            yield Backend("s3", store, http, clock)
        await store.close()
        return
    local = LocalObjectStore(tmp_path / "objects", UrlSigner("s3-contract-secret", clock))
    layouts: dict[str, PartLayout] = {}

    async def layout_of(upload_id: str) -> PartLayout:
        if upload_id not in layouts:
            raise NotFound("upload not found")
        return layouts[upload_id]

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(blob_router(local, layout_of=layout_of))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://courier.test") as http:
        yield Backend("local", local, http, clock, layouts)


# --------------------------------------------------------------------------------------- the contract


async def test_three_part_upload_through_presigned_urls_resumes_completes_and_downloads(backend: Backend) -> None:
    store, object_key = backend.store, key()
    data = payload(2 * PART + 12_345)
    parts = [data[:PART], data[PART : 2 * PART], data[2 * PART :]]
    upload_id = await backend.create(object_key, len(data))

    for number in (1, 2):
        response = await backend.put_part(object_key, upload_id, number, parts[number - 1])
        assert response.status_code == 200, response.text
        assert response.headers["etag"].strip('"') == md5(parts[number - 1])
    # A client coming back asks which parts arrived, then sends the rest to a fresh URL.
    assert await store.list_parts(object_key, upload_id) == {1: PART, 2: PART}
    response = await backend.put_part(object_key, upload_id, 3, parts[2])
    assert response.status_code == 200, response.text
    assert await store.list_parts(object_key, upload_id) == {1: PART, 2: PART, 3: 12_345}

    await store.complete(object_key, upload_id, [1, 2, 3])

    assert await store.exists(object_key) is True
    assert await store.sha256(object_key) == hashlib.sha256(data).hexdigest()
    with pytest.raises(NotFound):
        await store.list_parts(object_key, upload_id)
    name = "résumé final (v2).pdf"
    download = await backend.http.get(await store.presign_get(object_key, URL_TTL_S, name, "application/pdf"))
    assert download.status_code == 200, download.text
    assert download.content == data
    assert download.headers["content-type"] == "application/pdf"
    assert download.headers["content-disposition"] == content_disposition(name)


async def test_a_part_uploaded_again_replaces_the_earlier_one(backend: Backend) -> None:
    store, object_key = backend.store, key()
    upload_id = await backend.create(object_key, 5)
    assert (await backend.put_part(object_key, upload_id, 1, b"old!!")).status_code == 200
    assert (await backend.put_part(object_key, upload_id, 1, b"newer")).status_code == 200
    assert await store.list_parts(object_key, upload_id) == {1: 5}

    await store.complete(object_key, upload_id, [1])

    assert await store.sha256(object_key) == hashlib.sha256(b"newer").hexdigest()


async def test_completing_with_a_missing_part_fails_and_keeps_the_upload(backend: Backend) -> None:
    store, object_key = backend.store, key()
    upload_id = await backend.create(object_key, PART + 10)
    assert (await backend.put_part(object_key, upload_id, 1, payload(PART))).status_code == 200

    with pytest.raises(InvalidRequest, match="part 2"):
        await store.complete(object_key, upload_id, [1, 2])

    assert await store.exists(object_key) is False
    assert await store.list_parts(object_key, upload_id) == {1: PART}
    await store.abort(object_key, upload_id)


async def test_of_two_concurrent_completions_the_second_finds_no_upload(backend: Backend) -> None:
    store, object_key = backend.store, key()
    upload_id = await backend.create(object_key, 4)
    assert (await backend.put_part(object_key, upload_id, 1, b"data")).status_code == 200

    results = await asyncio.gather(
        store.complete(object_key, upload_id, [1]), store.complete(object_key, upload_id, [1]), return_exceptions=True
    )

    assert sorted(type(r).__name__ for r in results) == ["NoneType", "NotFound"]
    assert await store.sha256(object_key) == hashlib.sha256(b"data").hexdigest()


async def test_ended_uploads_and_missing_objects_are_not_found(backend: Backend) -> None:
    store, object_key = backend.store, key()
    upload_id = await backend.create(object_key, 1)
    await store.abort(object_key, upload_id)

    with pytest.raises(NotFound):
        await store.list_parts(object_key, upload_id)
    with pytest.raises(NotFound):
        await store.complete(object_key, upload_id, [1])
    assert (await backend.put_part(object_key, upload_id, 1, b"x")).status_code == 404
    with pytest.raises(NotFound):
        await store.sha256(object_key)
    assert await store.exists(object_key) is False


async def test_abort_and_delete_are_idempotent(backend: Backend) -> None:
    store, object_key = backend.store, key()
    upload_id = await backend.create(object_key, 1)
    assert (await backend.put_part(object_key, upload_id, 1, b"x")).status_code == 200
    await store.abort(object_key, upload_id)
    await store.abort(object_key, upload_id)
    with pytest.raises(NotFound):
        await store.list_parts(object_key, upload_id)

    other = await backend.create(object_key, 1)
    assert (await backend.put_part(object_key, other, 1, b"y")).status_code == 200
    await store.complete(object_key, other, [1])
    assert await store.exists(object_key) is True
    await store.delete(object_key)
    await store.delete(object_key)
    assert await store.exists(object_key) is False


@pytest.mark.parametrize("bad_key", ["../escape", "a/../../b", ".multipart/x", "/abs", "UPPER", "a//b", ""])
async def test_keys_outside_the_object_namespace_are_refused(backend: Backend, bad_key: str) -> None:
    with pytest.raises(InvalidRequest, match="key"):
        await backend.store.exists(bad_key)
    with pytest.raises(InvalidRequest, match="key"):
        await backend.store.create_multipart(bad_key)


async def test_an_expired_part_url_is_refused(backend: Backend) -> None:
    store, object_key = backend.store, key()
    upload_id = await backend.create(object_key, 1)
    with in_the_past(backend.clock, 3600):
        url = await store.presign_part(object_key, upload_id, 1, URL_TTL_S)

    response = await backend.http.put(url, content=b"x")

    assert response.status_code == 403, response.text
    assert await store.list_parts(object_key, upload_id) == {}
    await store.abort(object_key, upload_id)


async def test_an_expired_or_altered_download_url_is_refused(backend: Backend) -> None:
    store, object_key = backend.store, key()
    upload_id = await backend.create(object_key, 5)
    assert (await backend.put_part(object_key, upload_id, 1, b"hello")).status_code == 200
    await store.complete(object_key, upload_id, [1])
    with in_the_past(backend.clock, 3600):
        expired = await store.presign_get(object_key, URL_TTL_S, "a.txt", "text/plain")
    fresh = await store.presign_get(object_key, URL_TTL_S, "a.txt", "text/plain")

    assert (await backend.http.get(expired)).status_code == 403
    # Serving it as HTML on the store's origin would let an uploader script it: the type is signed.
    assert (await backend.http.get(replace_query(fresh, "text/plain", "text/html"))).status_code == 403
    assert (await backend.http.get(fresh)).content == b"hello"


def replace_query(url: str, old: str, new: str) -> str:
    parts = urlsplit(url)
    query = [(name, value.replace(old, new)) for name, value in parse_qsl(parts.query, keep_blank_values=True)]
    assert query != parse_qsl(parts.query, keep_blank_values=True)
    return urlunsplit(parts._replace(query=urlencode(query)))


# ------------------------------------------------------------------------------------- S3 store only


async def test_start_creates_the_bucket_and_starting_again_changes_nothing(minio: S3Settings) -> None:
    settings = minio.model_copy(update={"bucket": unique_bucket()})
    client = raw_client(settings)
    store = S3ObjectStore(settings)
    try:
        await store.start()
        await store.start()
        assert client.bucket_exists(settings.bucket)
    finally:
        await store.close()
        remove_bucket(client, settings.bucket)


async def test_parts_are_listed_past_the_first_page_of_a_thousand(s3_store: S3ObjectStore, minio: S3Settings) -> None:
    object_key = key()
    upload_id = await s3_store.create_multipart(object_key)
    limit = asyncio.Semaphore(64)

    async def put(http: httpx.AsyncClient, number: int) -> None:
        async with limit:
            url = await s3_store.presign_part(object_key, upload_id, number, URL_TTL_S)
            assert (await http.put(url, content=bytes([number % 256]))).status_code == 200

    async with httpx.AsyncClient(timeout=30) as http:
        await asyncio.gather(*(put(http, n) for n in range(1, 1003)))

    first_page = raw_client(minio)._list_parts(minio.bucket, object_key, upload_id, max_parts=1000)
    assert first_page.is_truncated, "the server listed every part at once: paging went untested"
    assert await s3_store.list_parts(object_key, upload_id) == dict.fromkeys(range(1, 1003), 1)
    # Every part but the last is below S3's minimum: S3 refuses, the store says why.
    with pytest.raises(InvalidRequest, match="refused"):
        await s3_store.complete(object_key, upload_id, range(1, 1003))
    await s3_store.abort(object_key, upload_id)


async def test_presigned_urls_are_signed_for_the_public_endpoint(minio: S3Settings) -> None:
    port = minio.endpoint.rsplit(":", 1)[1]
    store = S3ObjectStore(minio.model_copy(update={"public_endpoint": f"localhost:{port}"}))
    object_key = key()
    try:
        await store.start()
        upload_id = await store.create_multipart(object_key)
        part_url = await store.presign_part(object_key, upload_id, 1, URL_TTL_S)
        assert urlsplit(part_url).netloc == f"localhost:{port}"
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.put(part_url, content=b"public")).status_code == 200
            await store.complete(object_key, upload_id, [1])
            url = await store.presign_get(object_key, URL_TTL_S, "p.txt", "text/plain")
            assert (await http.get(url)).content == b"public"
            # The signature covers the host: the same URL sent to another name of the server is refused.
            other_host = urlunsplit(urlsplit(url)._replace(netloc=minio.endpoint))
            assert (await http.get(other_host)).status_code == 403
    finally:
        await store.delete(object_key)
        await store.close()


async def test_a_public_endpoint_url_decides_the_scheme_of_presigned_urls(minio: S3Settings) -> None:
    store = S3ObjectStore(minio.model_copy(update={"public_endpoint": "https://files.example.com"}))
    try:
        url = await store.presign_get("a/b", URL_TTL_S, "x.txt", "text/plain")
    finally:
        await store.close()
    assert url.startswith(f"https://files.example.com/{minio.bucket}/a/b?")


async def test_an_unreachable_store_is_unavailable(minio: S3Settings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    store = S3ObjectStore(minio.model_copy(update={"endpoint": f"127.0.0.1:{closed_port}"}))
    try:
        with pytest.raises(Unavailable):
            await store.start()
        with pytest.raises(Unavailable):
            await store.sha256(key())
        with pytest.raises(Unavailable):
            await store.create_multipart(key())
    finally:
        await store.close()


async def test_a_missing_bucket_or_wrong_credentials_are_unavailable_not_not_found(minio: S3Settings) -> None:
    missing = S3ObjectStore(minio.model_copy(update={"bucket": unique_bucket()}))
    wrong = S3ObjectStore(minio.model_copy(update={"secret_key": "not-the-secret"}))
    try:
        with pytest.raises(Unavailable, match="NoSuchBucket"):
            await missing.sha256(key())
        with pytest.raises(Unavailable, match="NoSuchBucket"):
            await missing.create_multipart(key())
        with pytest.raises(Unavailable):
            await wrong.start()
        with pytest.raises(Unavailable):
            await wrong.exists(key())
    finally:
        await missing.close()
        await wrong.close()


def test_an_endpoint_that_is_neither_host_port_nor_a_url_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        S3ObjectStore(S3Settings(endpoint=""))
    with pytest.raises(ValueError, match="endpoint"):
        S3ObjectStore(S3Settings(endpoint="ftp://minio:9000"))
    with pytest.raises(ValueError, match="endpoint"):
        S3ObjectStore(S3Settings(endpoint="http://minio:9000/prefix"))


class NoConversations:
    async def is_member(self, conversation_id: str, user_id: str) -> bool:
        return False


async def test_the_file_use_cases_upload_resume_complete_and_download_through_s3(s3_store: S3ObjectStore) -> None:
    catalog, limits, user = MemoryFileCatalog(), FileSettings(), new_id()
    data = payload(limits.part_size + 777)
    now = datetime.now(UTC)
    started = await start_upload(
        StartUpload(user, "clip.mp4", len(data), "video/mp4", hashlib.sha256(data).hexdigest()),
        catalog=catalog,
        membership=NoConversations(),
        store=s3_store,
        limits=limits,
        now=now,
    )
    assert isinstance(started, UploadState)
    ref = UploadRef(user, started.upload.upload_id)
    async with httpx.AsyncClient(timeout=30) as http:
        first = started.part_urls[0]
        assert (await http.put(first.url, content=data[: limits.part_size])).status_code == 200
        resumed = await describe_upload(ref, catalog=catalog, store=s3_store, url_ttl_s=limits.url_ttl_s, now=now)
        assert resumed.uploaded_parts == [1]
        last = resumed.part_urls[1]
        assert (await http.put(last.url, content=data[limits.part_size :])).status_code == 200

        file = await complete_upload(ref, catalog=catalog, store=s3_store, now=now)

        url = await download_url(
            FileRef(user, file.file_id), catalog=catalog, membership=NoConversations(), store=s3_store, ttl_s=60
        )
        download = await http.get(url)
    assert download.content == data
    assert download.headers["content-type"] == "video/mp4"
    assert download.headers["content-disposition"] == content_disposition("clip.mp4")
    assert await complete_upload(ref, catalog=catalog, store=s3_store, now=now) == file
