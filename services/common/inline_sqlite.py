"""SQLite for the embedded mode, called on the event loop's own thread.

SQLAlchemy's asyncio SQLite dialect expects an aiosqlite connection, whose every call (cursor,
execute, fetch, close: four per statement) is a round trip to a thread of its own. Measured on this
code's statements, that made one ``execute`` cost about 110 us of CPU against 12 us through the
synchronous driver, and it was most of ``courier dev``'s CPU per message.

``InlineConnection`` offers the same awaitable calls over a plain ``sqlite3`` connection and runs
them at once. In WAL mode with ``synchronous=NORMAL`` a statement of the message path takes
microseconds and a commit does not wait for the disk, so running it inline holds the loop for less
than the round trip cost. What can still hold it longer: a checkpoint (every 1,000 WAL pages, it
writes them back) and a lock held by another process (the busy timeout; this process's own writers
queue on an asyncio lock first, see ``services.common.db``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any


class InlineCursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    async def execute(self, operation: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> InlineCursor:
        self._cursor.execute(operation, parameters)
        return self

    async def executemany(self, operation: str, seq_of_parameters: Iterable[Any]) -> InlineCursor:
        self._cursor.executemany(operation, seq_of_parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class InlineConnection:
    """The part of aiosqlite's ``Connection`` that SQLAlchemy's aiosqlite dialect calls."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._conn = connection

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    async def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor())

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> InlineCursor:
        return InlineCursor(self._conn.execute(sql, parameters))

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        self._conn.close()

    def stop(self) -> None:
        """What the dialect calls to terminate a connection it gave up on."""
        self._conn.close()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)


def creator(database: str, *, timeout_s: float) -> Any:
    """``async_creator`` for ``create_async_engine``: a connection in autocommit mode (the engine's
    ``begin`` listener issues BEGIN itself), usable from whichever thread disposes of it."""

    async def connect() -> InlineConnection:
        connection = sqlite3.connect(
            database,
            timeout=timeout_s,
            isolation_level=None,
            check_same_thread=False,
            uri=database.startswith("file:"),
        )
        return InlineConnection(connection)

    return connect
