"""Ports of the file service: the object store (shaped after S3 multipart uploads), the metadata
catalog, and the conversation membership it asks before showing a shared file."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from services.file.domain import ContentMatch, StoredFile, Upload


class ObjectStore(Protocol):
    """Bytes by key, written through multipart uploads whose parts clients send to presigned URLs.

    Unknown upload ids and keys raise ``NotFound``, except in ``abort`` and ``delete``, which are
    idempotent. URLs are path-absolute or absolute; clients resolve them against the server.
    """

    async def create_multipart(self, key: str) -> str:
        """Start a multipart upload of ``key``; returns the store's upload id."""
        ...

    async def presign_part(self, key: str, upload_id: str, part_number: int, expires_s: int) -> str:
        """A URL a client may ``PUT`` part ``part_number`` to, without other credentials, for ``expires_s``."""
        ...

    async def list_parts(self, key: str, upload_id: str) -> dict[int, int]:
        """The parts uploaded so far: ``{part_number: size}``."""
        ...

    async def complete(self, key: str, upload_id: str, part_numbers: Sequence[int]) -> None:
        """Concatenate the parts, in this order, into the object ``key`` and end the upload."""
        ...

    async def abort(self, key: str, upload_id: str) -> None:
        """End the upload and remove its parts."""
        ...

    async def sha256(self, key: str) -> str:
        """The hex sha256 of the object, read as a stream."""
        ...

    async def presign_get(self, key: str, expires_s: int, filename: str, content_type: str) -> str:
        """A URL serving the object as an attachment named ``filename`` of ``content_type``."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None: ...


class FileCatalog(Protocol):
    """Metadata of uploads, files and the conversations files are shared in."""

    async def add_upload(self, upload: Upload) -> None: ...

    async def get_upload(self, upload_id: str) -> Upload | None: ...

    async def get_upload_by_store_id(self, store_upload_id: str) -> Upload | None: ...

    async def delete_upload(self, upload_id: str, *, unfinished_only: bool = False) -> bool:
        """Forget the upload; with ``unfinished_only``, only if no completion finished it meanwhile.
        Returns whether it was deleted."""
        ...

    async def finish_upload(self, upload_id: str, file: StoredFile) -> StoredFile:
        """Record ``file`` as the result of the upload, atomically. If the upload already finished,
        return the file it finished with instead (completing twice gives one file). ``NotFound`` when
        the upload does not exist."""
        ...

    async def expired_uploads(self, now: datetime, limit: int) -> list[Upload]:
        """Uploads whose ``expires_at`` is not after ``now``, oldest first."""
        ...

    async def add_file(self, file: StoredFile) -> None: ...

    async def get_file(self, file_id: str) -> StoredFile | None: ...

    async def find_by_content(self, sha256: str, size: int) -> StoredFile | None:
        """The oldest file with these bytes, whose stored object a new upload may share."""
        ...

    async def matches_by_content(self, sha256: str, size: int, *, owner_id: str, limit: int) -> list[ContentMatch]:
        """At most ``limit`` files with these bytes that ``owner_id`` might see: first their own, oldest
        first, then other users' files shared in a conversation, most recently shared first (one match
        per share; whether ``owner_id`` is a member of it is for the caller to ask)."""
        ...

    async def add_share(self, file_id: str, conversation_id: str, user_id: str, at: datetime) -> None:
        """Record that ``user_id`` shared the file in the conversation; sharing again changes nothing.
        ``NotFound`` when the file does not exist."""
        ...

    async def shared_in(self, file_id: str) -> list[str]:
        """The conversations the file was shared in."""
        ...


class ConversationMembership(Protocol):
    async def is_member(self, conversation_id: str, user_id: str) -> bool: ...
