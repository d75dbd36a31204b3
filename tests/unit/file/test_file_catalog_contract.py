"""The file catalog contract, run over every adapter (memory, and SQL on an SQLite file)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.common.errors import NotFound
from services.common.ids import new_id
from services.file.domain import StoredFile, Upload
from services.file.ports import FileCatalog

T0 = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
SHA = "cd" * 32


def make_upload(*, created_at: datetime = T0, sha256: str = SHA, file_id: str | None = None) -> Upload:
    upload_id = new_id()
    return Upload(
        upload_id=upload_id,
        owner_id=new_id(),
        name="notes.txt",
        size=3000,
        content_type="text/plain; charset=utf-8",
        sha256=sha256,
        part_size=1024,
        object_key=f"{sha256}/{upload_id}",
        store_upload_id="store-" + new_id(),
        created_at=created_at,
        expires_at=created_at + timedelta(days=1),
        file_id=file_id,
    )


def make_file(
    *, sha256: str = SHA, size: int = 3000, created_at: datetime = T0, owner_id: str | None = None
) -> StoredFile:
    return StoredFile(
        file_id=new_id(),
        owner_id=owner_id or new_id(),
        name="nötes.txt",
        size=size,
        content_type="text/plain",
        sha256=sha256,
        object_key=f"{sha256}/{new_id()}",
        created_at=created_at,
    )


async def test_upload_is_found_by_its_id_and_by_the_store_id(catalog: FileCatalog) -> None:
    upload = make_upload()
    await catalog.add_upload(upload)
    assert await catalog.get_upload(upload.upload_id) == upload
    assert await catalog.get_upload_by_store_id(upload.store_upload_id) == upload
    assert await catalog.get_upload(new_id()) is None
    assert await catalog.get_upload_by_store_id("store-" + new_id()) is None


async def test_finishing_an_upload_records_the_file_once(catalog: FileCatalog) -> None:
    upload = make_upload()
    await catalog.add_upload(upload)
    first = make_file()
    assert await catalog.finish_upload(upload.upload_id, first) == first
    assert await catalog.finish_upload(upload.upload_id, make_file()) == first
    finished = await catalog.get_upload(upload.upload_id)
    assert finished is not None
    assert finished.file_id == first.file_id
    assert await catalog.get_file(first.file_id) == first


async def test_finishing_an_unknown_upload_is_not_found(catalog: FileCatalog) -> None:
    with pytest.raises(NotFound):
        await catalog.finish_upload(new_id(), make_file())


async def test_deleting_only_unfinished_uploads_spares_finished_ones(catalog: FileCatalog) -> None:
    open_upload, finished = make_upload(), make_upload()
    await catalog.add_upload(open_upload)
    await catalog.add_upload(finished)
    await catalog.finish_upload(finished.upload_id, make_file())

    assert await catalog.delete_upload(finished.upload_id, unfinished_only=True) is False
    assert await catalog.get_upload(finished.upload_id) is not None
    assert await catalog.delete_upload(open_upload.upload_id, unfinished_only=True) is True
    assert await catalog.get_upload(open_upload.upload_id) is None
    assert await catalog.delete_upload(finished.upload_id) is True
    assert await catalog.delete_upload(finished.upload_id) is False


async def test_expired_uploads_are_listed_oldest_first_up_to_the_limit(catalog: FileCatalog) -> None:
    # Times unique to this test so rows other tests left in a shared catalog never interfere.
    base = T0 - timedelta(days=400)
    oldest, middle, fresh = (make_upload(created_at=base + timedelta(hours=h)) for h in (0, 1, 30))
    for upload in (fresh, oldest, middle):
        await catalog.add_upload(upload)
    now = base + timedelta(days=1, hours=1)
    assert [u.upload_id for u in await catalog.expired_uploads(now, 10)] == [oldest.upload_id, middle.upload_id]
    assert [u.upload_id for u in await catalog.expired_uploads(now, 1)] == [oldest.upload_id]


async def test_files_are_found_by_content_oldest_first(catalog: FileCatalog) -> None:
    sha = new_id().ljust(64, "0")
    newer = make_file(sha256=sha, created_at=T0 + timedelta(minutes=1))
    older = make_file(sha256=sha, created_at=T0)
    await catalog.add_file(newer)
    await catalog.add_file(older)
    await catalog.add_file(make_file(sha256=sha, size=1, created_at=T0 - timedelta(days=1)))
    assert await catalog.find_by_content(sha, 3000) == older
    assert await catalog.find_by_content(sha, 2) is None
    assert await catalog.find_by_content(new_id().ljust(64, "1"), 3000) is None


async def test_matches_by_content_are_own_files_then_shares_most_recent_first(catalog: FileCatalog) -> None:
    sha, user = new_id().ljust(64, "0"), new_id()
    own_newer = make_file(sha256=sha, owner_id=user, created_at=T0 + timedelta(minutes=1))
    own_older = make_file(sha256=sha, owner_id=user, created_at=T0)
    theirs, unshared = make_file(sha256=sha), make_file(sha256=sha)
    other_size = make_file(sha256=sha, size=1)
    for file in (own_newer, own_older, theirs, unshared, other_size):
        await catalog.add_file(file)
    first, second, third = new_id(), new_id(), new_id()
    await catalog.add_share(theirs.file_id, first, theirs.owner_id, T0)
    await catalog.add_share(theirs.file_id, second, theirs.owner_id, T0 + timedelta(seconds=2))
    await catalog.add_share(theirs.file_id, first, new_id(), T0 + timedelta(seconds=3))  # already shared there
    await catalog.add_share(own_older.file_id, third, user, T0 + timedelta(seconds=4))  # found as the user's own
    await catalog.add_share(other_size.file_id, third, other_size.owner_id, T0)

    matches = await catalog.matches_by_content(sha, 3000, owner_id=user, limit=10)
    assert [(m.file, m.conversation_id) for m in matches] == [
        (own_older, None),
        (own_newer, None),
        (theirs, second),
        (theirs, first),
    ]
    limited = await catalog.matches_by_content(sha, 3000, owner_id=user, limit=3)
    assert [(m.file.file_id, m.conversation_id) for m in limited] == [
        (own_older.file_id, None),
        (own_newer.file_id, None),
        (theirs.file_id, second),
    ]
    assert await catalog.matches_by_content(sha, 3000, owner_id=user, limit=1) == matches[:1]
    stranger = await catalog.matches_by_content(sha, 3000, owner_id=new_id(), limit=10)
    assert [(m.file, m.conversation_id) for m in stranger] == [(own_older, third), (theirs, second), (theirs, first)]
    assert await catalog.matches_by_content(new_id().ljust(64, "1"), 3000, owner_id=user, limit=10) == []


async def test_sharing_is_recorded_once_per_conversation(catalog: FileCatalog) -> None:
    file = make_file()
    await catalog.add_file(file)
    first, second = new_id(), new_id()
    await catalog.add_share(file.file_id, first, file.owner_id, T0)
    await catalog.add_share(file.file_id, first, new_id(), T0 + timedelta(seconds=1))
    await catalog.add_share(file.file_id, second, file.owner_id, T0 + timedelta(seconds=2))
    assert await catalog.shared_in(file.file_id) == [first, second]
    assert await catalog.shared_in(new_id()) == []


async def test_sharing_an_unknown_file_is_not_found(catalog: FileCatalog) -> None:
    with pytest.raises(NotFound):
        await catalog.add_share(new_id(), new_id(), new_id(), T0)
