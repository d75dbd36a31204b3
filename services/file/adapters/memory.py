"""In-memory file catalog for the embedded mode without a database and for unit tests."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from services.common.errors import NotFound
from services.file.domain import ContentMatch, StoredFile, Upload


class MemoryFileCatalog:
    def __init__(self) -> None:
        self._uploads: dict[str, Upload] = {}
        self._files: dict[str, StoredFile] = {}
        # file_id -> {conversation_id: when first shared there}, in sharing order
        self._shares: dict[str, dict[str, datetime]] = {}

    async def add_upload(self, upload: Upload) -> None:
        self._uploads[upload.upload_id] = upload

    async def get_upload(self, upload_id: str) -> Upload | None:
        return self._uploads.get(upload_id)

    async def get_upload_by_store_id(self, store_upload_id: str) -> Upload | None:
        return next((u for u in self._uploads.values() if u.store_upload_id == store_upload_id), None)

    async def delete_upload(self, upload_id: str, *, unfinished_only: bool = False) -> bool:
        upload = self._uploads.get(upload_id)
        if upload is None or (unfinished_only and upload.file_id is not None):
            return False
        del self._uploads[upload_id]
        return True

    async def finish_upload(self, upload_id: str, file: StoredFile) -> StoredFile:
        upload = self._uploads.get(upload_id)
        if upload is None:
            raise NotFound("upload not found")
        if upload.file_id is not None:
            return self._files[upload.file_id]
        self._files[file.file_id] = file
        self._uploads[upload_id] = dataclasses.replace(upload, file_id=file.file_id)
        return file

    async def expired_uploads(self, now: datetime, limit: int) -> list[Upload]:
        expired = sorted((u for u in self._uploads.values() if u.expires_at <= now), key=lambda u: u.expires_at)
        return expired[:limit]

    async def add_file(self, file: StoredFile) -> None:
        self._files[file.file_id] = file

    async def get_file(self, file_id: str) -> StoredFile | None:
        return self._files.get(file_id)

    async def find_by_content(self, sha256: str, size: int) -> StoredFile | None:
        same = [f for f in self._files.values() if f.sha256 == sha256 and f.size == size]
        return min(same, key=lambda f: f.created_at) if same else None

    async def matches_by_content(self, sha256: str, size: int, *, owner_id: str, limit: int) -> list[ContentMatch]:
        same = [f for f in self._files.values() if f.sha256 == sha256 and f.size == size]
        owned = sorted((f for f in same if f.owner_id == owner_id), key=lambda f: (f.created_at, f.file_id))
        shares = sorted(
            (
                (at, conversation_id, f.file_id, f)
                for f in same
                if f.owner_id != owner_id
                for conversation_id, at in self._shares.get(f.file_id, {}).items()
            ),
            key=lambda share: share[:3],
            reverse=True,
        )
        matches = [ContentMatch(f, None) for f in owned] + [ContentMatch(f, c) for _, c, _, f in shares]
        return matches[:limit]

    async def add_share(self, file_id: str, conversation_id: str, user_id: str, at: datetime) -> None:
        if file_id not in self._files:
            raise NotFound("file not found")
        self._shares.setdefault(file_id, {}).setdefault(conversation_id, at)

    async def shared_in(self, file_id: str) -> list[str]:
        return list(self._shares.get(file_id, {}))
