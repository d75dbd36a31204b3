"""Closing the sockets of revoked sessions: a logged-out (or replaced, or revoked) device's WebSocket ends
within moments of the revocation, not when its access token would have expired."""

from __future__ import annotations

from services.common.tokens import RevokedSessions
from services.delivery.hub import Hub

CLOSE_REVOKED = 4003
REVOKED_REASON = "session revoked"


def close_revoked(hub: Hub, revoked: RevokedSessions) -> int:
    """Close every socket of this node whose session is revoked; returns how many."""
    closed = 0
    for conn in hub.connections():
        if conn.closing is None and conn.session_id in revoked:
            conn.close(CLOSE_REVOKED, REVOKED_REASON, cause="revoked")
            closed += 1
    return closed


async def close_revoked_forever(hub: Hub, revoked: RevokedSessions) -> None:
    """Sweep the node's sockets each time sessions are revoked (one scan per batch of revocations).

    A socket authenticated just before a revocation is attached in the same step (no await between
    the token check and ``Hub.attach``), so it is always there for the sweep that follows.
    """
    while True:
        await revoked.changed()
        close_revoked(hub, revoked)
