"""The use cases on the memory store: what they store, what they push, and in which order they refuse."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conversation_support import T0, FakeActivity, FakeUsers, RecordingPusher, uid

from services.common.errors import Forbidden, InvalidRequest, NotFound
from services.conversation import app
from services.conversation.adapters.memory import MemoryConversationStore
from services.conversation.domain import Activity, Conversation, Role

THRESHOLD = 500


@pytest.fixture
def memory() -> MemoryConversationStore:
    return MemoryConversationStore()


async def make_group(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher, owner: str, *members: str
) -> Conversation:
    users.add(owner, *members)
    conversation = await app.create_group(
        app.CreateGroup(creator_id=owner, title="team", member_ids=members),
        store=memory,
        users=users,
        pusher=pusher,
        large_group_threshold=THRESHOLD,
    )
    pusher.pushes.clear()
    return conversation


async def test_first_direct_is_created_and_announced_to_both(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher
) -> None:
    a, b = uid("a"), uid("b")
    users.add(a, b)

    conversation, created = await app.create_direct(
        app.CreateDirect(creator_id=a, peer_id=b), store=memory, users=users, pusher=pusher, large_group_threshold=2
    )

    assert created is True
    assert set(conversation.members) == {a, b}
    assert [(p.user_ids, p.frame) for p in pusher.pushes] == [
        (
            frozenset({a, b}),
            {"type": "member_added", "conversation_id": conversation.conversation_id, "user_id": b, "by": a},
        )
    ]
    assert all(p.tracked is False for p in pusher.pushes)


async def test_direct_again_from_either_side_returns_the_same_without_pushing(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher
) -> None:
    a, b = uid("a"), uid("b")
    users.add(a, b)
    first, _ = await app.create_direct(
        app.CreateDirect(creator_id=a, peer_id=b), store=memory, users=users, pusher=pusher, large_group_threshold=2
    )
    pusher.pushes.clear()

    again, created = await app.create_direct(
        app.CreateDirect(creator_id=b, peer_id=a), store=memory, users=users, pusher=pusher, large_group_threshold=2
    )

    assert (again.conversation_id, created) == (first.conversation_id, False)
    assert pusher.pushes == []


async def test_direct_with_unknown_peer_is_invalid(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher
) -> None:
    a, ghost = uid("a"), uid("ghost")
    users.add(a)

    with pytest.raises(InvalidRequest, match=ghost):
        await app.create_direct(
            app.CreateDirect(creator_id=a, peer_id=ghost),
            store=memory,
            users=users,
            pusher=pusher,
            large_group_threshold=2,
        )
    assert await memory.conversation_ids(a) == []


async def test_group_creation_announces_each_added_user_to_every_member(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher
) -> None:
    o, b, c = uid("o"), uid("b"), uid("c")
    users.add(o, b, c)

    conversation = await app.create_group(
        app.CreateGroup(creator_id=o, title="team", member_ids=(b, c, b)),
        store=memory,
        users=users,
        pusher=pusher,
        large_group_threshold=THRESHOLD,
    )

    assert list(conversation.members.items()) == [(o, Role.OWNER), (b, Role.MEMBER), (c, Role.MEMBER)]
    assert [(p.user_ids, p.frame["type"], p.frame["user_id"], p.frame["by"]) for p in pusher.pushes] == [
        (frozenset({o, b, c}), "member_added", b, o),
        (frozenset({o, b, c}), "member_added", c, o),
    ]
    assert await memory.get(conversation.conversation_id) == conversation


async def test_group_with_unknown_members_names_them_and_stores_nothing(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher
) -> None:
    o, b, ghost1, ghost2 = uid("o"), uid("b"), uid("ghost1"), uid("ghost2")
    users.add(o, b)

    with pytest.raises(InvalidRequest) as raised:
        await app.create_group(
            app.CreateGroup(creator_id=o, title="team", member_ids=(b, ghost1, ghost2)),
            store=memory,
            users=users,
            pusher=pusher,
            large_group_threshold=THRESHOLD,
        )

    assert ghost1 in raised.value.message
    assert ghost2 in raised.value.message
    assert b not in raised.value.message
    assert await memory.conversation_ids(o) == []
    assert pusher.pushes == []


async def test_adding_pushes_only_for_new_members_to_everyone_including_them(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher
) -> None:
    o, b, c = uid("o"), uid("b"), uid("c")
    conversation = await make_group(memory, users, pusher, o, b)
    users.add(c)

    after = await app.add_members(
        app.AddMembers(actor_id=o, conversation_id=conversation.conversation_id, user_ids=(b, c)),
        store=memory,
        users=users,
        pusher=pusher,
        large_group_threshold=THRESHOLD,
    )

    assert list(after.members) == [o, b, c]
    assert [(p.user_ids, p.frame) for p in pusher.pushes] == [
        (
            frozenset({o, b, c}),
            {"type": "member_added", "conversation_id": conversation.conversation_id, "user_id": c, "by": o},
        )
    ]


async def test_stranger_adding_gets_not_found_before_any_user_lookup(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher
) -> None:
    o, eve = uid("o"), uid("eve")
    conversation = await make_group(memory, users, pusher, o)
    users.calls.clear()

    with pytest.raises(NotFound):
        await app.add_members(
            app.AddMembers(actor_id=eve, conversation_id=conversation.conversation_id, user_ids=(uid("ghost"),)),
            store=memory,
            users=users,
            pusher=pusher,
            large_group_threshold=THRESHOLD,
        )
    assert users.calls == []


async def test_plain_member_adding_is_forbidden_even_for_unknown_users(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher
) -> None:
    o, b = uid("o"), uid("b")
    conversation = await make_group(memory, users, pusher, o, b)

    with pytest.raises(Forbidden):
        await app.add_members(
            app.AddMembers(actor_id=b, conversation_id=conversation.conversation_id, user_ids=(uid("ghost"),)),
            store=memory,
            users=users,
            pusher=pusher,
            large_group_threshold=THRESHOLD,
        )


async def test_adding_unknown_users_is_invalid_and_changes_nothing(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher
) -> None:
    o, c, ghost = uid("o"), uid("c"), uid("ghost")
    conversation = await make_group(memory, users, pusher, o)
    users.add(c)

    with pytest.raises(InvalidRequest, match=ghost):
        await app.add_members(
            app.AddMembers(actor_id=o, conversation_id=conversation.conversation_id, user_ids=(c, ghost)),
            store=memory,
            users=users,
            pusher=pusher,
            large_group_threshold=THRESHOLD,
        )
    assert await memory.get(conversation.conversation_id) == conversation


async def test_adding_past_the_threshold_marks_the_group_large(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher
) -> None:
    o, b, c = uid("o"), uid("b"), uid("c")
    users.add(o, b, c)
    conversation = await app.create_group(
        app.CreateGroup(creator_id=o, title="team", member_ids=(b,)),
        store=memory,
        users=users,
        pusher=pusher,
        large_group_threshold=2,
    )

    after = await app.add_members(
        app.AddMembers(actor_id=o, conversation_id=conversation.conversation_id, user_ids=(c,)),
        store=memory,
        users=users,
        pusher=pusher,
        large_group_threshold=2,
    )

    assert (conversation.large, after.large) == (False, True)


async def test_removal_is_pushed_to_the_remaining_members_and_the_removed_one(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher
) -> None:
    o, b, c = uid("o"), uid("b"), uid("c")
    conversation = await make_group(memory, users, pusher, o, b, c)

    after = await app.remove_member(
        app.RemoveMember(actor_id=o, conversation_id=conversation.conversation_id, user_id=c),
        store=memory,
        pusher=pusher,
        large_group_threshold=THRESHOLD,
    )

    assert list(after.members) == [o, b]
    assert [(p.user_ids, p.frame) for p in pusher.pushes] == [
        (
            frozenset({o, b, c}),
            {"type": "member_removed", "conversation_id": conversation.conversation_id, "user_id": c, "by": o},
        )
    ]


async def test_owner_leaving_announces_the_new_owner(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher
) -> None:
    o, b, c = uid("o"), uid("b"), uid("c")
    conversation = await make_group(memory, users, pusher, o, b, c)

    after = await app.remove_member(
        app.RemoveMember(actor_id=o, conversation_id=conversation.conversation_id, user_id=o),
        store=memory,
        pusher=pusher,
        large_group_threshold=THRESHOLD,
    )

    assert after.owner == b
    assert [p.frame["type"] for p in pusher.pushes] == ["member_removed", "member_role_changed"]
    assert pusher.pushes[1].frame == {
        "type": "member_role_changed",
        "conversation_id": conversation.conversation_id,
        "user_id": b,
        "role": "owner",
        "by": o,
    }
    assert pusher.pushes[1].user_ids == frozenset({b, c})


async def test_role_change_is_stored_and_announced(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher
) -> None:
    o, b = uid("o"), uid("b")
    conversation = await make_group(memory, users, pusher, o, b)

    after = await app.change_role(
        app.ChangeRole(actor_id=o, conversation_id=conversation.conversation_id, user_id=b, role=Role.ADMIN),
        store=memory,
        pusher=pusher,
    )

    assert after.role_of(b) is Role.ADMIN
    assert [(p.user_ids, p.frame["role"]) for p in pusher.of_type("member_role_changed")] == [
        (frozenset({o, b}), "admin")
    ]


async def test_setting_the_same_role_again_pushes_nothing(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher
) -> None:
    o, b = uid("o"), uid("b")
    conversation = await make_group(memory, users, pusher, o, b)

    await app.change_role(
        app.ChangeRole(actor_id=o, conversation_id=conversation.conversation_id, user_id=b, role=Role.MEMBER),
        store=memory,
        pusher=pusher,
    )

    assert pusher.pushes == []


async def test_get_hides_the_conversation_from_non_members(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher, activity: FakeActivity
) -> None:
    o = uid("o")
    conversation = await make_group(memory, users, pusher, o)

    with pytest.raises(NotFound) as stranger:
        await app.get_conversation(
            app.GetConversation(user_id=uid("eve"), conversation_id=conversation.conversation_id),
            store=memory,
            activity=activity,
        )
    with pytest.raises(NotFound) as missing:
        await app.get_conversation(
            app.GetConversation(user_id=o, conversation_id="no-such-id"), store=memory, activity=activity
        )

    assert stranger.value.message.replace(conversation.conversation_id, "X") == missing.value.message.replace(
        "no-such-id", "X"
    )


async def test_list_is_ordered_by_last_activity_else_creation(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher, activity: FakeActivity
) -> None:
    o = uid("o")
    times = iter([T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)])
    created = []
    for _ in range(3):
        created.append(
            await app.create_group(
                app.CreateGroup(creator_id=o, title="t", member_ids=()),
                store=memory,
                users=users,
                pusher=pusher,
                large_group_threshold=THRESHOLD,
                now=lambda: next(times),
            )
        )
    oldest, middle, newest = created
    busy = Activity(
        max_seq=7,
        read_seq=5,
        unread_count=2,
        last_message={"seq": 7},
        last_activity_at=T0 + timedelta(minutes=5),
    )
    activity.set(o, oldest.conversation_id, busy)

    listed = await app.list_conversations(app.ListConversations(user_id=o), store=memory, activity=activity)

    assert [c.conversation_id for c, _ in listed] == [
        oldest.conversation_id,
        newest.conversation_id,
        middle.conversation_id,
    ]
    assert listed[0][1] == busy
    assert listed[1][1].max_seq == 0
    assert activity.calls == [(o, sorted(c.conversation_id for c in created))]


async def test_list_of_a_user_without_conversations_asks_no_activity(
    memory: MemoryConversationStore, activity: FakeActivity
) -> None:
    assert await app.list_conversations(app.ListConversations(user_id=uid("o")), store=memory, activity=activity) == []
    assert activity.calls == []


async def test_adding_only_existing_members_looks_nobody_up_and_pushes_nothing(
    memory: MemoryConversationStore, users: FakeUsers, pusher: RecordingPusher
) -> None:
    o, b = uid("o"), uid("b")
    conversation = await make_group(memory, users, pusher, o, b)
    users.calls.clear()

    after = await app.add_members(
        app.AddMembers(actor_id=o, conversation_id=conversation.conversation_id, user_ids=(b, o)),
        store=memory,
        users=users,
        pusher=pusher,
        large_group_threshold=THRESHOLD,
    )

    assert after == conversation
    assert users.calls == []
    assert pusher.pushes == []
