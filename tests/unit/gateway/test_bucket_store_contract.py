"""The BucketStore contract (bucket_store_contract.py) over the in-process store."""

from __future__ import annotations

import pytest

from services.gateway.ratelimit import BucketStore, MemoryBucketStore
from tests.unit.gateway.bucket_store_contract import *  # noqa: F403 - the contract's tests, run over the fixture below


@pytest.fixture
def store() -> BucketStore:
    return MemoryBucketStore()
