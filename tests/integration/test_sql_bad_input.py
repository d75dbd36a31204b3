"""The bad-input tests of ``tests/unit/common/test_bad_input.py`` on ``courier dev`` over MariaDB and
PostgreSQL: a lone surrogate, a seq beyond BIGINT or a bool seq is refused before any real database
adapter sees it, and the connection stays usable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.settings import Settings
from tests.integration.test_sql_support import SERVER_BACKENDS, clean_engine, migrated_database
from tests.unit.common import test_bad_input
from tests.unit.common.test_bad_input import dev, dev_settings_for, socket  # noqa: F401 - fixtures of the tests

globals().update({name: value for name, value in vars(test_bad_input).items() if name.startswith("test_")})


@pytest.fixture(scope="module", params=SERVER_BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database(request.param, tmp_path_factory.mktemp("bad-input")) as url:
        yield url


@pytest.fixture
async def dev_settings(database: str, tmp_path: Path) -> Settings:
    async with clean_engine(database):  # every test registers the same users
        pass
    return dev_settings_for(tmp_path, database_url=database)
