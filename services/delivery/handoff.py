"""A ring change: the devices of users this node no longer owns move to their new owner."""

from __future__ import annotations

import asyncio
import random

from services.common.metrics import RING_HANDOFFS
from services.common.ring import Ring
from services.delivery.hub import Hub

_background: set[asyncio.Task[None]] = set()


async def reconnect_lost_users(
    hub: Hub, ring: Ring, node_name: str, *, jitter_ms: int = 5000, grace_s: float = 30.0
) -> int:
    """Ask the devices of users this node no longer owns to reconnect (through the gateway, to the new
    owner) after a jittered delay, so a ring change causes no reconnect storm; close what remains."""
    moved = [u for u in hub.user_ids() if ring.members and ring.node_for(u) != node_name]
    conns = [c for u in moved for c in hub.devices(u)]
    RING_HANDOFFS.inc(len(moved))
    for conn in conns:
        conn.offer({"type": "reconnect", "after_ms": random.randint(0, jitter_ms)})

    async def close_later() -> None:
        await asyncio.sleep(grace_s + jitter_ms / 1000)
        for conn in conns:
            conn.close(1012, "moved to another delivery node", cause="reconnect")

    if conns:
        task = asyncio.create_task(close_later())
        _background.add(task)
        task.add_done_callback(_background.discard)
    return len(moved)
