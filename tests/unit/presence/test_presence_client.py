"""A delivery node's heartbeats over presence's real internal routes (uvicorn on loopback), and
the keep-alive round over them: a burst of heartbeats costs a few requests, and every open socket's
device is kept online."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from presence_support import FakeClock, RecordingPusher, uid

from services.delivery.hub import Connection, Hub
from services.delivery.protocol import AckWindow
from services.delivery.session import keep_presence_alive
from services.presence.adapters.memory import MemoryPresenceStore
from services.presence.app import PresenceTracker
from services.presence.internal import PresenceClient, internal_router
from tests.support.loopback import GUARD, internal_service


@contextlib.asynccontextmanager
async def served() -> AsyncIterator[tuple[PresenceClient, PresenceTracker, list[str]]]:
    tracker = PresenceTracker(MemoryPresenceStore(), RecordingPusher(), ttl_s=30, clock=FakeClock())
    async with internal_service(internal_router(tracker, GUARD)) as internal:
        yield PresenceClient(internal.client), tracker, internal.paths


async def test_a_burst_of_heartbeats_shares_requests_and_brings_every_device_online() -> None:
    async with served() as (client, tracker, paths):
        users = [uid(f"u{n}") for n in range(300)]
        await asyncio.wait_for(asyncio.gather(*(client.heartbeat(user, "phone") for user in users)), 30)
        statuses = await tracker.status(users[:200])
        assert all(status["online"] for status in statuses)
        assert set(paths) == {"/internal/presence/heartbeat/batch"}
        assert len(paths) < 10


async def test_the_keep_alive_round_heartbeats_every_open_socket() -> None:
    async with served() as (client, tracker, paths):
        hub = Hub()
        users = [uid(f"u{n}") for n in range(1200)]
        for user in users:
            hub.attach(Connection(user, "d", queue_size=8, window=AckWindow(timeout_s=30, max_redeliveries=2)))
        gone = hub.devices(users[0])[0]
        gone.close(1000, "bye")

        async def online() -> list[bool]:
            pages = [await tracker.status(users[start : start + 200]) for start in range(0, 1200, 200)]
            return [status["online"] for page in pages for status in page]

        loop = asyncio.create_task(keep_presence_alive(hub, client, every_s=0.01))
        try:
            async with asyncio.timeout(30):
                while not all((await online())[1:]):
                    await asyncio.sleep(0.05)
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        assert (await online())[0] is False  # its socket was closing
        assert set(paths) == {"/internal/presence/heartbeat/batch"}
