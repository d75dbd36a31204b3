"""Graceful shutdown of a `courier run` process: SIGTERM starts a drain, and the server stops once it is done.

Kubernetes sends SIGTERM when a pod is deleted, at the moment it starts taking the pod out of its Services'
endpoints; until every node has seen that, new connections still arrive. uvicorn alone would stop accepting at once
and close every WebSocket at once (1012), so each replaced pod would refuse requests for a moment and send all of its
clients back at the same instant. ``DrainingServer`` runs the process's drain first (keep serving for the lag, then
move the sockets away over a window: ``Hub.drain``, ``Front.drain``) and only then lets uvicorn shut down. A second
signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn

log = logging.getLogger("courier.shutdown")

Drain = Callable[[], Awaitable[None]]


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with ``drain`` awaited between the first SIGTERM/SIGINT and the shutdown."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self._drain = drain
        self._draining: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining is not None or self.should_exit:
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            super().handle_exit(sig, frame)
            return
        self._draining = loop.create_task(self._drain_then_exit(), name="drain")

    async def _drain_then_exit(self) -> None:
        log.info("draining before shutdown")
        try:
            await self._drain()
        except Exception:  # a failed drain must still let the process stop
            log.exception("drain failed; shutting down")
        finally:
            self.should_exit = True


async def lag(seconds: float) -> None:
    """Keep serving while the pod's endpoints are withdrawn (each node's proxy learns it on its own schedule)."""
    if seconds > 0:
        log.info("serving %.1f s more while endpoints forget this process", seconds)
        await asyncio.sleep(seconds)
