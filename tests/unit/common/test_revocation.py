"""The revocation contract (revocation_contract.py) over the in-process adapter, and the revoked set itself."""

from __future__ import annotations

import asyncio

import pytest

from services.common.revocation import MemoryRevocations
from services.common.tokens import RevokedSessions
from tests.unit.common.revocation_contract import *  # noqa: F403 - the contract's tests, run over the fixture below
from tests.unit.common.revocation_contract import TTL_S, EpochClock, RevocationWorld


@pytest.fixture
def world() -> RevocationWorld:
    clock = EpochClock()
    revoked = RevokedSessions(clock)
    return RevocationWorld(MemoryRevocations(revoked, ttl_s=TTL_S, clock=clock), revoked, clock)


async def test_changed_wakes_its_waiter_once_per_batch_of_new_revocations() -> None:
    clock = EpochClock()
    revoked = RevokedSessions(clock)
    waiter = asyncio.create_task(revoked.changed())
    await asyncio.sleep(0)
    assert not waiter.done()

    revoked.add("s1", clock.now + 60)
    revoked.add("s2", clock.now + 60)
    await asyncio.wait_for(waiter, 10)

    again = asyncio.create_task(revoked.changed())
    revoked.add("s1", clock.now + 60)  # already known: nothing new to sweep for
    await asyncio.sleep(0)
    assert not again.done()
    again.cancel()


def test_expired_revocations_are_forgotten_as_new_ones_arrive() -> None:
    clock = EpochClock()
    revoked = RevokedSessions(clock)
    for n in range(100):
        revoked.add(f"old-{n}", clock.now + 10)
    clock.now += 3600
    revoked.add("new", clock.now + 10)
    assert len(revoked) == 1
    assert "new" in revoked
