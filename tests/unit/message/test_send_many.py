"""Several sends handed over together (a socket's sends in flight): one answer each in their order, and
one device's sends to one conversation committed in their order whatever their checks wait for."""

from __future__ import annotations

import asyncio
from typing import Any

from services.common.errors import InvalidRequest, NotFound
from services.message import app
from tests.unit.message.conftest import World

DEADLINE_S = 30.0


def text(cid: str, sender: str, client_msg_id: str, device: str = "d1") -> app.SendMessage:
    return app.SendMessage(cid, sender, device, client_msg_id, {"type": "text", "text": client_msg_id})


def held_file(world: World, file_id: str) -> asyncio.Event:
    """``file_id`` is shared only once the returned event is set (a slow file service)."""
    world.files.files[file_id] = {"file_id": file_id, "name": "a.png", "size": 3, "content_type": "image/png"}
    release, attach = asyncio.Event(), world.files.attach

    async def held(attached: str, conversation_id: str, user_id: str) -> dict[str, Any]:
        if attached == file_id:
            await release.wait()
        return await attach(attached, conversation_id, user_id)

    world.files.attach = held  # type: ignore[method-assign]
    return release


async def test_a_devices_sends_to_a_conversation_commit_in_their_order_though_the_first_waits_longest(
    world: World,
) -> None:
    cid = world.conversations.add("alice", "bob")
    release = held_file(world, "f1")
    cmds = [
        app.SendMessage(cid, "alice", "d1", "a1", {"type": "file", "file_id": "f1"}),
        text(cid, "alice", "a2"),
        text(cid, "alice", "a3"),
        text(cid, "bob", "b1"),  # another device's send is not held back by alice's file
    ]
    sending = asyncio.create_task(world.service.send_many(cmds))
    async with asyncio.timeout(DEADLINE_S):
        while await world.store.max_seq(cid) < 1:
            await asyncio.sleep(0.001)
    assert [
        m.client_msg_id for m in (await world.store.page(cid, after_seq=0, before_seq=None, limit=10)).messages
    ] == ["b1"]

    release.set()
    async with asyncio.timeout(DEADLINE_S):
        answers = await sending

    assert all(isinstance(a, app.Sent) for a in answers)
    assert [(a.message.client_msg_id, a.message.seq) for a in answers if isinstance(a, app.Sent)] == [
        ("a1", 2),
        ("a2", 3),
        ("a3", 4),
        ("b1", 1),
    ]


async def test_each_send_gets_its_own_answer_and_a_failed_one_does_not_hold_back_the_rest(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    cmds = [
        text(cid, "alice", "a1"),
        app.SendMessage(cid, "alice", "d1", "a2", {"type": "text", "text": ""}),
        text("not-a-member", "alice", "a3"),
        text(cid, "alice", "a4"),
    ]
    answers = await world.service.send_many(cmds)

    assert isinstance(answers[1], InvalidRequest)
    assert isinstance(answers[2], NotFound)
    stored = [a.message for a in answers if isinstance(a, app.Sent)]
    assert [(m.client_msg_id, m.seq) for m in stored] == [("a1", 1), ("a4", 2)]


async def test_a_resend_among_them_answers_the_stored_message(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    first = await world.send(cid, "alice", client_msg_id="a1")
    answers = await world.service.send_many([text(cid, "alice", "a1"), text(cid, "alice", "a2")])

    assert [(a.message.seq, a.created) for a in answers if isinstance(a, app.Sent)] == [
        (first.message.seq, False),
        (2, True),
    ]
