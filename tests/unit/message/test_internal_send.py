"""Sends from delivery nodes over message's internal route (uvicorn on loopback): a burst shares
requests, each send gets its own answer or its own error, and idempotency holds across batches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.common.errors import InvalidRequest, NotFound
from services.common.internal import InternalClient
from services.message import app
from services.message.internal import MessagesClient, internal_router
from tests.support.loopback import GUARD, TOKEN, internal_service
from tests.unit.message.conftest import World


@pytest.fixture
async def served(world: World) -> AsyncIterator[tuple[MessagesClient, list[str]]]:
    """The message service's internal routes on loopback, a client of them, and the paths it asked."""
    async with internal_service(internal_router(world.service, GUARD)) as served:
        yield MessagesClient(served.client), served.paths


async def send_one(client: MessagesClient, cmd: app.SendMessage) -> app.Sent:
    """A socket's one send, as its delivery node hands it over; its error raised."""
    [outcome] = await client.send_many([cmd])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _text(cid: str, sender: str, client_msg_id: str, text: str = "hi") -> app.SendMessage:
    return app.SendMessage(cid, sender, "d1", client_msg_id, {"type": "text", "text": text})


async def test_a_burst_of_sends_shares_requests_and_every_seq_is_answered(
    world: World, served: tuple[MessagesClient, list[str]]
) -> None:
    client, paths = served
    cids = [world.conversations.add("alice", f"friend{i}") for i in range(60)]
    sent = await asyncio.wait_for(
        asyncio.gather(*(send_one(client, _text(cid, "alice", f"m-{i}")) for i, cid in enumerate(cids))), 30
    )
    assert [s.message.conversation_id for s in sent] == cids
    assert all(s.created and s.message.seq == 1 for s in sent)
    assert set(paths) == {"/internal/messages/send/batch"}
    assert len(paths) < 10


async def test_each_send_of_a_batch_gets_its_own_error(world: World, served: tuple[MessagesClient, list[str]]) -> None:
    client, _ = served
    ours = world.conversations.add("alice", "bob")
    theirs = world.conversations.add("carol", "dave")
    outcomes = await asyncio.gather(
        send_one(client, _text(ours, "alice", "a")),
        send_one(client, _text(theirs, "alice", "b")),
        send_one(client, _text(ours, "alice", "c", text="")),
        send_one(client, _text(ours, "bob", "d")),
        return_exceptions=True,
    )
    first, not_member, empty, fourth = outcomes
    assert isinstance(first, app.Sent) and isinstance(fourth, app.Sent)
    assert {first.message.seq, fourth.message.seq} == {1, 2}
    assert isinstance(not_member, NotFound)
    assert isinstance(empty, InvalidRequest)
    assert await world.store.max_seq(theirs) == 0


async def test_a_resend_in_a_later_batch_returns_the_original(
    world: World, served: tuple[MessagesClient, list[str]]
) -> None:
    client, _ = served
    cid = world.conversations.add("alice", "bob")
    first = await send_one(client, _text(cid, "alice", "same"))
    again = await send_one(client, _text(cid, "alice", "same", text="changed"))
    assert first.created and not again.created
    assert again.message.seq == first.message.seq == 1
    assert again.message.content == first.message.content


async def test_the_single_send_route_of_the_previous_release_still_answers(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    body = {"conversation_id": cid, "sender_id": "alice", "sender_device_id": "d1", "client_msg_id": "old"}
    async with internal_service(internal_router(world.service, GUARD)) as served:
        answer = await served.client.call(
            "POST", "/internal/messages/send", {**body, "content": {"type": "text", "text": "hi"}}
        )
    assert answer["created"] is True and answer["message"]["seq"] == 1


def test_a_client_cannot_batch_more_sends_than_the_call_takes() -> None:
    with pytest.raises(ValueError, match="at most 500"):
        MessagesClient(InternalClient("http://127.0.0.1:9", TOKEN), max_batch=501)
