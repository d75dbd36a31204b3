"""The revocation contract: a session revoked through any ``SessionRevocations`` adapter is refused by
the verifiers of every process until its access tokens would have expired, and by no one after.

Runners: test_revocation.py (memory) and tests/integration/test_redis_revocation.py (memory and Redis).
The fixture ``world`` is a ``RevocationWorld``: the adapter identity writes through, and the revoked set
of another process (the same set when there is one process).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from services.common.errors import Unauthorized
from services.common.ids import new_id
from services.common.settings import JwtSettings
from services.common.tokens import AccessTokens, Principal, RevokedSessions
from services.identity.ports import SessionRevocations
from tests.support.waiting import wait_for

TTL_S = 960.0
KEYS = JwtSettings(keys={"k1": "revocation-contract-secret-0123456789abcdef"}, active_kid="k1")


class EpochClock:
    """Wall-clock seconds that a test moves forward."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class RevocationWorld:
    revocations: SessionRevocations
    elsewhere: RevokedSessions
    clock: EpochClock


async def test_a_revoked_sessions_token_is_refused_in_another_process_within_seconds(world: RevocationWorld) -> None:
    verifier = AccessTokens(KEYS, revoked=world.elsewhere)
    revoked, kept = new_id(), new_id()
    token = verifier.issue(Principal("u1", "phone"), session_id=revoked)
    other = verifier.issue(Principal("u1", "laptop"), session_id=kept)

    await world.revocations.revoke(revoked)

    await wait_for(lambda: revoked in world.elsewhere, "the revocation to reach the other process")
    with pytest.raises(Unauthorized, match="revoked"):
        verifier.verify(token)
    assert verifier.verify(other).session_id == kept


async def test_a_revocation_ends_once_the_sessions_tokens_have_expired(world: RevocationWorld) -> None:
    session_id = new_id()
    await world.revocations.revoke(session_id)
    await wait_for(lambda: session_id in world.elsewhere, "the revocation to reach the other process")

    world.clock.now += TTL_S - 1
    assert session_id in world.elsewhere
    world.clock.now += 2
    assert session_id not in world.elsewhere


async def test_revocations_of_many_sessions_all_arrive(world: RevocationWorld) -> None:
    sessions = [new_id() for _ in range(1200)]  # more than one read of a follower
    for session_id in sessions:
        await world.revocations.revoke(session_id)

    await wait_for(lambda: all(s in world.elsewhere for s in sessions), "every revocation to arrive")
