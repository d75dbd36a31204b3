"""The WebSocket protocol every uvicorn server of Courier runs: uvicorn's Sans-I/O one, its close bounded in time.

uvicorn's ``websockets-sansio`` spends about 30% less CPU per frame than its legacy ``websockets``
protocol (docs/performance.md 10), but it never gives up closing a socket whose client stopped reading:
the close frame waits for the transport to take writes again, and once written the transport closes
gracefully, which waits for the client to read what is buffered. Such a client would hold its socket
for as long as it stays connected. The legacy protocol dropped it after its close timeout; so does this.
"""

from __future__ import annotations

import asyncio
import contextlib

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class BoundedCloseProtocol(WebSocketsSansIOProtocol):
    """A close waits at most ``close_timeout`` for a client that reads nothing, then drops the connection.

    Frames other than the close are as in uvicorn: the application bounds their writes itself."""

    async def send(self, message: ASGISendEvent) -> None:
        closing = message["type"] == "websocket.close"
        if closing and not self.writable.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.close_timeout):
                    await self.writable.wait()
            if not self.writable.is_set():
                self.transport.abort()  # the send below then finds the client gone
        await super().send(message)
        if closing and self.close_timer is not None:
            # The close frame is written: the client's answer ends the connection, or the timer drops it
            # (uvicorn's own timer closes gracefully, which waits for the client to read).
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)
