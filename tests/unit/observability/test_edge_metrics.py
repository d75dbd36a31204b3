"""The gateway's and the ring's metrics: rejections by limit, unreachable upstreams, ring version and hand-offs."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from starlette.requests import Request

from services.common.errors import RateLimited, Unavailable
from services.common.ids import new_id
from services.common.ring import Ring, RingSource
from services.common.settings import Bucket, LimitSettings, ServiceUrls
from services.delivery import handoff
from services.gateway.front import Front
from services.gateway.proxy import Proxy
from services.gateway.ratelimit import MemoryBucketStore, RateLimiter
from tests.support import gateway
from tests.support.waiting import wait_for


def value(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_a_refusal_is_counted_under_the_limit_that_refused() -> None:
    big = Bucket(rate=1000, burst=2000)
    limits = LimitSettings.model_validate({"global": big, "ip": Bucket(rate=1, burst=2), "user": big})
    limiter = RateLimiter(limits, MemoryBucketStore(), lambda: 100.0)
    for limit in ("global", "ip", "user"):
        assert REGISTRY.get_sample_value("courier_rate_limit_rejections_total", {"limit": limit}) is not None
    before = value("courier_rate_limit_rejections_total", {"limit": "ip"})
    ip = f"10.{new_id()}"
    await limiter.check(ip=ip, user_id=None)
    await limiter.check(ip=ip, user_id=None)
    with pytest.raises(RateLimited):
        await limiter.check(ip=ip, user_id=None)
    assert value("courier_rate_limit_rejections_total", {"limit": "ip"}) == before + 1


async def test_an_unreachable_service_is_counted_by_upstream() -> None:
    proxy = Proxy(ServiceUrls(identity=f"http://127.0.0.1:{gateway.closed_port()}"))
    before = value("courier_gateway_upstream_errors_total", {"upstream": "identity"})
    assert REGISTRY.get_sample_value("courier_gateway_upstream_errors_total", {"upstream": "file"}) is not None
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/users/u1",
        "query_string": b"",
        "headers": [],
        "client": ("10.0.0.1", 5000),
        "server": ("gateway", 80),
        "scheme": "http",
        "root_path": "",
    }
    try:
        with pytest.raises(Unavailable):
            await proxy.forward(Request(scope))
    finally:
        await proxy.close()
    assert value("courier_gateway_upstream_errors_total", {"upstream": "identity"}) == before + 1


@pytest.fixture
async def front() -> AsyncIterator[tuple[int, Front]]:
    """A front with an empty ring and an HTTP upstream nobody listens on."""
    splicer = gateway.front({})
    server = await splicer.serve("127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1]), splicer
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


async def test_the_front_counts_upstreams_it_cannot_reach(front: tuple[int, Front]) -> None:
    port, _ = front
    delivery = value("courier_gateway_upstream_errors_total", {"upstream": "delivery"})
    http = value("courier_gateway_upstream_errors_total", {"upstream": "gateway-http"})
    upgrade = b"GET /v1/ws HTTP/1.1\r\nhost: t\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    assert (await exchange(port, upgrade)).startswith(b"HTTP/1.1 503")
    assert (await exchange(port, b"GET /v1/users/u1 HTTP/1.1\r\nhost: t\r\n\r\n")).startswith(b"HTTP/1.1 503")
    assert value("courier_gateway_upstream_errors_total", {"upstream": "delivery"}) == delivery + 1
    assert value("courier_gateway_upstream_errors_total", {"upstream": "gateway-http"}) == http + 1
    assert value("courier_gateway_websocket_splices") == 0


def write_ring(path: Path, version: int, members: list[str], mtime: float) -> None:
    path.write_text(json.dumps({"version": version, "members": members, "url_template": "http://{member}"}))
    os.utime(path, (mtime, mtime))


def test_the_ring_in_force_sets_version_and_member_gauges(tmp_path: Path) -> None:
    file = tmp_path / "ring.json"
    write_ring(file, 3, ["delivery-0", "delivery-1"], 1_000_000)
    source = RingSource(nodes={}, file=str(file))
    assert (value("courier_ring_version"), value("courier_ring_members")) == (3, 2)
    write_ring(file, 4, ["delivery-0"], 1_000_100)
    assert source.reload()
    assert (value("courier_ring_version"), value("courier_ring_members")) == (4, 1)


class Conn:
    def __init__(self) -> None:
        self.offered: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    def offer(self, frame: dict[str, Any]) -> None:
        self.offered.append(frame)

    def close(self, code: int, reason: str, **_: Any) -> None:
        self.closed = (code, reason)


class Hub:
    def __init__(self, devices: dict[str, list[Conn]]) -> None:
        self._devices = devices

    def user_ids(self) -> list[str]:
        return list(self._devices)

    def devices(self, user_id: str) -> list[Conn]:
        return self._devices[user_id]


async def test_users_moved_by_a_ring_change_are_counted_as_handoffs() -> None:
    ring = Ring.of(["delivery-0", "delivery-1"])
    users = [new_id() for _ in range(20)]
    moved = [u for u in users if ring.node_for(u) != "delivery-0"]
    hub = Hub({u: [Conn()] for u in users})
    before = value("courier_ring_handoffs_total")
    assert await handoff.reconnect_lost_users(hub, ring, "delivery-0", jitter_ms=0, grace_s=0) == len(moved)
    await asyncio.gather(*list(handoff._background))
    assert value("courier_ring_handoffs_total") == before + len(moved)


async def test_a_spliced_websocket_is_counted_while_it_lasts() -> None:
    async def node(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
        await reader.read()  # holds the connection until the client goes
        writer.close()

    upstream = await asyncio.start_server(node, "127.0.0.1", 0)
    node_port = upstream.sockets[0].getsockname()[1]
    splicer = gateway.front({"delivery-0": f"http://127.0.0.1:{node_port}"})
    server = await splicer.serve("127.0.0.1", 0)
    before = value("courier_gateway_websocket_splices")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(b"GET /v1/ws HTTP/1.1\r\nhost: t\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
        await writer.drain()
        await wait_for(lambda: value("courier_gateway_websocket_splices") == before + 1, "the splice to open")
        writer.close()
        await writer.wait_closed()
        await wait_for(lambda: value("courier_gateway_websocket_splices") == before, "the splice to end")
    finally:
        server.close()
        await server.wait_closed()
        upstream.close()
        await upstream.wait_closed()
