"""History pages, read cursors and unread counts, recall and edit tombstones, sync."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from services.common.errors import Forbidden, NotFound
from services.message import app
from services.message.ports import Record
from services.message.workers import MESSAGES_TOPIC
from tests.unit.message.conftest import World


async def _fill(world: World, cid: str, n: int, sender: str = "alice") -> None:
    for i in range(n):
        await world.send(cid, sender, f"m{i + 1}")


async def test_history_pages_forward_and_backward(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    await _fill(world, cid, 10)
    latest = await app.history(cid, "bob", after_seq=None, before_seq=None, limit=3, deps=world.deps)
    assert [m.seq for m in latest.messages] == [8, 9, 10] and latest.has_more
    older = await app.history(cid, "bob", after_seq=None, before_seq=8, limit=3, deps=world.deps)
    assert [m.seq for m in older.messages] == [5, 6, 7] and older.has_more
    newer = await app.history(cid, "bob", after_seq=7, before_seq=None, limit=5, deps=world.deps)
    assert [m.seq for m in newer.messages] == [8, 9, 10] and not newer.has_more


async def test_history_of_a_non_member_is_not_found(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    with pytest.raises(NotFound):
        await app.history(cid, "mallory", after_seq=None, before_seq=None, limit=None, deps=world.deps)


async def test_unread_count_is_max_seq_minus_read_seq(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    await _fill(world, cid, 5)
    conv = await world.conversations.get(cid)
    assert conv is not None
    bob = (await world.service.activity("bob", [conv]))[cid]
    assert (bob.max_seq, bob.read_seq, bob.unread_count) == (5, 0, 5)
    assert (await world.service.activity("alice", [conv]))[cid].unread_count == 0  # own messages are read
    await world.service.mark_read(cid, "bob", 3)
    assert (await world.service.activity("bob", [conv]))[cid].unread_count == 2


async def test_read_cursor_never_moves_back_nor_past_the_newest_seq(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    await _fill(world, cid, 4)
    assert await world.service.mark_read(cid, "bob", 99) == 4
    assert await world.service.mark_read(cid, "bob", 1) == 4


async def test_read_sends_a_receipt_to_the_members(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    await _fill(world, cid, 2)
    await world.service.mark_read(cid, "bob", 2)
    receipt = world.pusher.pushed[-1]
    assert receipt.frame == {"type": "read_receipt", "conversation_id": cid, "user_id": "bob", "seq": 2}
    assert "alice" in receipt.user_ids and not receipt.tracked


async def test_unread_counts_are_rebuilt_from_the_store_after_the_cache_is_lost(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    await _fill(world, cid, 6)
    await world.service.mark_read(cid, "bob", 2)
    world.service.inbox = type(world.service.inbox)()  # a restart: the in-process inbox is empty
    conv = await world.conversations.get(cid)
    assert conv is not None
    bob = (await world.service.activity("bob", [conv]))[cid]
    assert (bob.unread_count, bob.last_message and bob.last_message["seq"]) == (4, 6)


async def test_large_conversations_use_the_timeline_for_activity(world: World) -> None:
    cid = world.conversations.add("alice", "bob", "carol", large=True)
    await _fill(world, cid, 3)
    records = await world.store.claim_outbox(limit=10, lease_s=30)
    for record in records:
        await world.service.handle_record(Record(MESSAGES_TOPIC, cid, record.payload))
    assert await world.service.inbox.entries("bob", [cid]) == {}
    heads = await world.service.timeline.heads([cid])
    assert heads[cid].max_seq == 3
    conv = await world.conversations.get(cid)
    assert conv is not None
    assert (await world.service.activity("carol", [conv]))[cid].unread_count == 3


async def test_sender_recalls_within_the_window_with_a_tombstone_seq(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    await _fill(world, cid, 2)
    recalled = await app.recall(cid, 1, by="alice", device_id="d1", deps=world.deps)
    assert recalled.recalled and recalled.content == {"type": "recalled"}
    tombstone = await world.store.get(cid, 3)
    assert tombstone is not None and tombstone.content == {"type": "recall", "target_seq": 1}
    stored = await world.store.get(cid, 1)
    assert stored is not None and stored.recalled and "text" not in stored.content


async def test_recall_twice_is_idempotent(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    await _fill(world, cid, 1)
    await app.recall(cid, 1, by="alice", device_id="d1", deps=world.deps)
    await app.recall(cid, 1, by="alice", device_id="d1", deps=world.deps)
    assert await world.store.max_seq(cid) == 2


async def test_recall_after_the_window_is_forbidden_but_admins_may(world: World) -> None:
    cid = world.conversations.add("alice", "bob", admins=["bob"])
    await _fill(world, cid, 1)
    old = await world.store.get(cid, 1)
    assert old is not None
    aged = dataclasses.replace(old, created_at=old.created_at - timedelta(seconds=121))
    world.store._by_seq[cid][1] = aged
    with pytest.raises(Forbidden):
        await app.recall(cid, 1, by="alice", device_id="d1", deps=world.deps)
    assert (await app.recall(cid, 1, by="bob", device_id="d2", deps=world.deps)).recalled


async def test_others_cannot_recall_or_edit_someone_elses_message(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    await _fill(world, cid, 1)
    with pytest.raises(Forbidden):
        await app.recall(cid, 1, by="bob", device_id="d2", deps=world.deps)
    with pytest.raises(Forbidden):
        await app.edit(cid, 1, {"type": "text", "text": "mine now"}, by="bob", device_id="d2", deps=world.deps)


async def test_edit_replaces_text_and_stores_an_edit_event(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    await _fill(world, cid, 1)
    changed = await app.edit(cid, 1, {"type": "text", "text": "fixed"}, by="alice", device_id="d1", deps=world.deps)
    assert changed.edited and changed.content["text"] == "fixed"
    event = await world.store.get(cid, 2)
    assert event is not None and event.content["type"] == "edit" and event.content["target_seq"] == 1


async def test_sync_returns_what_follows_each_cursor_paginated(world: World) -> None:
    first = world.conversations.add("alice", "bob")
    second = world.conversations.add("alice", "carol")
    await _fill(world, first, 5)
    await _fill(world, second, 2)
    synced = await app.sync("alice", {first: 3}, limit=10, deps=world.deps)
    by_id = {s.conversation_id: s for s in synced}
    assert [m.seq for m in by_id[first].messages] == [4, 5]
    assert [m.seq for m in by_id[second].messages] == [1, 2]  # missing cursor: from 0
    page = await app.sync("bob", {}, limit=2, deps=world.deps)
    assert [m.seq for m in page[0].messages] == [1, 2] and page[0].has_more


async def test_fan_out_pushes_to_every_member_but_the_sending_device(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    sent = await world.send(cid, "alice", device="phone")
    await app.fan_out(
        sent.message,
        recipients=["alice", "bob"],
        large=False,
        inbox=world.service.inbox,
        timeline=world.service.timeline,
        pusher=world.pusher,
    )
    push = world.pusher.pushed[-1]
    assert sorted(push.user_ids) == ["alice", "bob"] and push.tracked
    assert push.skip_device == ("alice", "phone")
    assert push.frame["type"] == "message" and push.frame["seq"] == 1
