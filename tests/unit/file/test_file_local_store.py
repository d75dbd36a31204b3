"""The local-disk object store and its URL signer."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterable
from urllib.parse import parse_qsl, urlsplit

import pytest
from file_support import SECRET, FakeClock, sha256

from services.common.errors import Forbidden, InvalidRequest, NotFound, PayloadTooLarge
from services.common.ids import new_id
from services.file.adapters.local import LocalObjectStore, UrlSigner


async def stream(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def key() -> str:
    return f"{sha256(new_id().encode())}/{new_id()}"


async def put(store: LocalObjectStore, upload_id: str, number: int, data: bytes, *, max_size: int = 1024) -> str:
    return await store.write_part(upload_id, number, stream(data), max_size=max_size, expected_size=len(data))


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


async def test_parts_are_listed_with_their_sizes_and_assembled_in_order(store: LocalObjectStore) -> None:
    object_key = key()
    upload_id = await store.create_multipart(object_key)
    await put(store, upload_id, 2, b"b" * 1024)
    await put(store, upload_id, 1, b"a" * 1024)
    await put(store, upload_id, 3, b"c" * 10)
    assert await store.list_parts(object_key, upload_id) == {1: 1024, 2: 1024, 3: 10}

    await store.complete(object_key, upload_id, [1, 2, 3])

    expected = b"a" * 1024 + b"b" * 1024 + b"c" * 10
    assert await store.sha256(object_key) == hashlib.sha256(expected).hexdigest()
    path, stat = await store.stat(object_key)
    assert path.read_bytes() == expected
    assert stat.st_size == len(expected)
    with pytest.raises(NotFound):
        await store.list_parts(object_key, upload_id)


async def test_part_etag_is_the_md5_of_its_bytes_and_streams_many_chunks(store: LocalObjectStore) -> None:
    upload_id = await store.create_multipart(key())
    chunks = [bytes([n]) * 100_000 for n in range(30)]
    etag = await store.write_part(upload_id, 1, stream(*chunks), max_size=3_000_000, expected_size=3_000_000)
    assert etag == hashlib.md5(b"".join(chunks), usedforsecurity=False).hexdigest()


async def test_uploading_a_part_again_replaces_it(store: LocalObjectStore) -> None:
    object_key = key()
    upload_id = await store.create_multipart(object_key)
    await put(store, upload_id, 1, b"old")
    await put(store, upload_id, 1, b"newer")
    await store.complete(object_key, upload_id, [1])
    path, _ = await store.stat(object_key)
    assert path.read_bytes() == b"newer"


async def test_oversized_or_wrongly_sized_part_is_refused_and_the_earlier_part_kept(store: LocalObjectStore) -> None:
    object_key = key()
    upload_id = await store.create_multipart(object_key)
    await put(store, upload_id, 1, b"x" * 8)
    with pytest.raises(PayloadTooLarge):
        await store.write_part(upload_id, 1, stream(b"y" * 6, b"y" * 6), max_size=10, expected_size=8)
    with pytest.raises(InvalidRequest, match="must be 8 bytes"):
        await store.write_part(upload_id, 1, stream(b"z" * 5), max_size=10, expected_size=8)
    assert await store.list_parts(object_key, upload_id) == {1: 8}
    await store.complete(object_key, upload_id, [1])
    path, _ = await store.stat(object_key)
    assert path.read_bytes() == b"x" * 8


async def test_completing_with_a_missing_part_fails_and_keeps_the_upload(store: LocalObjectStore) -> None:
    object_key = key()
    upload_id = await store.create_multipart(object_key)
    await put(store, upload_id, 1, b"one")
    with pytest.raises(InvalidRequest, match="part 2"):
        await store.complete(object_key, upload_id, [1, 2])
    assert await store.exists(object_key) is False
    assert await store.list_parts(object_key, upload_id) == {1: 3}


async def test_of_two_concurrent_completions_the_second_finds_no_upload(store: LocalObjectStore) -> None:
    object_key = key()
    upload_id = await store.create_multipart(object_key)
    await put(store, upload_id, 1, b"data")
    results = await asyncio.gather(
        store.complete(object_key, upload_id, [1]), store.complete(object_key, upload_id, [1]), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["NoneType", "NotFound"]
    assert await store.sha256(object_key) == sha256(b"data")


async def test_unknown_uploads_and_objects_are_not_found(store: LocalObjectStore) -> None:
    object_key = key()
    with pytest.raises(NotFound):
        await store.list_parts(object_key, "0" * 32)
    with pytest.raises(NotFound):
        await store.list_parts(object_key, "../../etc")
    with pytest.raises(NotFound):
        await put(store, "f" * 32, 1, b"x")
    with pytest.raises(NotFound):
        await store.sha256(object_key)
    with pytest.raises(NotFound):
        await store.stat(object_key)


async def test_abort_and_delete_are_idempotent(store: LocalObjectStore) -> None:
    object_key = key()
    upload_id = await store.create_multipart(object_key)
    await put(store, upload_id, 1, b"x")
    await store.abort(object_key, upload_id)
    await store.abort(object_key, upload_id)
    await store.abort(object_key, "not-an-upload-id")
    with pytest.raises(NotFound):
        await store.list_parts(object_key, upload_id)

    other = await store.create_multipart(object_key)
    await put(store, other, 1, b"y")
    await store.complete(object_key, other, [1])
    assert await store.exists(object_key) is True
    await store.delete(object_key)
    await store.delete(object_key)
    assert await store.exists(object_key) is False


@pytest.mark.parametrize("bad_key", ["../escape", "a/../../b", ".multipart/x", "/abs", "UPPER", "a//b", ""])
async def test_keys_outside_the_object_namespace_are_refused(store: LocalObjectStore, bad_key: str) -> None:
    with pytest.raises(InvalidRequest, match="key"):
        await store.exists(bad_key)


def signed(signer: UrlSigner, *, params: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    url = signer.sign("GET", "/v1/files/blobs/objects/k", 60, params or {})
    return urlsplit(url).path, query(url)


def verify(signer: UrlSigner, path: str, q: dict[str, str], names: Iterable[str] = ()) -> None:
    signer.verify(
        "GET", path, expires=q.get("expires"), signature=q.get("signature"), params={n: q.get(n, "") for n in names}
    )


def test_signed_url_verifies_until_it_expires() -> None:
    clock = FakeClock()
    signer = UrlSigner(SECRET, clock)
    path, q = signed(signer, params={"filename": "a b.txt"})
    verify(signer, path, q, ["filename"])
    clock.advance(60)
    verify(signer, path, q, ["filename"])
    clock.advance(1)
    with pytest.raises(Forbidden, match="expired"):
        verify(signer, path, q, ["filename"])


@pytest.mark.parametrize(
    "tamper",
    [
        lambda path, q: (path + "x", q),
        lambda path, q: (path, {**q, "filename": "other.txt"}),
        lambda path, q: (path, {**q, "expires": str(int(q["expires"]) + 3600)}),
        lambda path, q: (path, {**q, "signature": q["signature"][:-1] + "0"}),
        lambda path, q: (path, {**q, "signature": "é" * 64}),
    ],
)
def test_tampered_url_is_forbidden(tamper: object) -> None:
    signer = UrlSigner(SECRET, FakeClock())
    path, q = signed(signer, params={"filename": "a.txt"})
    bad_path, bad_q = tamper(path, q)  # type: ignore[operator]
    with pytest.raises(Forbidden, match="signature"):
        verify(signer, bad_path, bad_q, ["filename"])


def test_url_signed_with_another_secret_or_for_another_method_is_forbidden() -> None:
    clock = FakeClock()
    path, q = signed(UrlSigner("another-secret", clock))
    with pytest.raises(Forbidden):
        verify(UrlSigner(SECRET, clock), path, q)
    signer = UrlSigner(SECRET, clock)
    path, q = signed(signer)
    with pytest.raises(Forbidden):
        signer.verify("PUT", path, expires=q["expires"], signature=q["signature"])


def test_unsigned_url_is_forbidden() -> None:
    with pytest.raises(Forbidden, match="not signed"):
        UrlSigner(SECRET, FakeClock()).verify("GET", "/x", expires=None, signature=None)
