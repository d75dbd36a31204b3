"""The identity store contract (``tests/unit/identity/test_identity_stores.py``) on SQLite, MariaDB and
PostgreSQL, each a fresh database upgraded by ``services.migrate``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import insert

from services.common.db import create_engine, sessionmaker
from services.identity.adapters.sql import SqlSessionStore, SqlUserStore, rotated_tokens_table
from tests.integration.test_sql_support import SQL_BACKENDS, clean_engine, contract_tests, migrated_database

globals().update(contract_tests("identity", "test_identity_stores"))
from identity_support import Stores  # noqa: E402 - importable once contract_tests put its directory on the path
from test_identity_stores import NOW, make_session, make_user  # noqa: E402


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


async def _login(stores: Any, session: Any, now: Any) -> None:
    """What a login asks of the session store: forget the user's expired sessions, then put its own."""
    await stores.sessions.delete_expired(session.user_id, now=now)
    await stores.sessions.put(session)


async def _refreshed_twice(stores: Any, session: Any) -> None:
    for _ in range(2):
        new_hash = uuid4().hex + uuid4().hex
        assert await stores.sessions.rotate(
            session.session_id, old_hash=session.refresh_hash, new_hash=new_hash, expires_at=NOW, now=NOW
        )
        session = replace(session, refresh_hash=new_hash)


async def _bystander_tokens(stores: Any, database: str, count: int) -> None:
    """``count`` rotated tokens of another user's session: a token table the size of a live service's."""
    bystander = make_user()
    await stores.users.add(bystander)
    session = make_session(bystander, "laptop")
    await stores.sessions.put(session)
    rows = [
        {"token_hash": f"{i:064x}", "session_id": session.session_id, "expires_at": NOW + timedelta(days=1)}
        for i in range(count)
    ]
    engine = create_engine(database)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(rotated_tokens_table), rows)
    finally:
        await engine.dispose()


async def test_concurrent_logins_of_many_users_all_succeed(stores: Any, database: str) -> None:
    # Logins overlapping on a token table of thousands of rows, each deleting its user's expired sessions and
    # their rotated tokens: none may fail. (On MariaDB the delete through an IN (SELECT ...) scanned the whole
    # token table under lock, and `make up` logged deadlocks of logins; test_sql_indexes checks the plans.)
    await _bystander_tokens(stores, database, 5_000)
    users = [make_user() for _ in range(24)]
    for user in users:
        await stores.users.add(user)
    for round_ in range(4):
        # Each user logs in again on its phone and its tablet, replacing the sessions of the round before, which
        # were refreshed twice since and have expired by now.
        logins = [
            make_session(user, device, expires_at=NOW + timedelta(days=round_ + 2))
            for user in users
            for device in ("phone", "tablet")
        ]
        now = NOW + timedelta(days=round_)
        await asyncio.gather(*(_login(stores, s, now) for s in logins))
        for session in logins:
            assert await stores.sessions.by_refresh_hash(session.refresh_hash) is not None
        for session in logins:
            await _refreshed_twice(stores, session)


async def test_concurrent_logins_of_one_user_on_many_devices_all_succeed(stores: Any) -> None:
    user = make_user()
    await stores.users.add(user)
    for round_ in range(3):
        for device in range(4):
            old = make_session(user, f"old-{round_}-{device}", expires_at=NOW + timedelta(minutes=device))
            await stores.sessions.put(old)
            await _refreshed_twice(stores, old)
        logins = [make_session(user, f"device-{round_}-{device}") for device in range(8)]
        await asyncio.gather(*(_login(stores, s, NOW + timedelta(hours=1)) for s in logins))
        for session in logins:
            assert await stores.sessions.by_refresh_hash(session.refresh_hash) is not None
