"""The route table contract (route_table_contract.py) over the in-memory adapter."""

from __future__ import annotations

import pytest

from services.delivery.routes import MemoryRouteTable, RouteTable
from tests.unit.delivery.route_table_contract import *  # noqa: F403 - the contract's tests, run over the fixture below


@pytest.fixture
def routes() -> RouteTable:
    return MemoryRouteTable()
