"""SQL file catalog (SQLAlchemy Core): SQLite embedded, MySQL/MariaDB and PostgreSQL distributed."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, cast

from sqlalchemy import BigInteger, Column, ForeignKey, Index, String, Table, delete, insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common import db
from services.common.db import UtcDateTime, metadata
from services.common.errors import NotFound
from services.file.domain import ContentMatch, StoredFile, Upload

# Tables collate byte-wise on MySQL too (as on PostgreSQL and SQLite): its default *_ci collations take "Ab" for "ab".
uploads_table = Table(
    "file_uploads",
    metadata,
    Column("upload_id", String(64), primary_key=True),
    Column("owner_id", String(64), nullable=False),
    Column("name", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("part_size", BigInteger, nullable=False),
    Column("object_key", String(255), nullable=False),
    # S3 upload ids are opaque and long; 512 characters stay within MySQL's utf8mb4 index limit.
    Column("store_upload_id", String(512), nullable=False, unique=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("file_id", String(64), nullable=True),
    Index(None, "expires_at"),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

files_table = Table(
    "file_files",
    metadata,
    Column("file_id", String(64), primary_key=True),
    Column("owner_id", String(64), nullable=False),
    Column("name", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("object_key", String(255), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index(None, "sha256", "size"),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

shares_table = Table(
    "file_shares",
    metadata,
    Column("file_id", String(64), ForeignKey(files_table.c.file_id), primary_key=True),
    Column("conversation_id", String(64), primary_key=True),
    Column("shared_by", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)


def _transaction(sessions: async_sessionmaker[AsyncSession]) -> AbstractAsyncContextManager[AsyncSession]:
    return db.transaction(sessions, "file")


def _upload(row: Any) -> Upload:
    return Upload(
        upload_id=row.upload_id,
        owner_id=row.owner_id,
        name=row.name,
        size=row.size,
        content_type=row.content_type,
        sha256=row.sha256,
        part_size=row.part_size,
        object_key=row.object_key,
        store_upload_id=row.store_upload_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        file_id=row.file_id,
    )


def _file(row: Any) -> StoredFile:
    return StoredFile(
        file_id=row.file_id,
        owner_id=row.owner_id,
        name=row.name,
        size=row.size,
        content_type=row.content_type,
        sha256=row.sha256,
        object_key=row.object_key,
        created_at=row.created_at,
    )


def _file_values(file: StoredFile) -> dict[str, Any]:
    return {
        "file_id": file.file_id,
        "owner_id": file.owner_id,
        "name": file.name,
        "size": file.size,
        "content_type": file.content_type,
        "sha256": file.sha256,
        "object_key": file.object_key,
        "created_at": file.created_at,
    }


class SqlFileCatalog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def add_upload(self, upload: Upload) -> None:
        async with _transaction(self._sessions) as db:
            await db.execute(
                insert(uploads_table).values(
                    upload_id=upload.upload_id,
                    owner_id=upload.owner_id,
                    name=upload.name,
                    size=upload.size,
                    content_type=upload.content_type,
                    sha256=upload.sha256,
                    part_size=upload.part_size,
                    object_key=upload.object_key,
                    store_upload_id=upload.store_upload_id,
                    created_at=upload.created_at,
                    expires_at=upload.expires_at,
                    file_id=upload.file_id,
                )
            )

    async def get_upload(self, upload_id: str) -> Upload | None:
        async with _transaction(self._sessions) as db:
            row = (await db.execute(select(uploads_table).where(uploads_table.c.upload_id == upload_id))).first()
        return None if row is None else _upload(row)

    async def get_upload_by_store_id(self, store_upload_id: str) -> Upload | None:
        query = select(uploads_table).where(uploads_table.c.store_upload_id == store_upload_id)
        async with _transaction(self._sessions) as db:
            row = (await db.execute(query)).first()
        return None if row is None else _upload(row)

    async def delete_upload(self, upload_id: str, *, unfinished_only: bool = False) -> bool:
        statement = delete(uploads_table).where(uploads_table.c.upload_id == upload_id)
        if unfinished_only:
            statement = statement.where(uploads_table.c.file_id.is_(None))
        async with _transaction(self._sessions) as db:
            result = await db.execute(statement)
        return bool(cast("CursorResult[Any]", result).rowcount)

    async def finish_upload(self, upload_id: str, file: StoredFile) -> StoredFile:
        # The row lock (BEGIN IMMEDIATE on SQLite) makes two concurrent completions agree on one file.
        lock = select(uploads_table.c.file_id).where(uploads_table.c.upload_id == upload_id).with_for_update()
        async with _transaction(self._sessions) as db:
            row = (await db.execute(lock)).first()
            if row is None:
                raise NotFound("upload not found")
            if row.file_id is not None:
                existing = (await db.execute(select(files_table).where(files_table.c.file_id == row.file_id))).one()
                return _file(existing)
            await db.execute(insert(files_table).values(_file_values(file)))
            await db.execute(
                update(uploads_table).where(uploads_table.c.upload_id == upload_id).values(file_id=file.file_id)
            )
        return file

    async def expired_uploads(self, now: datetime, limit: int) -> list[Upload]:
        query = (
            select(uploads_table)
            .where(uploads_table.c.expires_at <= now)
            .order_by(uploads_table.c.expires_at)
            .limit(limit)
        )
        async with _transaction(self._sessions) as db:
            rows = (await db.execute(query)).all()
        return [_upload(row) for row in rows]

    async def add_file(self, file: StoredFile) -> None:
        async with _transaction(self._sessions) as db:
            await db.execute(insert(files_table).values(_file_values(file)))

    async def get_file(self, file_id: str) -> StoredFile | None:
        async with _transaction(self._sessions) as db:
            row = (await db.execute(select(files_table).where(files_table.c.file_id == file_id))).first()
        return None if row is None else _file(row)

    async def find_by_content(self, sha256: str, size: int) -> StoredFile | None:
        query = (
            select(files_table)
            .where(files_table.c.sha256 == sha256, files_table.c.size == size)
            .order_by(files_table.c.created_at, files_table.c.file_id)
            .limit(1)
        )
        async with _transaction(self._sessions) as db:
            row = (await db.execute(query)).first()
        return None if row is None else _file(row)

    async def matches_by_content(self, sha256: str, size: int, *, owner_id: str, limit: int) -> list[ContentMatch]:
        same = (files_table.c.sha256 == sha256, files_table.c.size == size)
        owned = (
            select(files_table)
            .where(*same, files_table.c.owner_id == owner_id)
            .order_by(files_table.c.created_at, files_table.c.file_id)
            .limit(limit)
        )
        shared = (
            select(files_table, shares_table.c.conversation_id)
            .join(shares_table, shares_table.c.file_id == files_table.c.file_id)
            .where(*same, files_table.c.owner_id != owner_id)
            .order_by(
                shares_table.c.created_at.desc(), shares_table.c.conversation_id.desc(), files_table.c.file_id.desc()
            )
        )
        async with _transaction(self._sessions) as db:
            matches = [ContentMatch(_file(row), None) for row in (await db.execute(owned)).all()]
            if len(matches) < limit:
                rows = (await db.execute(shared.limit(limit - len(matches)))).all()
                matches += [ContentMatch(_file(row), row.conversation_id) for row in rows]
        return matches

    async def add_share(self, file_id: str, conversation_id: str, user_id: str, at: datetime) -> None:
        values = {"file_id": file_id, "conversation_id": conversation_id, "shared_by": user_id, "created_at": at}
        try:
            async with _transaction(self._sessions) as db:
                await db.execute(insert(shares_table).values(values))
        except IntegrityError as exc:
            # A concurrent call shared it first (sharing is idempotent), or the file does not exist.
            if conversation_id not in await self.shared_in(file_id):
                raise NotFound("file not found") from exc

    async def shared_in(self, file_id: str) -> list[str]:
        query = (
            select(shares_table.c.conversation_id)
            .where(shares_table.c.file_id == file_id)
            .order_by(shares_table.c.created_at, shares_table.c.conversation_id)
        )
        async with _transaction(self._sessions) as db:
            return list((await db.execute(query)).scalars())
