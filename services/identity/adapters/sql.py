"""SQL identity stores (SQLAlchemy Core): SQLite embedded, MySQL/MariaDB and PostgreSQL distributed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Column, ForeignKey, Index, String, Table, UniqueConstraint, delete, insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common import db
from services.common.db import UtcDateTime, is_deadlock, metadata
from services.common.errors import Conflict, NotFound, Unavailable
from services.identity.domain import Session, User

# Byte-wise collation: usernames sort in one order on every database (as Python sorts them), and a
# PostgreSQL btree index serves the prefix LIKE of user search.
_Username = (
    String(32)
    .with_variant(String(32, collation="utf8mb4_bin"), "mysql", "mariadb")
    .with_variant(String(32, collation="C"), "postgresql")
)

# Tables collate byte-wise on MySQL too (as on PostgreSQL and SQLite): its default *_ci collations take "Ab" for "ab".
users_table = Table(
    "identity_users",
    metadata,
    Column("user_id", String(32), primary_key=True),
    Column("username", _Username, nullable=False, unique=True),
    Column("display_name", String(64), nullable=False),
    Column("password_hash", String(255), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

sessions_table = Table(
    "identity_sessions",
    metadata,
    Column("session_id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey(users_table.c.user_id), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("device_name", String(64), nullable=True),
    Column("refresh_hash", String(64), nullable=False, unique=True),
    Column("refresh_expires_at", UtcDateTime(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    UniqueConstraint("user_id", "device_id"),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

# Refresh tokens already rotated out, kept until they would have expired so their reuse is detected.
rotated_tokens_table = Table(
    "identity_rotated_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("session_id", String(32), ForeignKey(sessions_table.c.session_id), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index(None, "session_id"),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

_IN_CHUNK = 500  # ids per IN (...) list, well under every database's parameter limit


T = TypeVar("T")

# Tries of a transaction the database ended in a deadlock (or, for a login, a clash on its device's key).
DEADLOCK_ATTEMPTS = 3


def _transaction(sessions: async_sessionmaker[AsyncSession]) -> AbstractAsyncContextManager[AsyncSession]:
    return db.transaction(sessions, "identity")


def _user(row: Any) -> User:
    return User(
        user_id=row.user_id,
        username=row.username,
        display_name=row.display_name,
        password_hash=row.password_hash,
        created_at=row.created_at,
    )


def _session(row: Any) -> Session:
    return Session(
        session_id=row.session_id,
        user_id=row.user_id,
        device_id=row.device_id,
        device_name=row.device_name,
        refresh_hash=row.refresh_hash,
        refresh_expires_at=row.refresh_expires_at,
        created_at=row.created_at,
    )


class SqlUserStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def add(self, user: User) -> None:
        try:
            async with _transaction(self._sessions) as db:
                await db.execute(
                    insert(users_table).values(
                        user_id=user.user_id,
                        username=user.username,
                        display_name=user.display_name,
                        password_hash=user.password_hash,
                        created_at=user.created_at,
                    )
                )
        except IntegrityError as exc:
            raise Conflict(f"username {user.username!r} is already taken") from exc

    async def get(self, user_id: str) -> User | None:
        async with _transaction(self._sessions) as db:
            row = (await db.execute(select(users_table).where(users_table.c.user_id == user_id))).first()
        return None if row is None else _user(row)

    async def by_username(self, username: str) -> User | None:
        async with _transaction(self._sessions) as db:
            row = (await db.execute(select(users_table).where(users_table.c.username == username))).first()
        return None if row is None else _user(row)

    async def get_many(self, user_ids: Collection[str]) -> list[User]:
        ids = sorted(set(user_ids))
        found: list[User] = []
        async with _transaction(self._sessions) as db:
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                rows = await db.execute(select(users_table).where(users_table.c.user_id.in_(chunk)))
                found.extend(_user(row) for row in rows)
        return found

    async def search(self, prefix: str, *, limit: int) -> list[User]:
        query = select(users_table).order_by(users_table.c.username).limit(limit)
        if prefix:
            query = query.where(users_table.c.username.startswith(prefix, autoescape=True))
        async with _transaction(self._sessions) as db:
            rows = await db.execute(query)
            return [_user(row) for row in rows]

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        async with _transaction(self._sessions) as db:
            result = await db.execute(
                update(users_table).where(users_table.c.user_id == user_id).values(password_hash=password_hash)
            )
            if cast("CursorResult[Any]", result).rowcount == 0:
                raise NotFound(f"no user with id {user_id!r}")


class SqlSessionStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def put(self, session: Session) -> str | None:
        device = (sessions_table.c.user_id == session.user_id) & (sessions_table.c.device_id == session.device_id)
        # Two logins on one device at once would both find no previous session to replace: PostgreSQL
        # then rejects the second insert on the unique (user_id, device_id) key, MySQL deadlocks. Locking
        # the user row first makes a user's logins take turns (SQLite's BEGIN IMMEDIATE does already);
        # the retry stays for a key clash all the same.
        lock_user = select(users_table.c.user_id).where(users_table.c.user_id == session.user_id).with_for_update()

        async def replace(db: AsyncSession) -> str | None:
            await db.execute(lock_user)
            # At most one: (user_id, device_id) is unique.
            replaced = next(iter(await self._delete_where(db, device)), None)
            await db.execute(
                insert(sessions_table).values(
                    session_id=session.session_id,
                    user_id=session.user_id,
                    device_id=session.device_id,
                    device_name=session.device_name,
                    refresh_hash=session.refresh_hash,
                    refresh_expires_at=session.refresh_expires_at,
                    created_at=session.created_at,
                )
            )
            return replaced

        try:
            return await self._retried(replace, clash=IntegrityError)
        except IntegrityError as exc:
            raise Conflict("another login on this device is in progress; try again") from exc

    async def _retried(
        self, work: Callable[[AsyncSession], Awaitable[T]], *, clash: type[Exception] | None = None
    ) -> T:
        """``work`` in a transaction of its own, run again (``DEADLOCK_ATTEMPTS`` in all) when the database ends it
        in a deadlock or it raises ``clash``; the last attempt's error is the caller's."""
        retried: tuple[type[Exception], ...] = (Unavailable,) if clash is None else (Unavailable, clash)
        for attempt in range(DEADLOCK_ATTEMPTS):
            try:
                async with _transaction(self._sessions) as db:
                    return await work(db)
            except retried as exc:
                if attempt == DEADLOCK_ATTEMPTS - 1 or (isinstance(exc, Unavailable) and not is_deadlock(exc)):
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def by_refresh_hash(self, refresh_hash: str) -> Session | None:
        async with _transaction(self._sessions) as db:
            query = select(sessions_table).where(sessions_table.c.refresh_hash == refresh_hash)
            row = (await db.execute(query)).first()
        return None if row is None else _session(row)

    async def rotated_from(self, refresh_hash: str) -> str | None:
        async with _transaction(self._sessions) as db:
            query = select(rotated_tokens_table.c.session_id).where(rotated_tokens_table.c.token_hash == refresh_hash)
            session_id: str | None = (await db.execute(query)).scalar()
        return session_id

    async def rotate(
        self, session_id: str, *, old_hash: str, new_hash: str, expires_at: datetime, now: datetime
    ) -> bool:
        current = (sessions_table.c.session_id == session_id) & (sessions_table.c.refresh_hash == old_hash)
        async with _transaction(self._sessions) as db:
            old_expiry = (await db.execute(select(sessions_table.c.refresh_expires_at).where(current))).scalar()
            if old_expiry is None:
                return False
            # The WHERE on the old hash is the compare-and-swap: of two refreshes racing with one
            # token, the second updates no row once the first has committed.
            swapped = await db.execute(
                update(sessions_table).where(current).values(refresh_hash=new_hash, refresh_expires_at=expires_at)
            )
            if cast("CursorResult[Any]", swapped).rowcount != 1:
                return False  # nothing was written
            await db.execute(
                delete(rotated_tokens_table).where(
                    (rotated_tokens_table.c.session_id == session_id) & (rotated_tokens_table.c.expires_at <= now)
                )
            )
            await db.execute(
                insert(rotated_tokens_table).values(token_hash=old_hash, session_id=session_id, expires_at=old_expiry)
            )
        return True

    async def delete(self, session_id: str) -> None:
        await self._deleting(sessions_table.c.session_id == session_id)

    async def delete_device(self, user_id: str, device_id: str) -> None:
        await self._deleting((sessions_table.c.user_id == user_id) & (sessions_table.c.device_id == device_id))

    async def delete_expired(self, user_id: str, *, now: datetime) -> None:
        await self._deleting((sessions_table.c.user_id == user_id) & (sessions_table.c.refresh_expires_at <= now))

    async def _deleting(self, condition: Any) -> None:
        """``_delete_where`` in a transaction of its own, run again after a deadlock (a user's logins, refreshes and
        logouts overlap; the deletes leave the same end state however often run)."""

        async def delete_matching(db: AsyncSession) -> None:
            await self._delete_where(db, condition)

        await self._retried(delete_matching)

    @staticmethod
    async def _delete_where(db: AsyncSession, condition: Any) -> list[str]:
        """Delete the matching sessions, their rotated tokens first (they reference the session); their ids.

        The sessions are read first, then locked by id (and checked again), and their tokens deleted by session id
        through its index. MariaDB runs a DELETE whose WHERE is an ``IN (SELECT ...)`` as a scan of the whole token
        table, locking each row it reads: every login scanned every user's rotated tokens, and concurrent logins
        deadlocked. The lock keeps a refresh from adding a token to a session being deleted."""
        candidates = list((await db.execute(select(sessions_table.c.session_id).where(condition))).scalars())
        if not candidates:
            return []
        # Locked by primary key: the read above may scan other users' rows, and a locking scan took their locks.
        locked = select(sessions_table.c.session_id).where(sessions_table.c.session_id.in_(candidates))
        doomed = list((await db.execute(locked.where(condition).with_for_update())).scalars())
        if doomed:
            await db.execute(delete(rotated_tokens_table).where(rotated_tokens_table.c.session_id.in_(doomed)))
            await db.execute(delete(sessions_table).where(sessions_table.c.session_id.in_(doomed)))
        return doomed
