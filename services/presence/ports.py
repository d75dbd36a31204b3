"""The presence store: per-device expiry, a user's device set, last seen, and subscriptions.

Shaped for Redis: per user a hash device -> expiry, an "announced online" flag and a last-seen
time; one sorted set of device deadlines for the sweep; watched -> subscribers and subscriber ->
watched sets. Every method is one atomic step (a Lua script there), so with several presence
processes each transition is reported by exactly one of them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from services.presence.domain import PresenceStatus


class PresenceStore(Protocol):
    async def set_device(self, user_id: str, device_id: str, *, now: float, expires_at: float) -> PresenceStatus | None:
        """The device is alive until ``expires_at``; the user was seen ``now``. Returns the user's new
        status when this brought them online, else None."""
        ...

    async def remove_device(self, user_id: str, device_id: str, *, now: float) -> PresenceStatus | None:
        """The device went away. Returns the user's new status when this took them offline, else None."""
        ...

    async def sweep(self, now: float) -> list[PresenceStatus]:
        """Drop devices whose expiry is at or before ``now``; the statuses of the users who went
        offline because of it."""
        ...

    async def status(self, user_ids: Sequence[str], *, now: float) -> list[PresenceStatus]:
        """Each user's status at ``now``, in the order asked; devices past expiry count as gone."""
        ...

    async def subscribe(self, subscriber_id: str, user_ids: Collection[str], *, limit: int) -> bool:
        """Add to what ``subscriber_id`` watches; False (and nothing changed) if that would exceed ``limit``."""
        ...

    async def subscribers(self, user_id: str) -> set[str]: ...

    async def unsubscribe_all(self, subscriber_id: str) -> None: ...
