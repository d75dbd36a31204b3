"""Shared fixtures of the integration tests: the harness's real Redis and a key prefix unique to each test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from services.message.adapters.redis import connect
from tests.harness.infra import ensure_infra


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The harness's Redis, started if it is not running; a failure to start errors the tests, never skips."""
    url: str = ensure_infra(("redis",))["services"]["redis"]["url"]
    return url


@pytest.fixture
def unique_prefix() -> str:
    """A key (or name) prefix of this test alone, so tests share the servers safely."""
    return f"test:{uuid4().hex[:16]}:"


@pytest.fixture
async def redis_client(redis_url: str, unique_prefix: str) -> AsyncIterator[Redis]:
    """A client of the harness's Redis, built as the services build theirs; the keys under ``unique_prefix``
    are deleted after the test."""
    client = connect(redis_url)
    yield client
    async for key in client.scan_iter(match=f"{unique_prefix}*", count=1000):
        await client.delete(key)
    await client.aclose()
