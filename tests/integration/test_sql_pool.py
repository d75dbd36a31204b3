"""The server engines' connection pool on the harness's MariaDB and PostgreSQL: a connection is pinged only after
it sat idle, rolled back on return only when it is still in a transaction, and a lost connection is replaced."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common import db
from services.common.errors import Unavailable
from tests.integration.test_sql_support import SERVER_BACKENDS, empty_database

_CONNECTION_ID = {"mariadb": "SELECT CONNECTION_ID()", "postgres": "SELECT pg_backend_pid()"}
_KILL = {"mariadb": "KILL {id}", "postgres": "SELECT pg_terminate_backend({id})"}


@pytest.fixture(params=SERVER_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def url(backend: str, tmp_path: Path) -> Iterator[str]:
    with empty_database(backend, tmp_path) as database:
        yield database


@asynccontextmanager
async def _scratch_engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE scratch (id INTEGER PRIMARY KEY)"))
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def engine(url: str) -> AsyncIterator[AsyncEngine]:
    async with _scratch_engine(url) as engine:
        yield engine


@pytest.fixture
async def mariadb_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    with empty_database("mariadb", tmp_path) as url:
        async with _scratch_engine(url) as engine:
            yield engine


async def _connection_id(conn: AsyncConnection, backend: str) -> int:
    value = (await conn.execute(text(_CONNECTION_ID[backend]))).scalar_one()
    return int(value)


async def _kill(url: str, backend: str, connection_id: int) -> None:
    """End a connection from the server's side, as a restart or an operator's kill does."""
    admin = db.create_engine(url)
    try:
        async with admin.connect() as conn:
            await conn.execute(text(_KILL[backend].format(id=connection_id)))
            await conn.commit()
    finally:
        await admin.dispose()


async def test_a_committed_write_hands_its_connection_back_without_another_round_trip(
    mariadb_engine: AsyncEngine,
) -> None:
    # Each write of a busy process used to pay a ping when it took its connection and a ROLLBACK when it gave it
    # back: two of a MariaDB group commit's seven round trips. The session's own counters show what was sent
    # (PostgreSQL's driver never sent that rollback).
    engine = mariadb_engine
    status = text("SHOW SESSION STATUS WHERE Variable_name IN ('Com_rollback', 'Com_admin_commands')")
    seen: list[tuple[int, dict[str, int]]] = []
    for key in range(4):
        async with db.writing(engine, "test") as conn:
            counters = {name: int(value) for name, value in (await conn.execute(status)).all()}
            seen.append((await _connection_id(conn, "mariadb"), counters))
            await conn.execute(text("INSERT INTO scratch (id) VALUES (:id)"), {"id": key})
    assert len({connection for connection, _ in seen}) == 1, seen  # one pooled connection, used four times
    assert [counters for _, counters in seen] == [seen[0][1]] * 4
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT COUNT(*) FROM scratch"))).scalar_one() == 4


async def test_a_connection_left_in_a_transaction_is_rolled_back_when_it_returns(
    engine: AsyncEngine, backend: str
) -> None:
    def insert_on_the_driver(sync_conn: Connection) -> None:
        # Straight on the driver, out of sight of Core: nothing but the pool's return can end this transaction.
        cursor = sync_conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("INSERT INTO scratch (id) VALUES (1)")
        cursor.close()

    async with engine.connect() as conn:
        first = await _connection_id(conn, backend)
        await conn.rollback()
        await conn.run_sync(insert_on_the_driver)
    async with engine.connect() as conn:
        assert await _connection_id(conn, backend) == first  # the same connection: it would see its own insert
        assert (await conn.execute(text("SELECT COUNT(*) FROM scratch"))).scalar_one() == 0


async def test_a_lost_connection_idle_past_the_ping_interval_is_replaced_before_it_is_used(
    engine: AsyncEngine, url: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)  # every connection back in the pool counts as idle
    async with db.writing(engine, "test") as conn:
        lost = await _connection_id(conn, backend)
    await _kill(url, backend, lost)
    async with db.writing(engine, "test") as conn:
        assert await _connection_id(conn, backend) != lost
        await conn.execute(text("INSERT INTO scratch (id) VALUES (1)"))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT COUNT(*) FROM scratch"))).scalar_one() == 1


async def test_a_connection_lost_a_moment_after_its_last_use_fails_once_as_unavailable_then_the_pool_recovers(
    engine: AsyncEngine, url: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not pinged: the write it was taken for fails (503, the client retries) and every connection pooled
    # before then is replaced, so the next write works.
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 3600.0)
    async with db.writing(engine, "test") as conn:
        lost = await _connection_id(conn, backend)
    await _kill(url, backend, lost)
    with pytest.raises(Unavailable):
        async with db.writing(engine, "test") as conn:
            await conn.execute(text("INSERT INTO scratch (id) VALUES (1)"))
    async with db.writing(engine, "test") as conn:
        assert await _connection_id(conn, backend) != lost
        await conn.execute(text("INSERT INTO scratch (id) VALUES (2)"))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT id FROM scratch"))).scalars().all() == [2]
