"""The presence store in process memory: the embedded mode and unit tests."""

from __future__ import annotations

import heapq
from collections.abc import Collection, Sequence

from services.presence.domain import PresenceStatus


class MemoryPresenceStore:
    def __init__(self) -> None:
        self._devices: dict[str, dict[str, float]] = {}  # user -> device -> expires_at
        self._announced: set[str] = set()  # users last reported online
        self._last_seen: dict[str, float] = {}
        # (expires_at, user, device); an entry whose device has since moved its expiry is stale and skipped.
        self._deadlines: list[tuple[float, str, str]] = []
        self._watchers: dict[str, set[str]] = {}  # watched user -> subscribers
        self._watching: dict[str, set[str]] = {}  # subscriber -> watched users

    # No method awaits between reading and writing, so each one is atomic on the event loop.

    async def set_device(self, user_id: str, device_id: str, *, now: float, expires_at: float) -> PresenceStatus | None:
        devices = self._devices.setdefault(user_id, {})
        devices[device_id] = expires_at
        heapq.heappush(self._deadlines, (expires_at, user_id, device_id))
        self._last_seen[user_id] = now
        return self._settle(user_id, now)

    async def remove_device(self, user_id: str, device_id: str, *, now: float) -> PresenceStatus | None:
        expires_at = self._devices.get(user_id, {}).pop(device_id, None)
        if expires_at is not None and expires_at > now:
            # A device that had already expired was last seen at its last heartbeat, not now.
            self._last_seen[user_id] = now
        return self._settle(user_id, now)

    async def sweep(self, now: float) -> list[PresenceStatus]:
        touched: dict[str, None] = {}
        while self._deadlines and self._deadlines[0][0] <= now:
            expires_at, user_id, device_id = heapq.heappop(self._deadlines)
            devices = self._devices.get(user_id, {})
            if devices.get(device_id) == expires_at:
                del devices[device_id]
                touched[user_id] = None
        return [change for user_id in touched if (change := self._settle(user_id, now)) is not None]

    async def status(self, user_ids: Sequence[str], *, now: float) -> list[PresenceStatus]:
        return [
            PresenceStatus(
                user_id=user_id,
                online=any(expires_at > now for expires_at in self._devices.get(user_id, {}).values()),
                last_seen=self._last_seen.get(user_id),
            )
            for user_id in user_ids
        ]

    async def subscribe(self, subscriber_id: str, user_ids: Collection[str], *, limit: int) -> bool:
        watching = self._watching.get(subscriber_id, set())
        if len(watching | set(user_ids)) > limit:
            return False
        self._watching[subscriber_id] = watching | set(user_ids)
        for user_id in user_ids:
            self._watchers.setdefault(user_id, set()).add(subscriber_id)
        return True

    async def subscribers(self, user_id: str) -> set[str]:
        return set(self._watchers.get(user_id, ()))

    async def unsubscribe_all(self, subscriber_id: str) -> None:
        for user_id in self._watching.pop(subscriber_id, ()):
            watchers = self._watchers.get(user_id)
            if watchers is not None:
                watchers.discard(subscriber_id)
                if not watchers:
                    del self._watchers[user_id]

    def _settle(self, user_id: str, now: float) -> PresenceStatus | None:
        """Drop the user's expired devices and report a change from what was last announced."""
        devices = {d: t for d, t in self._devices.get(user_id, {}).items() if t > now}
        if devices:
            self._devices[user_id] = devices
        else:
            self._devices.pop(user_id, None)
        online = bool(devices)
        if online == (user_id in self._announced):
            return None
        if online:
            self._announced.add(user_id)
        else:
            self._announced.discard(user_id)
        return PresenceStatus(user_id=user_id, online=online, last_seen=self._last_seen.get(user_id))
