"""File use cases on both catalogs and the local store: concurrency and lost objects."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from file_support import PART_SIZE, Memberships, payload, sha256

from services.common.errors import Conflict, NotFound
from services.common.ids import new_id
from services.common.settings import FileSettings
from services.file.adapters.local import LocalObjectStore
from services.file.app import (
    AttachFile,
    Deduplicated,
    FileRef,
    StartUpload,
    UploadRef,
    UploadState,
    attach_file,
    collect_garbage,
    complete_upload,
    file_info,
    start_upload,
    upload_layout,
)
from services.file.domain import StoredFile
from services.file.ports import FileCatalog

NOW = datetime(2027, 3, 1, 9, 30, tzinfo=UTC)
LIMITS = FileSettings(part_size=PART_SIZE, max_size=10 * PART_SIZE)


async def stream(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def uploaded(catalog: FileCatalog, store: LocalObjectStore, user: str, data: bytes) -> UploadState:
    """An upload of ``data`` with every part sent, not yet completed."""
    cmd = StartUpload(user, "data.bin", len(data), "application/octet-stream", sha256(data))
    state = await start_upload(cmd, catalog=catalog, membership=Memberships(), store=store, limits=LIMITS, now=NOW)
    assert isinstance(state, UploadState)
    layout = state.upload.layout
    for n in layout.numbers:
        chunk = data[(n - 1) * PART_SIZE : n * PART_SIZE]
        await store.write_part(
            state.upload.store_upload_id, n, stream(chunk), max_size=PART_SIZE, expected_size=len(chunk)
        )
    return state


async def test_concurrent_completions_of_one_upload_agree_on_one_file(
    catalog: FileCatalog, store: LocalObjectStore
) -> None:
    user = new_id()
    state = await uploaded(catalog, store, user, payload(3 * PART_SIZE))
    ref = UploadRef(user, state.upload.upload_id)
    results = await asyncio.gather(
        *(complete_upload(ref, catalog=catalog, store=store, now=NOW) for _ in range(3)), return_exceptions=True
    )
    files = {r.file_id for r in results if isinstance(r, StoredFile)}
    assert len(files) == 1
    assert all(isinstance(r, StoredFile | Conflict) for r in results)
    # Once the first completion finished, every later one returns its file.
    assert (await complete_upload(ref, catalog=catalog, store=store, now=NOW)).file_id in files


async def completed(catalog: FileCatalog, store: LocalObjectStore, user: str, data: bytes) -> StoredFile:
    state = await uploaded(catalog, store, user, data)
    return await complete_upload(UploadRef(user, state.upload.upload_id), catalog=catalog, store=store, now=NOW)


async def start_again(
    catalog: FileCatalog, store: LocalObjectStore, members: Memberships, user: str, data: bytes
) -> UploadState | Deduplicated:
    """``user`` declares ``data`` (its sha256 and size) under a new name, without sending a byte."""
    cmd = StartUpload(user, "again.bin", len(data), "application/octet-stream", sha256(data))
    return await start_upload(cmd, catalog=catalog, membership=members, store=store, limits=LIMITS, now=NOW)


async def test_known_bytes_whose_object_was_lost_are_uploaded_again(
    catalog: FileCatalog, store: LocalObjectStore
) -> None:
    user, data = new_id(), payload(100)
    file = await completed(catalog, store, user, data)
    await store.delete(file.object_key)
    assert isinstance(await start_again(catalog, store, Memberships(), user, data), UploadState)


async def test_known_bytes_are_deduplicated_for_the_same_user_too(
    catalog: FileCatalog, store: LocalObjectStore
) -> None:
    user, data = new_id(), payload(100)
    first = await completed(catalog, store, user, data)
    result = await start_again(catalog, store, Memberships(), user, data)
    assert isinstance(result, Deduplicated)
    assert result.file.file_id != first.file_id
    assert (result.file.name, result.file.owner_id, result.file.object_key) == ("again.bin", user, first.object_key)


async def test_a_stranger_declaring_known_bytes_gets_an_upload_and_no_file(
    catalog: FileCatalog, store: LocalObjectStore
) -> None:
    owner, stranger, data = new_id(), new_id(), payload(100)
    members = Memberships()
    file = await completed(catalog, store, owner, data)
    # Shared in a conversation the stranger is not in: still not theirs to copy.
    conversation = new_id()
    members.add(conversation, owner)
    await attach_file(AttachFile(file.file_id, conversation, owner), catalog=catalog, membership=members, now=NOW)

    result = await start_again(catalog, store, members, stranger, data)
    assert isinstance(result, UploadState)
    assert result.upload.owner_id == stranger
    assert result.upload.object_key != file.object_key
    matches = await catalog.matches_by_content(sha256(data), len(data), owner_id=stranger, limit=10)
    assert [m.file.owner_id for m in matches] == [owner]


async def test_a_member_of_a_conversation_the_bytes_were_shared_in_gets_them_deduplicated(
    catalog: FileCatalog, store: LocalObjectStore
) -> None:
    owner, member, data = new_id(), new_id(), payload(100)
    members = Memberships()
    conversation = new_id()
    members.add(conversation, owner, member)
    file = await completed(catalog, store, owner, data)
    await attach_file(AttachFile(file.file_id, conversation, owner), catalog=catalog, membership=members, now=NOW)

    result = await start_again(catalog, store, members, member, data)
    assert isinstance(result, Deduplicated)
    assert (result.file.owner_id, result.file.object_key) == (member, file.object_key)
    assert await file_info(FileRef(member, result.file.file_id), catalog=catalog, membership=members) == result.file
    with pytest.raises(NotFound):
        await file_info(FileRef(owner, result.file.file_id), catalog=catalog, membership=members)


async def test_a_visible_copy_whose_object_was_lost_is_skipped_for_one_still_stored(
    catalog: FileCatalog, store: LocalObjectStore
) -> None:
    owner, member, data = new_id(), new_id(), payload(100)
    members = Memberships()
    conversation = new_id()
    members.add(conversation, owner, member)
    kept = await completed(catalog, store, owner, data)
    # A copy of the same bytes in its own object (as before dedup shared it), then lost.
    lost = dataclasses.replace(kept, file_id=new_id(), object_key=f"{sha256(data)}/{new_id()}", created_at=NOW)
    await catalog.add_file(lost)
    # The lost copy is shared last, so it is the first candidate.
    for at, file in enumerate((kept, lost)):
        share = AttachFile(file.file_id, conversation, owner)
        await attach_file(share, catalog=catalog, membership=members, now=NOW + timedelta(seconds=at))

    result = await start_again(catalog, store, members, member, data)
    assert isinstance(result, Deduplicated)
    assert result.file.object_key == kept.object_key


async def test_part_layout_is_only_given_for_open_uploads(catalog: FileCatalog, store: LocalObjectStore) -> None:
    user, data = new_id(), payload(2 * PART_SIZE + 1)
    state = await uploaded(catalog, store, user, data)
    store_id = state.upload.store_upload_id
    assert (await upload_layout(store_id, catalog=catalog, now=NOW)).count == 3
    with pytest.raises(NotFound):
        await upload_layout(store_id, catalog=catalog, now=NOW + timedelta(days=1))
    await complete_upload(UploadRef(user, state.upload.upload_id), catalog=catalog, store=store, now=NOW)
    with pytest.raises(NotFound):
        await upload_layout(store_id, catalog=catalog, now=NOW)
    with pytest.raises(NotFound):
        await upload_layout("unknown", catalog=catalog, now=NOW)


async def test_garbage_collection_keeps_unexpired_uploads(catalog: FileCatalog, store: LocalObjectStore) -> None:
    user = new_id()
    state = await uploaded(catalog, store, user, payload(10))
    # Far in the past, so uploads other tests left in a shared catalog are not counted.
    assert await collect_garbage(NOW - timedelta(days=365), catalog=catalog, store=store) == 0
    assert await catalog.get_upload(state.upload.upload_id) is not None
    assert await collect_garbage(NOW + timedelta(days=1), catalog=catalog, store=store) >= 1
    assert await catalog.get_upload(state.upload.upload_id) is None
    with pytest.raises(NotFound):
        await store.list_parts(state.upload.object_key, state.upload.store_upload_id)


async def test_attaching_shares_the_file_with_the_conversation_members(
    catalog: FileCatalog, store: LocalObjectStore
) -> None:
    owner, member = new_id(), new_id()
    conversation = new_id()
    members = Memberships()
    members.add(conversation, owner, member)
    state = await uploaded(catalog, store, owner, payload(10))
    file = await complete_upload(UploadRef(owner, state.upload.upload_id), catalog=catalog, store=store, now=NOW)

    with pytest.raises(NotFound):
        await file_info(FileRef(member, file.file_id), catalog=catalog, membership=members)
    await attach_file(AttachFile(file.file_id, conversation, owner), catalog=catalog, membership=members, now=NOW)
    assert await file_info(FileRef(member, file.file_id), catalog=catalog, membership=members) == file
