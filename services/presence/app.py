"""Presence use cases: devices come and go, heartbeats keep them alive, subscribers hear of changes.

A user's online/offline transition (first device in, last device out or expired) is pushed as a
transient ``presence`` frame to the users subscribed to them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from services.common.errors import InvalidRequest
from services.common.push import Pusher
from services.presence import domain
from services.presence.domain import PresenceStatus
from services.presence.ports import PresenceStore

log = logging.getLogger("courier.presence")


class PresenceTracker:
    """Holds the store, the TTL and the clock; ``run`` is the expiry loop."""

    def __init__(
        self,
        store: PresenceStore,
        pusher: Pusher,
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._pusher = pusher
        self._ttl_s = ttl_s
        self._clock = clock
        self._sleep = sleep

    async def connected(self, user_id: str, device_id: str) -> None:
        await self._alive(user_id, device_id)

    async def heartbeat(self, user_id: str, device_id: str) -> None:
        # Same as connecting: a heartbeat after the device expired brings the user back online.
        await self._alive(user_id, device_id)

    async def heartbeat_many(self, devices: Sequence[tuple[str, str]]) -> None:
        await asyncio.gather(*(self._alive(user_id, device_id) for user_id, device_id in devices))

    async def disconnected(self, user_id: str, device_id: str) -> None:
        change = await self._store.remove_device(user_id, device_id, now=self._clock())
        if change is not None:
            await self._announce(change)

    async def status(self, user_ids: Sequence[str]) -> list[dict[str, Any]]:
        """``[{user_id, online, last_seen}]`` for 1 to 200 users, in the order asked."""
        found = await self._store.status(domain.check_user_ids(user_ids), now=self._clock())
        return [status.wire() for status in found]

    async def subscribe(self, subscriber_id: str, user_ids: Collection[str]) -> list[dict[str, Any]]:
        """Watch ``user_ids`` from now on; returns their current ``presence`` frames."""
        wanted = domain.check_user_ids(user_ids)
        if not await self._store.subscribe(subscriber_id, wanted, limit=domain.MAX_WATCHED_PER_SUBSCRIBER):
            raise InvalidRequest(f"at most {domain.MAX_WATCHED_PER_SUBSCRIBER} users can be watched at once")
        return [status.frame() for status in await self._store.status(wanted, now=self._clock())]

    async def unsubscribe_all(self, subscriber_id: str) -> None:
        await self._store.unsubscribe_all(subscriber_id)

    async def expire(self) -> None:
        """One sweep: devices past their TTL go, and users left without devices go offline."""
        for change in await self._store.sweep(self._clock()):
            await self._announce(change)

    async def run(self) -> None:
        """Sweep every quarter TTL until cancelled, so a silent device is offline within 1.25 TTL."""
        while True:
            try:
                await self.expire()
            except Exception:
                # The loop outlives a failed sweep (a store outage): the next one catches up.
                log.exception("presence expiry sweep failed")
            await self._sleep(self._ttl_s / 4)

    async def _alive(self, user_id: str, device_id: str) -> None:
        now = self._clock()
        change = await self._store.set_device(user_id, device_id, now=now, expires_at=now + self._ttl_s)
        if change is not None:
            await self._announce(change)

    async def _announce(self, status: PresenceStatus) -> None:
        subscribers = await self._store.subscribers(status.user_id)
        if subscribers:
            await self._pusher.push(subscribers, status.frame())
