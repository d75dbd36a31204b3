"""The conversation store contract (``tests/unit/conversation/test_conversation_store_contract.py``) on SQLite,
MariaDB and PostgreSQL, each a fresh database upgraded by ``services.migrate``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from services.common.db import sessionmaker
from services.conversation.adapters.sql import SqlConversationStore
from services.conversation.ports import ConversationStore
from tests.integration.test_sql_support import SQL_BACKENDS, clean_engine, contract_tests, migrated_database

globals().update(contract_tests("conversation", "test_conversation_store_contract"))


@pytest.fixture(scope="module", params=SQL_BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database(request.param, tmp_path_factory.mktemp("conversation")) as url:
        yield url


@pytest.fixture
async def store(database: str) -> AsyncIterator[ConversationStore]:
    async with clean_engine(database) as engine:
        yield SqlConversationStore(sessionmaker(engine))
