"""The file catalog contract (``tests/unit/file/test_file_catalog_contract.py``) on SQLite, MariaDB and
PostgreSQL, each a fresh database upgraded by ``services.migrate``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from services.common.db import sessionmaker
from services.file.adapters.sql import SqlFileCatalog
from services.file.ports import FileCatalog
from tests.integration.test_sql_support import SQL_BACKENDS, clean_engine, contract_tests, migrated_database

globals().update(contract_tests("file", "test_file_catalog_contract"))


@pytest.fixture(scope="module", params=SQL_BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database(request.param, tmp_path_factory.mktemp("file")) as url:
        yield url


@pytest.fixture
async def catalog(database: str) -> AsyncIterator[FileCatalog]:
    async with clean_engine(database) as engine:
        yield SqlFileCatalog(sessionmaker(engine))
