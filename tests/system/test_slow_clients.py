"""A client that stops reading costs the server a bounded amount of memory, and learns why it was closed
once it reads again (``courier dev`` and the ``make up`` stack, real sockets)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

import httpx
import orjson
import pytest
import websockets

from tests.support.client import Api
from tests.support.server import RunningServer
from tests.system.conftest import ROOMY_LIMITS, dev_or_up
from tests.system.test_metrics_exported import metrics_urls

SOCKET_BYTES = 1 << 20
SLOW_ENV = {
    **ROOMY_LIMITS,
    "COURIER_DELIVERY__SEND_QUEUE_BYTES": str(SOCKET_BYTES),
    "COURIER_DELIVERY__SYNC_RESULT_MAX_BYTES": str(256 << 10),
    # Long enough that the queue bound, not the write timeout, is what closes the socket here.
    "COURIER_DELIVERY__WRITE_TIMEOUT_S": "120",
}
EMOJI_TEXT = "\U0001f600" * 4000


@pytest.fixture(scope="module", params=["dev", "up"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """This module's own server (its small queue bounds), under the name the shared ``api`` fixture uses."""
    with dev_or_up(request.param, tmp_path_factory, dev_env=SLOW_ENV, up_env=SLOW_ENV) as running:
        yield running


async def metric(server: RunningServer, name: str) -> float:
    """One sample, summed over every process of the server (0 where absent)."""
    value = 0.0
    async with httpx.AsyncClient(timeout=10) as http:
        for url in metrics_urls(server).values():
            for line in (await http.get(url)).text.splitlines():
                if line.startswith(name + " "):
                    value += float(line.rsplit(" ", 1)[1])
    return value


async def eventually(condition: Callable[[], Awaitable[bool]], what: str, deadline_s: float = 60.0) -> None:
    """``tests.support.waiting.wait_for`` for a condition that must be fetched."""
    until = asyncio.get_running_loop().time() + deadline_s
    while not await condition():
        if asyncio.get_running_loop().time() > until:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


SLOW_CLOSES = 'courier_ws_closes_total{reason="slow_client"}'
QUEUED = "courier_ws_send_queue_bytes"


async def test_client_that_stops_reading_large_sync_pages_is_closed_with_1013_and_costs_at_most_its_bound(
    server: RunningServer, api: Api
) -> None:
    alice, bob = await api.register("alice"), await api.register("bob")
    cid = await api.direct(alice, bob)
    for _ in range(100):
        assert (await api.send(alice, cid, EMOJI_TEXT)).status_code == 201
    slow_closes = await metric(server, SLOW_CLOSES)
    queued_seen: list[float] = []

    async def closed_for_being_slow() -> bool:
        queued_seen.append(await metric(server, QUEUED))
        return await metric(server, SLOW_CLOSES) > slow_closes

    # max_queue=1: the client library stops reading the socket once it holds one frame nobody took.
    ws = await websockets.connect(f"{server.ws_url}?access_token={bob.access_token}", max_size=8 << 20, max_queue=1)
    try:
        for i in range(100):  # 100 pages of 256 KiB: 25 MiB, far more than the TCP buffers take
            await ws.send(orjson.dumps({"type": "sync", "id": i, "cursors": {cid: 0}}).decode())
        await eventually(closed_for_being_slow, "the server to close the socket that stopped reading")
        assert max(queued_seen) <= SOCKET_BYTES

        answers = 0  # reading again: what was written before the close, then the close
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(60):
                async for raw in ws:
                    answers += orjson.loads(raw)["type"] == "sync_result"
    finally:
        ws.transport.abort()

    assert (ws.close_code, ws.close_reason) == (1013, "send queue overflow: client too slow, reconnect and sync")
    assert 0 < answers < 100  # what was still queued when it overflowed was dropped

    async def nothing_held() -> bool:
        return await metric(server, QUEUED) == 0

    await eventually(nothing_held, "the server to give back every byte it held for the socket")
