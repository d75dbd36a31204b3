"""A socket's sends in flight together: ``send`` frames are read while the sends before them are committed,
handed over together and answered in the order received; frames with answers wait for them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from services.common.errors import NotFound
from services.delivery import session as session_module
from services.delivery.hub import Close, Connection, Hub
from services.message.app import SendMessage, Sent
from services.message.domain import Message as Stored
from tests.unit.delivery.test_pending_contract import message
from tests.unit.delivery.test_pending_hub import Unused, connect, session

DEADLINE_S = 30.0


class HeldMessages(Unused):
    """The message service, each hand-over held until the test lets it go: seqs in the order committed,
    conversation ``gone`` not found."""

    def __init__(self) -> None:
        self.handed: list[list[str]] = []  # the client_msg_ids of each hand-over
        self.release = asyncio.Event()
        self._seqs: dict[str, int] = {}

    async def send_many(self, cmds: Sequence[SendMessage]) -> list[Sent | Exception]:
        self.handed.append([cmd.client_msg_id for cmd in cmds])
        await self.release.wait()
        self.release.clear()
        answers: list[Sent | Exception] = []
        for cmd in cmds:
            if cmd.conversation_id == "gone":
                answers.append(NotFound("no such conversation"))
                continue
            seq = self._seqs[cmd.conversation_id] = self._seqs.get(cmd.conversation_id, 0) + 1
            at = datetime(2026, 12, 5, tzinfo=UTC)
            stored = Stored(f"m{seq}", cmd.conversation_id, seq, cmd.sender_id, "phone", cmd.client_msg_id, {}, at)
            answers.append(Sent(stored, True))
        return answers


def send(client_msg_id: str, conversation_id: str = "c1", *, text: str | None = None) -> bytes:
    content = {"type": "text", "text": client_msg_id if text is None else text}
    frame = {"type": "send", "id": client_msg_id, "conversation_id": conversation_id, "client_msg_id": client_msg_id}
    return orjson.dumps({**frame, "content": content})


async def answers(conn: Connection, count: int) -> list[dict[str, Any]]:
    frames = []
    async with asyncio.timeout(DEADLINE_S):
        while len(frames) < count:
            item = await conn.next_outgoing()
            assert not isinstance(item, Close), item
            frames.append(orjson.loads(item))
    return frames


async def turns(count: int = 20) -> None:
    """Let every task that can run do so, a few times over (nothing here waits on I/O)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def until(condition: Any) -> None:
    async with asyncio.timeout(DEADLINE_S):
        while not condition():
            await asyncio.sleep(0.001)


async def test_sends_read_while_one_is_committed_go_together_and_are_answered_in_order() -> None:
    hub, messages = Hub(), HeldMessages()
    conn = connect(hub, "alice", "phone")
    socket = session(hub, conn, messages=messages)

    await socket.on_text(send("a"))
    await until(lambda: messages.handed == [["a"]])
    for client_msg_id in ("b", "c", "d"):
        await socket.on_text(send(client_msg_id))  # read while "a" is out: each returns at once

    assert messages.handed == [["a"]]
    messages.release.set()
    await until(lambda: len(messages.handed) == 2)
    assert messages.handed == [["a"], ["b", "c", "d"]]
    messages.release.set()
    await socket.settled()

    acks = await answers(conn, 4)
    assert [(f["type"], f["ref"], f["seq"]) for f in acks] == [
        ("send_ack", "a", 1),
        ("send_ack", "b", 2),
        ("send_ack", "c", 3),
        ("send_ack", "d", 4),
    ]


async def test_a_failed_send_is_answered_in_its_place_and_the_ones_behind_it_go_on() -> None:
    hub, messages = Hub(), HeldMessages()
    conn = connect(hub, "alice", "phone")
    socket = session(hub, conn, messages=messages)

    await socket.on_text(send("a"))
    await until(lambda: messages.handed == [["a"]])
    await socket.on_text(send("b", "gone"))
    await socket.on_text(send("c"))
    messages.release.set()
    await until(lambda: len(messages.handed) == 2)
    messages.release.set()
    await socket.settled()

    frames = await answers(conn, 3)
    assert [(f["type"], f["ref"]) for f in frames] == [("send_ack", "a"), ("error", "b"), ("send_ack", "c")]
    assert frames[1]["code"] == "not_found"
    assert [f.get("seq") for f in frames] == [1, None, 2]


async def test_a_ping_after_sends_is_answered_after_them_and_an_ack_is_handled_at_once() -> None:
    hub, messages = Hub(), HeldMessages()
    conn = connect(hub, "alice", "phone")
    socket = session(hub, conn, messages=messages)
    await hub.push(["alice"], message("c9", 1), tracked=True)
    [pushed] = await answers(conn, 1)
    assert pushed["seq"] == 1

    await socket.on_text(send("a"))
    await until(lambda: messages.handed == [["a"]])
    # The ack needs nothing of the send: handled while the send is out.
    await socket.on_text(orjson.dumps({"type": "ack", "conversation_id": "c9", "seq": 1}))
    assert len(conn.window) == 0
    # The ping has an answer: it waits for the send's.
    ping = asyncio.create_task(socket.on_text(orjson.dumps({"type": "ping", "id": "p"})))
    await turns()
    assert not ping.done()
    messages.release.set()
    async with asyncio.timeout(DEADLINE_S):
        await ping

    frames = await answers(conn, 2)
    assert [(f["type"], f["ref"]) for f in frames] == [("send_ack", "a"), ("pong", "p")]


async def test_a_socket_is_read_no_further_once_its_sends_ahead_are_full() -> None:
    hub, messages = Hub(), HeldMessages()
    conn = connect(hub, "alice", "phone", queue_size=4 * session_module.SENDS_AHEAD)
    socket = session(hub, conn, messages=messages)

    await socket.on_text(send("first"))
    await until(lambda: messages.handed == [["first"]])
    for n in range(session_module.SENDS_AHEAD - 1):
        await socket.on_text(send(f"m{n}"))
    last = asyncio.create_task(socket.on_text(send("one-too-many")))
    await turns()
    assert not last.done()  # the reader waits: no more frames are read

    messages.release.set()
    await until(lambda: len(messages.handed) == 2)
    assert len(messages.handed[1]) == session_module.SENDS_AHEAD
    messages.release.set()
    async with asyncio.timeout(DEADLINE_S):
        await last
    await socket.settled()
    frames = await answers(conn, session_module.SENDS_AHEAD + 1)
    assert [f["seq"] for f in frames] == list(range(1, session_module.SENDS_AHEAD + 2))


async def test_a_socket_is_read_no_further_once_its_unsent_sends_are_large() -> None:
    hub, messages = Hub(), HeldMessages()
    conn = connect(hub, "alice", "phone")
    socket = session(hub, conn, messages=messages)
    large = "x" * (session_module.SENDS_AHEAD_BYTES // 4)

    await socket.on_text(send("first"))
    await until(lambda: messages.handed == [["first"]])
    for n in range(3):
        await socket.on_text(send(str(n), text=large))
    fourth = asyncio.create_task(socket.on_text(send("3", text=large)))  # past the bytes: the reader waits
    await turns()
    assert not fourth.done()

    messages.release.set()
    await until(lambda: len(messages.handed) == 2)
    assert len(messages.handed[1]) == 4
    messages.release.set()
    async with asyncio.timeout(DEADLINE_S):
        await fourth
    await socket.settled()
    assert [f["seq"] for f in await answers(conn, 5)] == [1, 2, 3, 4, 5]
