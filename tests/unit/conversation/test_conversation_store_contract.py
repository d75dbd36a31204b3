"""The ConversationStore contract, run against every adapter (memory, SQL on an SQLite file)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from conversation_support import T0, group, uid

from services.common.errors import Forbidden, NotFound
from services.common.ids import new_id
from services.conversation import domain
from services.conversation.domain import Conversation, Role
from services.conversation.ports import ConversationStore

OWNER, ADMIN, MEMBER = Role.OWNER, Role.ADMIN, Role.MEMBER


def direct(a: str, b: str) -> Conversation:
    return domain.open_direct(new_id(), a, b, now=T0, large_group_threshold=500)


async def test_created_conversation_reads_back_equal(store: ConversationStore) -> None:
    a, b, c = uid("a"), uid("b"), uid("c")
    conversation = group((a, OWNER), (b, ADMIN), (c, MEMBER))

    stored, created = await store.create(conversation)

    assert created is True
    assert stored == conversation
    loaded = await store.get(conversation.conversation_id)
    assert loaded == conversation
    assert loaded is not None
    assert list(loaded.members) == [a, b, c]
    assert loaded.created_at.utcoffset() is not None


async def test_unknown_conversation_reads_as_none(store: ConversationStore) -> None:
    assert await store.get(new_id()) is None


async def test_second_direct_for_the_same_pair_returns_the_first(store: ConversationStore) -> None:
    a, b = uid("a"), uid("b")
    first, _ = await store.create(direct(a, b))

    again, created = await store.create(direct(b, a))

    assert created is False
    assert again == first
    assert await store.conversation_ids(a) == [first.conversation_id]


async def test_concurrent_directs_for_one_pair_make_one_conversation(store: ConversationStore) -> None:
    a, b = uid("a"), uid("b")

    results = await asyncio.gather(*(store.create(direct(a, b)) for _ in range(6)))

    assert sum(created for _, created in results) == 1
    assert len({conversation.conversation_id for conversation, _ in results}) == 1
    assert len(await store.conversation_ids(b)) == 1


async def test_directs_of_different_pairs_are_different(store: ConversationStore) -> None:
    a, b, c = uid("a"), uid("b"), uid("c")

    (ab, _), (ac, _) = await store.create(direct(a, b)), await store.create(direct(a, c))

    assert ab.conversation_id != ac.conversation_id
    assert sorted(await store.conversation_ids(a)) == sorted([ab.conversation_id, ac.conversation_id])


async def test_list_for_user_returns_only_their_conversations(store: ConversationStore) -> None:
    a, b, c = uid("a"), uid("b"), uid("c")
    mine = group((a, OWNER), (b, MEMBER))
    also_mine = group((b, OWNER), (a, ADMIN))
    not_mine = group((b, OWNER), (c, MEMBER))
    for conversation in (mine, also_mine, not_mine):
        await store.create(conversation)

    listed = await store.list_for_user(a)

    assert sorted(listed, key=lambda x: x.conversation_id) == sorted([mine, also_mine], key=lambda x: x.conversation_id)
    assert sorted(await store.conversation_ids(a)) == sorted([mine.conversation_id, also_mine.conversation_id])
    assert await store.list_for_user(uid("nobody")) == []


async def test_update_stores_the_changed_conversation(store: ConversationStore) -> None:
    a, b, c = uid("a"), uid("b"), uid("c")
    conversation = group((a, OWNER), (b, MEMBER))
    await store.create(conversation)

    before, after = await store.update(
        conversation.conversation_id, lambda x: domain.add_members(x, a, [c], large_group_threshold=2)
    )

    assert before == conversation
    assert list(after.members.items()) == [(a, OWNER), (b, MEMBER), (c, MEMBER)]
    assert after.large is True
    assert await store.get(conversation.conversation_id) == after
    assert await store.conversation_ids(c) == [conversation.conversation_id]


async def test_update_keeps_seniority_across_removals_role_changes_and_rejoins(store: ConversationStore) -> None:
    o, m1, m2, m3 = uid("o"), uid("m1"), uid("m2"), uid("m3")
    conversation = group((o, OWNER), (m1, MEMBER), (m2, MEMBER), (m3, MEMBER))
    cid = conversation.conversation_id
    await store.create(conversation)

    await store.update(cid, lambda x: domain.remove_member(x, o, m1, large_group_threshold=500))
    await store.update(cid, lambda x: domain.change_role(x, o, m3, ADMIN))
    await store.update(cid, lambda x: domain.add_members(x, o, [m1], large_group_threshold=500))
    _, after = await store.update(cid, lambda x: domain.remove_member(x, o, o, large_group_threshold=500))

    loaded = await store.get(cid)
    assert loaded == after
    assert list(after.members.items()) == [(m2, MEMBER), (m3, OWNER), (m1, MEMBER)]
    assert await store.conversation_ids(o) == []


async def test_update_whose_change_raises_writes_nothing(store: ConversationStore) -> None:
    a, b = uid("a"), uid("b")
    conversation = group((a, OWNER), (b, MEMBER))
    await store.create(conversation)

    with pytest.raises(Forbidden):
        await store.update(
            conversation.conversation_id, lambda x: domain.add_members(x, b, [uid("c")], large_group_threshold=500)
        )

    assert await store.get(conversation.conversation_id) == conversation


async def test_update_of_unknown_conversation_is_not_found(store: ConversationStore) -> None:
    with pytest.raises(NotFound):
        await store.update(new_id(), lambda x: x)


async def test_concurrent_additions_are_all_kept(store: ConversationStore) -> None:
    owner = uid("o")
    conversation = group((owner, OWNER))
    await store.create(conversation)
    newcomers = [uid(f"n{i}") for i in range(8)]

    await asyncio.gather(
        *(
            store.update(
                conversation.conversation_id,
                lambda x, n=n: domain.add_members(x, owner, [n], large_group_threshold=500),  # type: ignore[misc]
            )
            for n in newcomers
        )
    )

    loaded = await store.get(conversation.conversation_id)
    assert loaded is not None
    assert set(loaded.members) == {owner, *newcomers}


async def test_last_member_leaving_keeps_the_conversation(store: ConversationStore) -> None:
    o = uid("o")
    conversation = group((o, OWNER))
    await store.create(conversation)

    await store.update(conversation.conversation_id, lambda x: domain.remove_member(x, o, o, large_group_threshold=500))

    loaded = await store.get(conversation.conversation_id)
    assert loaded == replace(conversation, members={})
