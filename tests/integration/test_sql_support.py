"""Throw-away databases for the SQL tests: SQLite files, and MariaDB and PostgreSQL databases from the harness.

Each test module asks for one database per backend (``migrated_database``): created under a unique name
(``courier_t_<random>``, which the harness account may create), upgraded by ``services.migrate`` and dropped
at the end. ``clean`` empties it before each test, so tests see only their own rows. The two tests at the
bottom check this machinery itself.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.common.db import create_engine
from services.migrate import schema, upgrade
from tests.harness.infra import ensure_infra

REPO = Path(__file__).resolve().parents[2]

SQL_BACKENDS = ("sqlite", "mariadb", "postgres")
SERVER_BACKENDS = ("mariadb", "postgres")
_URL_VARIABLE = {"mariadb": "COURIER_TEST_MYSQL_URL", "postgres": "COURIER_TEST_POSTGRES_URL"}

T = TypeVar("T")


def contract_tests(unit_dir: str, module_name: str) -> dict[str, Any]:
    """The test functions of a contract suite under ``tests/unit/<unit_dir>``, to be collected again by a
    module that supplies the store fixture on a real database. The module is imported under the name pytest
    gives it (those directories are not packages), so a whole-suite run shares one copy."""
    directory = str(REPO / "tests" / "unit" / unit_dir)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    module = importlib.import_module(module_name)
    return {name: value for name, value in vars(module).items() if name.startswith("test_") and callable(value)}


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to the end from synchronous code (a module fixture) on a loop of its own thread,
    leaving the test's event loop alone."""

    async def main() -> T:
        return await make()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


@cache
def server_url(backend: str) -> str:
    """The URL of the harness's server for ``backend``; the environment variable, when set, points elsewhere
    (a MySQL 8 for instance). Starting the server may take minutes on a fresh machine; failing raises."""
    variable = _URL_VARIABLE[backend]
    if os.environ.get(variable):
        return os.environ[variable]
    url: str = ensure_infra((backend,))["env"][variable]
    return url


def unique_name() -> str:
    # The harness grants the courier account every database whose name starts with "courier".
    return f"courier_t_{uuid.uuid4().hex[:12]}"


async def _admin(url: str, statement: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@contextmanager
def empty_database(backend: str, tmp_dir: Path) -> Iterator[str]:
    """The URL of a new, empty database of ``backend``; it is dropped on exit."""
    name = unique_name()
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_dir / (name + '.db')}"
        return
    base = server_url(backend)
    run_async(lambda: _admin(base, f"CREATE DATABASE {name}"))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        drop = f"DROP DATABASE {name} WITH (FORCE)" if backend == "postgres" else f"DROP DATABASE {name}"
        _drop(base, drop)


def _drop(base: str, drop: str, deadline_s: float = 60.0) -> None:
    """Drop a test database. PostgreSQL's FORCE may not end an autovacuum worker that happens to be in it
    (it runs as the superuser), and refuses; the worker is gone moments later."""
    give_up = time.monotonic() + deadline_s
    while True:
        try:
            run_async(lambda: _admin(base, drop))
            return
        except ProgrammingError as exc:
            if "pg_signal_backend" not in str(exc) or time.monotonic() > give_up:
                raise
            time.sleep(0.5)


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


@contextmanager
def migrated_database(backend: str, tmp_dir: Path) -> Iterator[str]:
    """A new database of ``backend`` upgraded to the newest revision by ``services.migrate``."""
    with empty_database(backend, tmp_dir) as url:
        run_async(lambda: _migrate(url))
        yield url


async def clean(engine: AsyncEngine) -> None:
    """Delete every row, children first, so a test sees only what it writes."""
    async with engine.begin() as conn:
        for table in reversed(schema().sorted_tables):
            await conn.execute(table.delete())


@asynccontextmanager
async def clean_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``url`` (bound to the running test's loop) over an emptied database."""
    engine = create_engine(url)
    try:
        await clean(engine)
        yield engine
    finally:
        await engine.dispose()


async def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            names: set[str] = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
        return names
    finally:
        await engine.dispose()


def database_exists(backend: str, url: str) -> bool:
    name = make_url(url).database
    query = {
        "mariadb": f"SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = '{name}'",
        "postgres": f"SELECT COUNT(*) FROM pg_database WHERE datname = '{name}'",
    }[backend]

    async def count() -> Any:
        engine = create_async_engine(server_url(backend))
        try:
            async with engine.connect() as conn:
                return (await conn.execute(text(query))).scalar()
        finally:
            await engine.dispose()

    return bool(run_async(count))


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_throw_away_database_is_created_empty_and_dropped_at_the_end(backend: str, tmp_path: Path) -> None:
    with empty_database(backend, tmp_path) as url:
        assert database_exists(backend, url)
        assert run_async(lambda: table_names(url)) == set()
    assert not database_exists(backend, url)


@pytest.mark.parametrize("backend", SQL_BACKENDS)
async def test_clean_engine_sees_a_migrated_database_without_rows(backend: str, tmp_path: Path) -> None:
    with migrated_database(backend, tmp_path) as url:
        async with clean_engine(url) as engine, engine.connect() as conn:
            for table in schema().sorted_tables:
                assert (await conn.execute(table.select())).first() is None
        assert {table.name for table in schema().sorted_tables} <= await table_names(url)
