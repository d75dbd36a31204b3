"""A delivery node closes the sockets of revoked sessions with 4003, and only those."""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import REGISTRY

from services.common.tokens import RevokedSessions
from services.delivery.hub import Close, Connection, Hub
from services.delivery.protocol import AckWindow
from services.delivery.revocation import CLOSE_REVOKED, close_revoked_forever
from tests.support.waiting import wait_for


def _conn(user: str, device: str, session_id: str) -> Connection:
    window = AckWindow(timeout_s=5, max_redeliveries=2)
    return Connection(user, device, session_id=session_id, queue_size=16, window=window)


def _closes() -> float:
    return REGISTRY.get_sample_value("courier_ws_closes_total", {"reason": "revoked"}) or 0.0


async def test_revoking_a_session_closes_its_socket_with_4003_and_leaves_the_others_open() -> None:
    hub, revoked = Hub(), RevokedSessions()
    phone, laptop, bob = (
        _conn("alice", "phone", "s-phone"),
        _conn("alice", "laptop", "s-laptop"),
        _conn("bob", "d", "s-bob"),
    )
    for conn in (phone, laptop, bob):
        hub.attach(conn)
    before = _closes()
    sweeper = asyncio.create_task(close_revoked_forever(hub, revoked))
    try:
        revoked.add("s-phone", time.time() + 960)
        await wait_for(lambda: phone.closing is not None, "the revoked socket to close")
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper

    assert await phone.next_item() == Close(CLOSE_REVOKED, "session revoked")
    assert (laptop.closing, bob.closing) == (None, None)
    assert _closes() == before + 1
