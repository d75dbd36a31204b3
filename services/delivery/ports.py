"""What a delivery node needs from the other services."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from services.message.app import SendMessage, Sent, SyncedConversation


class Messages(Protocol):
    async def send_many(self, cmds: Sequence[SendMessage]) -> list[Sent | Exception]:
        """One socket's sends, one answer each in their order (an error is that send's answer); the sends
        to one conversation are committed in their order."""
        ...

    async def sync(
        self, user_id: str, cursors: Mapping[str, int], *, limit: int | None = None
    ) -> list[SyncedConversation]: ...

    async def mark_read(self, conversation_id: str, user_id: str, seq: int) -> int: ...


class Members(Protocol):
    async def members(self, conversation_id: str, user_id: str) -> Sequence[str]:
        """The members of a conversation ``user_id`` belongs to; ``NotFound`` otherwise."""
        ...


class PresenceTracker(Protocol):
    async def connected(self, user_id: str, device_id: str) -> None: ...

    async def heartbeat(self, user_id: str, device_id: str) -> None: ...

    async def heartbeat_many(self, devices: Sequence[tuple[str, str]]) -> None:
        """``heartbeat`` of every ``(user_id, device_id)``: a node's keep-alive round."""
        ...

    async def disconnected(self, user_id: str, device_id: str) -> None: ...

    async def subscribe(self, subscriber_id: str, user_ids: Collection[str]) -> list[dict[str, Any]]: ...

    async def unsubscribe_all(self, subscriber_id: str) -> None: ...


class FrameTokens(Protocol):
    async def check(self) -> None:
        """Raises ``RateLimited`` when this frame is over a limit."""
        ...


class FrameLimiter(Protocol):
    def frames(self, *, ip: str, user_id: str | None) -> FrameTokens:
        """The rate limits of one socket's frames, checked frame by frame in their order."""
        ...
