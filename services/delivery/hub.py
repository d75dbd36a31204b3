"""The sockets of one delivery node: who is connected, and pushing frames to them.

Each connection has one outgoing queue drained by one writer task, so a slow client never blocks a
broadcast; a client whose queue overflows is disconnected and will catch up with ``sync``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from services.delivery.protocol import AckWindow, encode

log = logging.getLogger("courier.delivery.hub")

CLOSE_REPLACED = 4009
CLOSE_TOO_SLOW = 1013


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


class Connection:
    """The outgoing side of one device's socket."""

    def __init__(self, user_id: str, device_id: str, *, queue_size: int, window: AckWindow) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.window = window
        self._limit = queue_size
        self._queue: asyncio.Queue[str | Close] = asyncio.Queue()
        self.closing: Close | None = None

    def offer(self, frame: Mapping[str, Any]) -> bool:
        """Queue a frame; False (and the connection closes) when the client is too slow."""
        if self.closing is not None:
            return False
        if self._queue.qsize() >= self._limit:
            self.close(CLOSE_TOO_SLOW, "send queue overflow: client too slow, reconnect and sync")
            return False
        self._queue.put_nowait(encode(frame))
        return True

    def close(self, code: int, reason: str) -> None:
        """Drop what is queued and close after nothing else (idempotent)."""
        if self.closing is not None:
            return
        self.closing = Close(code, reason)
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(self.closing)

    async def next_outgoing(self) -> str | Close:
        return await self._queue.get()

    @property
    def queued(self) -> int:
        return self._queue.qsize()


class Hub:
    """Local connections by user and device; implements the ``Pusher`` port for this node."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._users: dict[str, dict[str, Connection]] = {}
        self._clock = clock
        self.pushed = 0
        self.retransmitted = 0

    def attach(self, conn: Connection) -> None:
        """Register a new socket; the same device's previous socket is closed with 4009."""
        devices = self._users.setdefault(conn.user_id, {})
        previous = devices.get(conn.device_id)
        devices[conn.device_id] = conn
        if previous is not None:
            previous.close(CLOSE_REPLACED, "replaced by a newer connection of the same device")

    def detach(self, conn: Connection) -> bool:
        """Forget a socket that ended; False when a newer one of the device replaced it already."""
        devices = self._users.get(conn.user_id, {})
        if devices.get(conn.device_id) is not conn:
            return False
        del devices[conn.device_id]
        if not devices:
            del self._users[conn.user_id]
        return True

    def devices(self, user_id: str) -> list[Connection]:
        return list(self._users.get(user_id, {}).values())

    def connections(self) -> Iterator[Connection]:
        for devices in list(self._users.values()):
            yield from list(devices.values())

    @property
    def connection_count(self) -> int:
        return sum(len(devices) for devices in self._users.values())

    def user_ids(self) -> list[str]:
        return list(self._users)

    async def push(
        self,
        user_ids: Collection[str],
        frame: Mapping[str, Any],
        *,
        tracked: bool = False,
        skip_device: tuple[str, str] | None = None,
    ) -> None:
        now = self._clock()
        for user_id in user_ids:
            for conn in self.devices(user_id):
                if skip_device == (user_id, conn.device_id):
                    continue
                if tracked and not conn.window.push(frame, now):
                    continue
                if conn.offer(frame):
                    self.pushed += 1

    def retransmit_due(self) -> int:
        now = self._clock()
        count = 0
        for conn in self.connections():
            for frame in conn.window.due(now):
                if not conn.offer(frame):
                    break
                count += 1
        self.retransmitted += count
        return count

    async def run_retransmits(self, tick_s: float) -> None:
        while True:
            await asyncio.sleep(tick_s)
            try:
                self.retransmit_due()
            except Exception:  # keep the loop alive; one bad frame must not stop retransmission
                log.exception("retransmit sweep failed")

    def close_all(self, code: int, reason: str) -> None:
        for conn in self.connections():
            conn.close(code, reason)
