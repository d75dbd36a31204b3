"""The identity store contract (``tests/unit/identity/test_identity_stores.py``) on SQLite, MariaDB and
PostgreSQL, each a fresh database upgraded by ``services.migrate``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from services.common.db import sessionmaker
from services.identity.adapters.sql import SqlSessionStore, SqlUserStore
from tests.integration.test_sql_support import SQL_BACKENDS, clean_engine, contract_tests, migrated_database

globals().update(contract_tests("identity", "test_identity_stores"))
from identity_support import Stores  # noqa: E402 - importable once contract_tests put its directory on the path
from test_identity_stores import make_session, make_user  # noqa: E402


@pytest.fixture(scope="module", params=SQL_BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database(request.param, tmp_path_factory.mktemp("identity")) as url:
        yield url


@pytest.fixture
async def stores(database: str) -> AsyncIterator[Any]:
    async with clean_engine(database) as engine:
        sessions = sessionmaker(engine)
        yield Stores(SqlUserStore(sessions), SqlSessionStore(sessions))


async def test_concurrent_logins_on_one_device_leave_exactly_one_session(stores: Any) -> None:
    # Beyond the unit contract (where SQLite and memory run one login at a time): on MySQL and
    # PostgreSQL the logins really overlap, and none may fail or leave two sessions behind.
    user = make_user()
    await stores.users.add(user)
    logins = [make_session(user, "tablet") for _ in range(6)]

    await asyncio.gather(*(stores.sessions.put(session) for session in logins))

    left = [s for s in logins if await stores.sessions.by_refresh_hash(s.refresh_hash) is not None]
    assert len(left) == 1
