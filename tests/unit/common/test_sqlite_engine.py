"""The embedded SQLite engine: a fresh file is in WAL mode before any pooled connection opens it."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from services.common.db import create_engine, reading, statement_engines, write_sync, writing


def _journal_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        mode: str = conn.execute("PRAGMA journal_mode").fetchone()[0]
        return mode
    finally:
        conn.close()


async def test_a_new_database_file_is_switched_to_wal_when_the_engine_is_made(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"

    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await engine.dispose()

    assert _journal_mode(path) == "wal"


async def test_many_engines_opening_one_new_file_at_once_all_write(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    engines = [create_engine(url) for _ in range(4)]
    try:
        async with engines[0].begin() as conn:
            await conn.execute(text("CREATE TABLE t (n INTEGER)"))

        async def write(engine_index: int) -> None:
            async with engines[engine_index].begin() as conn:
                await conn.execute(text("INSERT INTO t (n) VALUES (:n)"), {"n": engine_index})

        await asyncio.gather(*(write(i) for i in range(4)))

        async with engines[0].connect() as conn:
            assert sorted((await conn.execute(text("SELECT n FROM t"))).scalars()) == [0, 1, 2, 3]
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_missing_directory_is_left_for_the_first_connection_to_report(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'absent' / 'x.db'}")
    try:
        with pytest.raises(OperationalError, match="unable to open database file"):
            async with engine.connect():
                pass
        assert not (tmp_path / "absent").exists()
    finally:
        await engine.dispose()


async def test_a_read_is_answered_while_a_write_transaction_is_open(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'rw.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (n INTEGER)"))
            await conn.execute(text("INSERT INTO t (n) VALUES (1)"))
        async with writing(engine, "test") as writer:
            await writer.execute(text("INSERT INTO t (n) VALUES (2)"))

            # The writer holds SQLite's write lock; a read that asked for it would wait out the
            # 30 s busy timeout. It sees the last committed state instead, at once.
            async def read() -> list[int]:
                async with reading(engine, "test") as reader:
                    return sorted((await reader.execute(text("SELECT n FROM t"))).scalars())

            assert await asyncio.wait_for(read(), timeout=20) == [1]
        async with reading(engine, "test") as reader:
            assert sorted((await reader.execute(text("SELECT n FROM t"))).scalars()) == [1, 2]
    finally:
        await engine.dispose()


async def test_writers_of_one_process_take_turns_without_sqlite_busy_errors(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE counter (n INTEGER)"))
            await conn.execute(text("INSERT INTO counter (n) VALUES (0)"))

        async def increment() -> None:
            async with writing(engine, "test") as conn:
                n = (await conn.execute(text("SELECT n FROM counter"))).scalar_one()
                await conn.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})

        await asyncio.gather(*(increment() for _ in range(50)))

        async with reading(engine, "test") as conn:
            assert (await conn.execute(text("SELECT n FROM counter"))).scalar_one() == 50
    finally:
        await engine.dispose()


async def test_statements_run_on_the_loop_thread_without_a_thread_per_connection(tmp_path: Path) -> None:
    # A thread round trip per call cost more than the statements of the message path themselves.
    threads_before = threading.active_count()
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}")
    try:
        async with writing(engine, "test") as conn:
            await conn.execute(text("CREATE TABLE t (n INTEGER)"))
            await conn.execute(text("INSERT INTO t (n) VALUES (:n)"), [{"n": n} for n in range(5)])
        async with reading(engine, "test") as conn:
            assert (await conn.execute(text("SELECT sum(n) FROM t"))).scalar() == 10
            assert threading.active_count() == threads_before
    finally:
        await engine.dispose()


async def test_a_failed_statement_rolls_its_transaction_back(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'rollback.db'}")
    try:
        async with writing(engine, "test") as conn:
            await conn.execute(text("CREATE TABLE t (n INTEGER UNIQUE)"))

        async def insert_one_twice() -> None:
            async with writing(engine, "test") as conn:
                await conn.execute(text("INSERT INTO t (n) VALUES (1)"))
                await conn.execute(text("INSERT INTO t (n) VALUES (1)"))

        with pytest.raises(IntegrityError):
            await insert_one_twice()
        async with reading(engine, "test") as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
    finally:
        await engine.dispose()


async def test_write_sync_commits_on_return_and_rolls_back_on_a_raise(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'sync.db'}")
    try:
        async with writing(engine, "test") as conn:
            await conn.execute(text("CREATE TABLE t (n INTEGER UNIQUE)"))

        def insert(n: int) -> Callable[[Connection], int]:
            def work(conn: Connection) -> int:
                conn.execute(text("INSERT INTO t (n) VALUES (:n)"), {"n": n})
                return int(conn.execute(text("SELECT count(*) FROM t")).scalar_one())

            return work

        assert await write_sync(engine, "test", insert(1)) == 1
        with pytest.raises(IntegrityError):
            await write_sync(engine, "test", lambda conn: (insert(2)(conn), insert(1)(conn)))
        async with reading(engine, "test") as conn:
            assert sorted((await conn.execute(text("SELECT n FROM t"))).scalars()) == [1]
        assert _open_files(tmp_path / "sync.db")
    finally:
        await engine.dispose()
    assert not _open_files(tmp_path / "sync.db")  # the twin's pooled connections are closed with the engine


def _open_files(path: Path) -> list[Path]:
    return [fd for fd in Path("/proc/self/fd").iterdir() if os.path.realpath(fd) == str(path)]


async def test_write_sync_and_async_writers_of_one_process_take_turns(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'mixed.db'}")
    try:
        assert len(statement_engines(engine)) == 2  # a file: the synchronous twin is there
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE counter (n INTEGER)"))
            await conn.execute(text("INSERT INTO counter (n) VALUES (0)"))

        def increment_sync(conn: Connection) -> None:
            n = conn.execute(text("SELECT n FROM counter")).scalar_one()
            conn.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})

        async def increment(i: int) -> None:
            if i % 2:
                await write_sync(engine, "test", increment_sync)
                return
            async with writing(engine, "test") as conn:
                n = (await conn.execute(text("SELECT n FROM counter"))).scalar_one()
                await asyncio.sleep(0)  # another writer may run now, and must wait for this one
                await conn.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})

        await asyncio.gather(*(increment(i) for i in range(60)))

        async with reading(engine, "test") as conn:
            assert (await conn.execute(text("SELECT n FROM counter"))).scalar_one() == 60
    finally:
        await engine.dispose()
