"""Sending: seq allocation, idempotency, membership and content rules."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import Conflict, InvalidRequest, NotFound, Unavailable
from services.message import app
from services.message.domain import Message, decode_event
from services.message.ports import Draft, SeqTaken
from tests.unit.message.conftest import World


async def test_seqs_start_at_one_and_increase_by_one_per_message(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    seqs = [(await world.send(cid, "alice")).message.seq for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]


async def test_concurrent_sends_get_distinct_gapless_seqs(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    sent = await asyncio.gather(*(world.send(cid, "alice" if i % 2 else "bob") for i in range(50)))
    assert sorted(s.message.seq for s in sent) == list(range(1, 51))


async def test_resend_with_same_client_msg_id_returns_original_seq(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    first = await world.send(cid, "alice", client_msg_id="c-1")
    await world.send(cid, "alice")
    again = await world.send(cid, "alice", "different text", client_msg_id="c-1")
    assert first.created and not again.created
    assert again.message.seq == first.message.seq == 1
    assert await world.store.max_seq(cid) == 2


async def test_a_resend_costs_no_seq_the_next_send_takes_the_next_one(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    await world.send(cid, "alice", client_msg_id="c-1")
    for _ in range(3):
        assert (await world.send(cid, "alice", client_msg_id="c-1")).message.seq == 1
    assert (await world.send(cid, "bob")).message.seq == 2


async def test_same_client_msg_id_from_another_sender_is_a_new_message(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    await world.send(cid, "alice", client_msg_id="shared")
    other = await world.send(cid, "bob", client_msg_id="shared")
    assert other.created and other.message.seq == 2


async def test_client_msg_id_reused_in_another_conversation_is_a_conflict(world: World) -> None:
    first = world.conversations.add("alice", "bob")
    second = world.conversations.add("alice", "carol")
    await world.send(first, "alice", client_msg_id="x")
    with pytest.raises(Conflict):
        await world.send(second, "alice", client_msg_id="x")


async def test_non_member_cannot_send_and_learns_nothing(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    with pytest.raises(NotFound):
        await world.send(cid, "mallory")
    with pytest.raises(NotFound):
        await world.send("no-such-conversation", "alice")


async def test_failed_commit_leaves_no_gap_in_seqs(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    await world.send(cid, "alice")
    world.store.fail_next_append = RuntimeError("database went away")
    with pytest.raises(RuntimeError):
        await world.send(cid, "alice")
    assert (await world.send(cid, "alice")).message.seq == 2


async def test_a_seq_taken_every_time_answers_unavailable_and_stores_nothing(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    real_append = world.store.append

    async def always_taken(draft: Draft) -> Message:
        raise SeqTaken("the store asked again and lost the race every time")

    world.store.append = always_taken  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        await world.send(cid, "alice")
    world.store.append = real_append  # type: ignore[method-assign]
    assert await world.store.max_seq(cid) == 0


@pytest.mark.parametrize(
    "content",
    [
        {"type": "text", "text": ""},
        {"type": "text", "text": "   "},
        {"type": "text", "text": "x" * 101},
        {"type": "sticker", "id": "s"},
        {"type": "recall", "target_seq": 1},
        {"type": "call", "call_id": "c", "state": "exploded"},
        {"no": "type"},
    ],
)
async def test_invalid_content_is_rejected_with_invalid_request(world: World, content: dict[str, object]) -> None:
    cid = world.conversations.add("alice", "bob")
    with pytest.raises(InvalidRequest):
        await world.service.send(app.SendMessage(cid, "alice", "d1", "m1", content))
    assert await world.store.max_seq(cid) == 0


async def test_file_message_carries_the_file_metadata_and_records_the_share(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    world.files.files["f1"] = {"file_id": "f1", "name": "a.png", "size": 3, "content_type": "image/png"}
    sent = await world.service.send(app.SendMessage(cid, "alice", "d1", "m1", {"type": "file", "file_id": "f1"}))
    assert sent.message.content == {
        "type": "file",
        "file_id": "f1",
        "name": "a.png",
        "size": 3,
        "content_type": "image/png",
    }
    assert world.files.attached == [("f1", cid, "alice")]


async def test_file_message_with_unknown_file_is_rejected(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    with pytest.raises(NotFound):
        await world.service.send(app.SendMessage(cid, "alice", "d1", "m1", {"type": "file", "file_id": "nope"}))


async def test_send_writes_an_outbox_row_in_the_same_transaction(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    await world.send(cid, "alice")
    rows = await world.store.claim_outbox(limit=10, lease_s=30)
    assert [r.conversation_id for r in rows] == [cid]
    assert decode_event(rows[0].payload)[0].seq == 1


async def test_an_event_of_a_small_conversation_carries_its_recipients_and_of_a_large_one_not(world: World) -> None:
    small = world.conversations.add("alice", "bob", "carol")
    large = world.conversations.add("alice", "bob", large=True)
    await world.send(small, "alice")
    await world.send(large, "alice")
    rows = await world.store.claim_outbox(limit=10, lease_s=30)
    recipients = {row.conversation_id: decode_event(row.payload)[1] for row in rows}
    assert recipients == {small: ["alice", "bob", "carol"], large: None}
