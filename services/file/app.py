"""Use cases of the file service: start, resume and complete uploads (sharing bytes by sha256), and
find, share and download files, which only the uploader and members of a conversation the file was
shared in may see."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common.errors import Conflict, InvalidRequest, NotFound
from services.common.ids import new_id
from services.common.settings import FileSettings
from services.file.domain import UPLOAD_TTL, FileSpec, PartLayout, StoredFile, Upload, object_key
from services.file.ports import ConversationMembership, FileCatalog, ObjectStore


@dataclass(frozen=True)
class StartUpload:
    user_id: str
    name: str
    size: int
    content_type: str
    sha256: str


@dataclass(frozen=True)
class UploadRef:
    user_id: str
    upload_id: str


@dataclass(frozen=True)
class FileRef:
    user_id: str
    file_id: str


@dataclass(frozen=True)
class AttachFile:
    file_id: str
    conversation_id: str
    user_id: str


@dataclass(frozen=True)
class PartUrl:
    part_number: int
    url: str


@dataclass(frozen=True)
class UploadState:
    """An upload, the parts uploaded so far, and fresh URLs for every part (none once completed)."""

    upload: Upload
    uploaded_parts: list[int]
    part_urls: list[PartUrl]


@dataclass(frozen=True)
class Deduplicated:
    """The bytes were already stored: a file was made for the uploader without any upload."""

    file: StoredFile


DEDUP_CANDIDATES = 100
"""How many files with the declared bytes a start of upload considers; past them the client uploads,
so a widely shared file costs a bounded number of membership checks."""


async def start_upload(
    cmd: StartUpload,
    *,
    catalog: FileCatalog,
    membership: ConversationMembership,
    store: ObjectStore,
    limits: FileSettings,
    now: datetime,
) -> UploadState | Deduplicated:
    """Start a multipart upload, or make the file at once from stored bytes the uploader may already see.

    Declaring a hash proves nothing about having the bytes, so the instant copy is only for a user who
    could download a file with these bytes anyway; anyone else uploads them (and ``complete_upload``
    shares the stored object once the bytes are verified).
    """
    spec = FileSpec.parse(
        name=cmd.name,
        size=cmd.size,
        content_type=cmd.content_type,
        sha256=cmd.sha256,
        max_size=limits.max_size,
        allowed_content_types=limits.allowed_content_types,
    )
    visible = await _visible_copy(spec, cmd.user_id, catalog, membership, store)
    if visible is not None:
        file = _file(spec, owner_id=cmd.user_id, object_key=visible.object_key, now=now)
        await catalog.add_file(file)
        return Deduplicated(file)
    layout = PartLayout(spec.size, limits.part_size)
    upload_id = new_id()
    key = object_key(spec.sha256, upload_id)
    upload = Upload(
        upload_id=upload_id,
        owner_id=cmd.user_id,
        name=spec.name,
        size=spec.size,
        content_type=spec.content_type,
        sha256=spec.sha256,
        part_size=layout.part_size,
        object_key=key,
        store_upload_id=await store.create_multipart(key),
        created_at=now,
        expires_at=now + UPLOAD_TTL,
    )
    await catalog.add_upload(upload)
    return UploadState(upload, [], await _part_urls(upload, store, limits.url_ttl_s))


async def describe_upload(
    cmd: UploadRef, *, catalog: FileCatalog, store: ObjectStore, url_ttl_s: int, now: datetime
) -> UploadState:
    """What a client needs to resume: which parts arrived, and new URLs (the old ones may have expired)."""
    upload = await _own_upload(cmd, catalog, now)
    if upload.file_id is not None:
        return UploadState(upload, list(upload.layout.numbers), [])
    uploaded = await store.list_parts(upload.object_key, upload.store_upload_id)
    return UploadState(upload, sorted(uploaded), await _part_urls(upload, store, url_ttl_s))


async def complete_upload(cmd: UploadRef, *, catalog: FileCatalog, store: ObjectStore, now: datetime) -> StoredFile:
    """Assemble the parts and check them against the declared size and sha256; completing twice
    returns the same file. A hash mismatch aborts the upload."""
    upload = await _own_upload(cmd, catalog, now)
    if upload.file_id is not None:
        return await _file_of(upload, catalog)
    layout = upload.layout
    try:
        problem = layout.problems(await store.list_parts(upload.object_key, upload.store_upload_id))
        if problem is not None:
            raise InvalidRequest(problem)
        await store.complete(upload.object_key, upload.store_upload_id, layout.numbers)
    except NotFound:
        return await _completed_concurrently(upload.upload_id, catalog)
    digest = await store.sha256(upload.object_key)
    if digest != upload.sha256:
        await store.delete(upload.object_key)
        await catalog.delete_upload(upload.upload_id, unfinished_only=True)
        raise InvalidRequest(f"sha256 mismatch: the uploaded bytes hash to {digest}; the upload was aborted")
    # Bytes stored meanwhile by another upload are shared rather than kept twice.
    existing = await catalog.find_by_content(upload.sha256, upload.size)
    key = upload.object_key
    if existing is not None and existing.object_key != key and await store.exists(existing.object_key):
        key = existing.object_key
    file = await catalog.finish_upload(
        upload.upload_id, _file(upload.spec, owner_id=upload.owner_id, object_key=key, now=now)
    )
    if file.object_key != upload.object_key:
        await store.delete(upload.object_key)
    return file


async def upload_layout(store_upload_id: str, *, catalog: FileCatalog, now: datetime) -> PartLayout:
    """The part sizes an open upload accepts, by the object store's id of it (for the blob endpoint)."""
    upload = await catalog.get_upload_by_store_id(store_upload_id)
    if upload is None or not upload.is_open(now):
        raise NotFound("upload not found")
    return upload.layout


