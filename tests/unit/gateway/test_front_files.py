"""The gateway's front never runs out of open files: past its budget a connection is answered 503 at once, and
the room comes back when a splice ends. Real sockets on loopback, with a delivery node that echoes."""

from __future__ import annotations

import asyncio

from services.gateway.front import FileBudget
from tests.support import gateway
from tests.support.waiting import wait_for
from tests.unit.gateway.test_front_handover import SWITCHING, Node, finish, upgrade


async def test_past_its_budget_of_files_the_front_answers_503_and_takes_sockets_again_once_one_ends() -> None:
    node = Node("delivery-0")
    url = await node.start()
    front = gateway.front({"delivery-0": url})
    front.files = FileBudget(limit=4)  # two spliced WebSockets: the client's socket and the node's, each
    port = (await front.serve("127.0.0.1", 0)).sockets[0].getsockname()[1]
    try:
        first, second = await upgrade(port), await upgrade(port)
        assert first[2] == SWITCHING and second[2] == SWITCHING
        assert front.files.used == 4

        _, refused_writer, refused = await upgrade(port)
        assert refused.startswith(b"HTTP/1.1 503 ")
        refused_writer.close()
        assert node.upgrades == 2  # the refused one never reached the node

        # The spliced sockets still carry bytes.
        first[1].write(b"ping")
        assert await asyncio.wait_for(first[0].readexactly(4), 20) == b"ping"

        second[1].close()
        await wait_for(lambda: front.files.used == 2, "the ended splice to give its files back")
        _, third_writer, third = await upgrade(port)
        assert third == SWITCHING
        await finish(front, first[1], third_writer)
        assert front.files.used == 0
    finally:
        assert node.server is not None
        node.server.close()


async def test_a_connection_that_sends_nothing_holds_one_file_until_it_goes() -> None:
    front = gateway.front({})
    front.files = FileBudget(limit=1)
    port = (await front.serve("127.0.0.1", 0)).sockets[0].getsockname()[1]
    silent = await asyncio.open_connection("127.0.0.1", port)
    await wait_for(lambda: front.files.used == 1, "the silent connection to be accepted")

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = await asyncio.wait_for(reader.read(), 20)
    assert answer.startswith(b"HTTP/1.1 503 ") and b"connection limit" in answer
    writer.close()

    silent[1].close()
    await wait_for(lambda: front.files.used == 0, "the silent connection's file to come back")
    await front.drain(0)
