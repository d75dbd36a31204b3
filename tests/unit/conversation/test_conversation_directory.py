"""The cached directory: hot membership reads hit the store once, writes and time refresh them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from conversation_support import group, uid

from services.common.errors import Forbidden
from services.conversation import domain
from services.conversation.adapters.memory import MemoryConversationStore
from services.conversation.directory import ConversationDirectory
from services.conversation.domain import Conversation, Role


class CountingStore(MemoryConversationStore):
    """The memory store, counting reads by id; ``gate`` (when set) holds reads until released."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0
        self.gate: asyncio.Event | None = None

    async def get(self, conversation_id: str) -> Conversation | None:
        self.gets += 1
        found = await super().get(conversation_id)
        if self.gate is not None:
            await self.gate.wait()
        return found


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def setup(*, ttl_s: float = 5.0, max_entries: int = 100) -> tuple[CountingStore, ConversationDirectory, FakeClock]:
    store, clock = CountingStore(), FakeClock()
    return store, ConversationDirectory(store, ttl_s=ttl_s, max_entries=max_entries, clock=clock), clock


def add(actor: str, user_id: str) -> Callable[[Conversation], Conversation]:
    return lambda x: domain.add_members(x, actor, [user_id], large_group_threshold=500)


async def test_repeated_membership_checks_read_the_store_once() -> None:
    store, directory, _ = setup()
    a, b = uid("a"), uid("b")
    conversation = group((a, Role.OWNER), (b, Role.MEMBER))
    await directory.create(conversation)

    results = [await directory.is_member(conversation.conversation_id, user) for user in (a, b, uid("eve"), a)]

    assert results == [True, True, False, True]
    assert store.gets == 1


async def test_unknown_conversation_has_no_members_and_is_not_cached() -> None:
    store, directory, _ = setup()

    assert await directory.is_member("missing", uid("a")) is False
    assert await directory.get("missing") is None
    assert store.gets == 2


async def test_own_write_is_visible_to_the_next_read() -> None:
    _, directory, _ = setup()
    a, b = uid("a"), uid("b")
    conversation = group((a, Role.OWNER))
    await directory.create(conversation)
    assert await directory.is_member(conversation.conversation_id, b) is False

    await directory.update(conversation.conversation_id, add(a, b))

    assert await directory.is_member(conversation.conversation_id, b) is True


async def test_writes_by_others_are_seen_once_the_entry_expires() -> None:
    store, directory, clock = setup(ttl_s=5.0)
    a, b = uid("a"), uid("b")
    conversation = group((a, Role.OWNER))
    await store.create(conversation)
    assert await directory.is_member(conversation.conversation_id, b) is False

    await store.update(conversation.conversation_id, add(a, b))  # another process, behind our back
    clock.now += 4.9
    stale = await directory.is_member(conversation.conversation_id, b)
    clock.now += 0.2
    fresh = await directory.is_member(conversation.conversation_id, b)

    assert (stale, fresh) == (False, True)


async def test_cache_keeps_only_the_most_recently_used_entries() -> None:
    store, directory, _ = setup(max_entries=2)
    a = uid("a")
    first, second, third = group((a, Role.OWNER)), group((a, Role.OWNER)), group((a, Role.OWNER))
    for conversation in (first, second, third):
        await store.create(conversation)

    for conversation in (first, second, first, third):
        await directory.get(conversation.conversation_id)
    reads_before = store.gets
    await directory.get(first.conversation_id)
    await directory.get(third.conversation_id)
    hits_cost = store.gets - reads_before
    await directory.get(second.conversation_id)

    assert hits_cost == 0
    assert store.gets - reads_before == 1


async def test_read_in_flight_across_a_write_does_not_cache_the_old_state() -> None:
    store, directory, _ = setup()
    a, b = uid("a"), uid("b")
    conversation = group((a, Role.OWNER))
    await store.create(conversation)
    store.gate = asyncio.Event()
    slow_read = asyncio.create_task(directory.get(conversation.conversation_id))
    await asyncio.sleep(0)  # let the read take its snapshot and block on the gate

    await directory.update(conversation.conversation_id, add(a, b))
    store.gate.set()
    old = await slow_read
    store.gate = None

    assert old is not None
    assert not old.is_member(b)
    assert await directory.is_member(conversation.conversation_id, b) is True


async def test_failed_write_still_drops_the_cached_entry() -> None:
    store, directory, _ = setup()
    a, b = uid("a"), uid("b")
    conversation = group((a, Role.OWNER), (b, Role.MEMBER))
    await directory.create(conversation)
    await directory.get(conversation.conversation_id)
    reads = store.gets

    with pytest.raises(Forbidden):
        await directory.update(conversation.conversation_id, add(b, uid("c")))
    await directory.get(conversation.conversation_id)

    assert store.gets == reads + 1


async def test_conversation_ids_come_from_the_store() -> None:
    _, directory, _ = setup()
    a = uid("a")
    conversation = group((a, Role.OWNER))
    await directory.create(conversation)

    assert await directory.conversation_ids(a) == [conversation.conversation_id]