async def download_url(
    cmd: FileRef, *, catalog: FileCatalog, membership: ConversationMembership, store: ObjectStore, ttl_s: int
) -> str:
    file = await file_info(cmd, catalog=catalog, membership=membership)
    return await store.presign_get(file.object_key, ttl_s, file.name, file.content_type)


async def file_info(cmd: FileRef, *, catalog: FileCatalog, membership: ConversationMembership) -> StoredFile:
    """The file, if the user may see it: its uploader, or a member of a conversation it was shared in.

    Everyone else gets ``NotFound``, so file ids cannot be probed for existence.
    """
    file = await catalog.get_file(cmd.file_id)
    if file is None:
        raise NotFound("file not found")
    if file.owner_id == cmd.user_id:
        return file
    for conversation_id in await catalog.shared_in(file.file_id):
        if await membership.is_member(conversation_id, cmd.user_id):
            return file
    raise NotFound("file not found")


async def attach_file(
    cmd: AttachFile, *, catalog: FileCatalog, membership: ConversationMembership, now: datetime
) -> StoredFile:
    """Share a file the user may see in a conversation, so its members may download it too."""
    file = await file_info(FileRef(cmd.user_id, cmd.file_id), catalog=catalog, membership=membership)
    await catalog.add_share(file.file_id, cmd.conversation_id, cmd.user_id, now)
    return file


async def collect_garbage(now: datetime, *, catalog: FileCatalog, store: ObjectStore, batch: int = 100) -> int:
    """Forget uploads past their expiry, removing the parts of those never completed; returns how many."""
    collected = 0
    while expired := await catalog.expired_uploads(now, batch):
        for upload in expired:
            if upload.file_id is not None:
                await catalog.delete_upload(upload.upload_id)
            elif await catalog.delete_upload(upload.upload_id, unfinished_only=True):
                await store.abort(upload.object_key, upload.store_upload_id)
                # The object exists only when a completion stopped between assembling and recording it.
                await store.delete(upload.object_key)
            else:
                continue  # finished meanwhile: the next batch sees it finished
            collected += 1
    return collected


class FileShares:
    """What other services call to put a file into a conversation (a message's file content)."""

    def __init__(
        self, *, catalog: FileCatalog, membership: ConversationMembership, now: Callable[[], datetime]
    ) -> None:
        self._catalog = catalog
        self._membership = membership
        self._now = now

    async def attach(self, file_id: str, conversation_id: str, user_id: str) -> dict[str, Any]:
        """``{file_id, name, size, content_type}``; ``NotFound`` if the file does not exist or the user
        may not see it. Attaching again changes nothing."""
        file = await attach_file(
            AttachFile(file_id, conversation_id, user_id),
            catalog=self._catalog,
            membership=self._membership,
            now=self._now(),
        )
        return {"file_id": file.file_id, "name": file.name, "size": file.size, "content_type": file.content_type}


async def _own_upload(cmd: UploadRef, catalog: FileCatalog, now: datetime) -> Upload:
    upload = await catalog.get_upload(cmd.upload_id)
    if upload is None or upload.owner_id != cmd.user_id:
        raise NotFound("upload not found")
    if upload.file_id is None and not upload.is_open(now):
        raise NotFound("upload expired")
    return upload


async def _file_of(upload: Upload, catalog: FileCatalog) -> StoredFile:
    file = None if upload.file_id is None else await catalog.get_file(upload.file_id)
    if file is None:
        raise NotFound("file not found")
    return file


async def _completed_concurrently(upload_id: str, catalog: FileCatalog) -> StoredFile:
    """The store no longer knows the upload: another completion of it took the parts first."""
    upload = await catalog.get_upload(upload_id)
    if upload is None:
        raise NotFound("upload not found")
    if upload.file_id is None:
        raise Conflict("the upload is being completed; try again")
    return await _file_of(upload, catalog)


async def _visible_copy(
    spec: FileSpec, user_id: str, catalog: FileCatalog, membership: ConversationMembership, store: ObjectStore
) -> StoredFile | None:
    """A file with the declared bytes that ``file_info`` would show the user, and whose object is still
    stored; ``None`` if there is none."""
    outside: set[str] = set()
    matches = await catalog.matches_by_content(spec.sha256, spec.size, owner_id=user_id, limit=DEDUP_CANDIDATES)
    for match in matches:
        conversation_id = match.conversation_id
        if conversation_id is not None:
            if conversation_id in outside:
                continue
            if not await membership.is_member(conversation_id, user_id):
                outside.add(conversation_id)
                continue
        if await store.exists(match.file.object_key):
            return match.file
    return None


async def _part_urls(upload: Upload, store: ObjectStore, ttl_s: int) -> list[PartUrl]:
    return [
        PartUrl(n, await store.presign_part(upload.object_key, upload.store_upload_id, n, ttl_s))
        for n in upload.layout.numbers
    ]


def _file(spec: FileSpec, *, owner_id: str, object_key: str, now: datetime) -> StoredFile:
    return StoredFile(
        file_id=new_id(),
        owner_id=owner_id,
        name=spec.name,
        size=spec.size,
        content_type=spec.content_type,
        sha256=spec.sha256,
        object_key=object_key,
        created_at=now,
    )
