"""The contract of the message service's cache ports (Inbox, Timeline): test functions that a runner
module imports and feeds with its fixtures ``inbox``, ``timeline`` (keeping ``TIMELINE_KEEP`` events)
and ``lose_cache`` (loses every inbox entry, as FLUSHALL would).

Runners: test_cache_contract.py (memory) and tests/integration/test_redis_message.py (memory and Redis).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from services.common.ids import new_id
from services.message.ports import Inbox, InboxEntry, Timeline

# The timelines of this suite keep this many events, so trimming is cheap to reach.
TIMELINE_KEEP = 3
T0 = datetime(2026, 11, 26, 20, 24, 15, 123456, tzinfo=UTC)
LoseCache = Callable[[], Awaitable[None]]


def message(seq: int, text: str = "hi") -> dict[str, object]:
    return {"seq": seq, "content": {"type": "text", "text": text}, "created_at": "2026-11-26T20:24:15.123Z"}


# --- Inbox -----------------------------------------------------------------------------------------


async def test_bump_raises_every_member_and_marks_the_sender_read(inbox: Inbox) -> None:
    cid, alice, bob = new_id(), new_id(), new_id()

    await inbox.bump([alice, bob], cid, seq=1, last_message=message(1), at=T0, reader_id=alice)
    await inbox.bump([alice, bob], cid, seq=2, last_message=message(2), at=T0 + timedelta(seconds=1), reader_id=bob)

    entries = {user: (await inbox.entries(user, [cid]))[cid] for user in (alice, bob)}
    assert (entries[alice].max_seq, entries[alice].read_seq, entries[alice].unread) == (2, 1, 1)
    assert (entries[bob].max_seq, entries[bob].read_seq, entries[bob].unread) == (2, 2, 0)
    assert entries[alice].last_message == message(2)
    assert entries[alice].last_activity_at == T0 + timedelta(seconds=1)


async def test_concurrent_bumps_of_many_conversations_each_land(inbox: Inbox) -> None:
    alice, bob = new_id(), new_id()
    cids = [new_id() for _ in range(30)]

    await asyncio.gather(
        *(
            inbox.bump([alice, bob], cid, seq=n + 1, last_message=message(n + 1), at=T0, reader_id=alice)
            for n, cid in enumerate(cids)
        )
    )

    entries = await inbox.entries(bob, cids)
    assert [(entries[cid].max_seq, entries[cid].unread) for cid in cids] == [(n + 1, n + 1) for n in range(30)]
    assert {e.unread for e in (await inbox.entries(alice, cids)).values()} == {0}


async def test_late_bump_keeps_the_newer_last_message(inbox: Inbox) -> None:
    cid, alice, bob = new_id(), new_id(), new_id()
    await inbox.bump([alice, bob], cid, seq=5, last_message=message(5, "new"), at=T0, reader_id=alice)

    await inbox.bump(
        [alice, bob], cid, seq=3, last_message=message(3, "old"), at=T0 - timedelta(days=1), reader_id=alice
    )

    entry = (await inbox.entries(bob, [cid]))[cid]
    assert (entry.max_seq, entry.last_message, entry.last_activity_at) == (5, message(5, "new"), T0)
    assert (await inbox.entries(alice, [cid]))[cid].read_seq == 5


async def test_replayed_bump_changes_nothing(inbox: Inbox) -> None:
    cid, alice, bob = new_id(), new_id(), new_id()
    for _ in range(2):
        await inbox.bump([alice, bob], cid, seq=4, last_message=message(4), at=T0, reader_id=alice)

    entry = (await inbox.entries(bob, [cid]))[cid]
    assert (entry.max_seq, entry.read_seq, entry.last_message) == (4, 0, message(4))


async def test_bump_without_a_reader_leaves_everyone_unread(inbox: Inbox) -> None:
    cid, alice = new_id(), new_id()

    await inbox.bump([alice], cid, seq=3, last_message=message(3), at=T0, reader_id=None)

    assert (await inbox.entries(alice, [cid]))[cid].unread == 3


async def test_bump_reaches_members_beyond_one_batch(inbox: Inbox) -> None:
    cid = new_id()
    members = [new_id() for _ in range(1100)]

    await inbox.bump(members, cid, seq=1, last_message=message(1), at=T0, reader_id=members[-1])

    assert (await inbox.entries(members[0], [cid]))[cid].unread == 1
    assert (await inbox.entries(members[-1], [cid]))[cid].unread == 0


async def test_mark_read_moves_the_cursor_forward_only(inbox: Inbox) -> None:
    cid, bob = new_id(), new_id()
    await inbox.bump([bob], cid, seq=6, last_message=message(6), at=T0, reader_id=None)

    await inbox.mark_read(bob, cid, 4)
    await inbox.mark_read(bob, cid, 2)

    entry = (await inbox.entries(bob, [cid]))[cid]
    assert (entry.read_seq, entry.unread) == (4, 2)


async def test_mark_read_without_an_entry_creates_none(inbox: Inbox) -> None:
    cid, bob = new_id(), new_id()

    await inbox.mark_read(bob, cid, 4)

    assert await inbox.entries(bob, [cid]) == {}


async def test_entries_name_only_the_conversations_with_an_entry(inbox: Inbox) -> None:
    known, other, unknown, bob = new_id(), new_id(), new_id(), new_id()
    await inbox.bump([bob], known, seq=1, last_message=message(1), at=T0, reader_id=None)
    await inbox.bump([bob], other, seq=2, last_message=message(2), at=T0, reader_id=None)

    found = await inbox.entries(bob, [known, unknown])

    assert set(found) == {known}
    assert await inbox.entries(bob, []) == {}
    assert await inbox.entries(new_id(), [known]) == {}


async def test_put_fills_a_missing_entry_only(inbox: Inbox) -> None:
    seeded, bumped, bob = new_id(), new_id(), new_id()
    await inbox.bump([bob], bumped, seq=9, last_message=message(9), at=T0, reader_id=None)

    await inbox.put(bob, seeded, InboxEntry(max_seq=5, read_seq=2, last_message=message(5), last_activity_at=T0))
    await inbox.put(bob, bumped, InboxEntry(max_seq=3, read_seq=3, last_message=message(3), last_activity_at=T0))

    found = await inbox.entries(bob, [seeded, bumped])
    assert found[seeded] == InboxEntry(max_seq=5, read_seq=2, last_message=message(5), last_activity_at=T0)
    assert (found[bumped].max_seq, found[bumped].read_seq, found[bumped].unread) == (9, 0, 9)


async def test_put_of_an_empty_conversation_keeps_no_last_message(inbox: Inbox) -> None:
    cid, bob = new_id(), new_id()

    await inbox.put(bob, cid, InboxEntry(read_seq=0))

    assert (await inbox.entries(bob, [cid]))[cid] == InboxEntry()


async def test_entries_are_rebuilt_after_the_cache_is_lost(inbox: Inbox, lose_cache: LoseCache) -> None:
    cid, bob = new_id(), new_id()
    await inbox.bump([bob], cid, seq=2, last_message=message(2), at=T0, reader_id=None)

    await lose_cache()
    assert await inbox.entries(bob, [cid]) == {}
    await inbox.put(bob, cid, InboxEntry(max_seq=2, read_seq=1, last_message=message(2), last_activity_at=T0))

    assert (await inbox.entries(bob, [cid]))[cid].unread == 1


# --- Timeline --------------------------------------------------------------------------------------


async def test_head_is_the_newest_event_of_each_conversation(timeline: Timeline) -> None:
    a, b = new_id(), new_id()
    for seq in (1, 2, 3):
        await timeline.append(a, seq=seq, message=message(seq), at=T0 + timedelta(seconds=seq))
    await timeline.append(b, seq=7, message=message(7), at=T0)

    heads = await timeline.heads([a, b])

    assert (heads[a].max_seq, heads[a].last_message, heads[a].last_activity_at) == (
        3,
        message(3),
        T0 + timedelta(seconds=3),
    )
    assert heads[b].max_seq == 7


async def test_heads_leave_out_conversations_without_a_timeline(timeline: Timeline) -> None:
    cid = new_id()
    await timeline.append(cid, seq=1, message=message(1), at=T0)

    assert set(await timeline.heads([cid, new_id()])) == {cid}
    assert await timeline.heads([]) == {}


async def test_head_survives_trimming_past_the_kept_count(timeline: Timeline) -> None:
    cid = new_id()
    for seq in range(1, 3 * TIMELINE_KEEP + 1):
        await timeline.append(cid, seq=seq, message=message(seq), at=T0)

    assert (await timeline.heads([cid]))[cid].max_seq == 3 * TIMELINE_KEEP


async def test_appending_a_seq_again_replaces_its_event(timeline: Timeline) -> None:
    cid = new_id()
    await timeline.append(cid, seq=1, message=message(1, "first"), at=T0)

    await timeline.append(cid, seq=1, message=message(1, "again"), at=T0 + timedelta(seconds=1))

    head = (await timeline.heads([cid]))[cid]
    assert (head.max_seq, head.last_message, head.last_activity_at) == (
        1,
        message(1, "again"),
        T0 + timedelta(seconds=1),
    )
