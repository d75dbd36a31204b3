"""The embedded SQLite engine: a fresh file is in WAL mode before any pooled connection opens it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from services.common.db import create_engine


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
