"""The gateway's front when delivery nodes come and go: an upgrade a draining (or vanished) node refuses goes to the
node the ring without it names, and a gateway that stops closes its spliced sockets one by one, not all at once.
Real sockets on loopback: the front, and small delivery nodes that answer as the real ones do."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from services.gateway.front import Front
from tests.support import gateway
from tests.support.waiting import wait_for

UPGRADE = b"GET /v1/ws HTTP/1.1\r\nhost: t\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
DRAINING = b"HTTP/1.1 503 Service Unavailable\r\nx-courier-draining: %s\r\ncontent-length: 0\r\n\r\n"


@dataclass
class Node:
    """A delivery node on loopback: takes upgrades (then echoes bytes), or refuses them while draining."""

    name: str
    draining: bool = False
    upgrades: int = 0
    server: asyncio.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.upgrades += 1
        if self.draining:
            writer.write(DRAINING % self.name.encode())
            await writer.drain()
            writer.close()
            return
        writer.write(SWITCHING)
        self.writers.append(writer)
        while data := await reader.read(4096):
            writer.write(data)
        writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def nodes() -> AsyncIterator[dict[str, Node]]:
    made = {name: Node(name) for name in ("delivery-0", "delivery-1", "delivery-2")}
    yield made
    for node in made.values():
        if node.server is not None:
            node.server.close()


async def front_for(nodes: dict[str, Node], urls: dict[str, str]) -> tuple[Front, int]:
    splicer = gateway.front(urls)
    server = await splicer.serve("127.0.0.1", 0)
    return splicer, server.sockets[0].getsockname()[1]


async def upgrade(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(UPGRADE)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    return reader, writer, head


async def finish(front: Front, *writers: asyncio.StreamWriter) -> None:
    """Close the clients and wait until the front's splices are over (no task outlives the test)."""
    for writer in writers:
        writer.close()
    await wait_for(lambda: front.open_websockets == 0, "the splices to end")
    await front.drain(0)  # closes its listening socket


async def test_an_upgrade_a_draining_node_refuses_goes_to_the_next_node_on_the_ring(nodes: dict[str, Node]) -> None:
    urls = {name: await node.start() for name, node in nodes.items()}
    front, port = await front_for(nodes, urls)
    # Unauthenticated upgrades are placed by the client's address: find the node that owns 127.0.0.1.
    owner = front._ring.ring.node_for("127.0.0.1")
    nodes[owner].draining = True
    fallback = front._ring.ring.node_for("127.0.0.1", avoid={owner})
    reader, writer, head = await upgrade(port)
    assert head == SWITCHING, head
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 20) == b"ping"
    assert (nodes[owner].upgrades, nodes[fallback].upgrades) == (1, 1)
    # The draining node is not asked again for a while: the next socket goes straight to the fallback.
    _, second, head = await upgrade(port)
    assert head == SWITCHING
    assert (nodes[owner].upgrades, nodes[fallback].upgrades) == (1, 2)
    await finish(front, writer, second)


async def test_an_upgrade_for_a_node_that_is_gone_goes_to_the_next_node_on_the_ring(nodes: dict[str, Node]) -> None:
    urls = {name: await node.start() for name, node in nodes.items()}
    probe, _ = await front_for(nodes, urls)
    owner = probe._ring.ring.node_for("127.0.0.1")
    await finish(probe)
    urls[owner] = f"http://127.0.0.1:{gateway.closed_port()}"  # its pod is gone: nothing listens there
    front, port = await front_for(nodes, urls)
    _, writer, head = await upgrade(port)
    assert head == SWITCHING
    assert nodes[front._ring.ring.node_for("127.0.0.1", avoid={owner})].upgrades == 1
    await finish(front, writer)


async def test_a_refusal_that_is_not_draining_reaches_the_client_unchanged(nodes: dict[str, Node]) -> None:
    async def forbidding(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(forbidding, "127.0.0.1", 0)
    front, port = await front_for(nodes, {"delivery-0": f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"})
    _, writer, head = await upgrade(port)
    assert head.startswith(b"HTTP/1.1 403 "), head
    await finish(front, writer)
    server.close()


async def test_a_stopping_gateway_closes_its_sockets_spread_over_the_window(nodes: dict[str, Node]) -> None:
    urls = {name: await node.start() for name, node in nodes.items()}
    front, port = await front_for(nodes, urls)
    clients = [await upgrade(port) for _ in range(12)]
    loop = asyncio.get_running_loop()
    ended: list[float] = []

    async def until_closed(reader: asyncio.StreamReader) -> None:
        await reader.read()  # EOF: the gateway closed this client's connection
        ended.append(loop.time())

    watchers = [asyncio.create_task(until_closed(reader)) for reader, _, _ in clients]
    started = loop.time()
    assert await front.drain(1.0, rng=random.Random(3)) == 12
    await asyncio.wait_for(asyncio.gather(*watchers), 20)
    assert max(ended) - min(ended) > 0.3, "closed one by one over the window, not at one instant"
    assert min(ended) >= started
    with pytest.raises(OSError):  # no new connection is taken once draining
        await asyncio.open_connection("127.0.0.1", port)
    await finish(front, *(writer for _, writer, _ in clients))
