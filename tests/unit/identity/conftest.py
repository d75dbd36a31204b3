"""Fixtures of the identity tests: cheap argon2, a settable clock, and stores of either adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from identity_support import FakeClock, Stores, cheap_hasher

from services.common.db import create_all, create_engine, sessionmaker
from services.common.settings import JwtSettings
from services.common.tokens import AccessTokens
from services.identity.adapters.memory import MemorySessionStore, MemoryUserStore
from services.identity.adapters.sql import SqlSessionStore, SqlUserStore
from services.identity.passwords import Passwords


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def passwords() -> Passwords:
    return Passwords(cheap_hasher())


@pytest.fixture
def tokens() -> AccessTokens:
    return AccessTokens(JwtSettings(keys={"k1": "test-secret-of-at-least-32-bytes-long!"}, active_kid="k1"))


@pytest.fixture(params=["memory", "sql"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    if request.param == "memory":
        yield Stores(MemoryUserStore(), MemorySessionStore())
        return
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'identity.db'}")
    await create_all(engine)
    try:
        db = sessionmaker(engine)
        yield Stores(SqlUserStore(db), SqlSessionStore(db))
    finally:
        await engine.dispose()
