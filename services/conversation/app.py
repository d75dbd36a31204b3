"""Conversation use cases: create, read and change membership, then tell the members what changed.

Membership frames are transient pushes (``member_added``, ``member_removed``, and the extension
``member_role_changed``), sent only after the change is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

from services.common import clock, ids
from services.common.errors import InvalidRequest
from services.common.push import Pusher
from services.conversation import domain
from services.conversation.domain import NO_ACTIVITY, Activity, Conversation, Role
from services.conversation.ports import ActivityReader, ConversationStore, UserDirectory


@dataclass(frozen=True)
class CreateDirect:
    creator_id: str
    peer_id: str


@dataclass(frozen=True)
class CreateGroup:
    creator_id: str
    title: str
    member_ids: tuple[str, ...]


@dataclass(frozen=True)
class GetConversation:
    user_id: str
    conversation_id: str


@dataclass(frozen=True)
class ListConversations:
    user_id: str


@dataclass(frozen=True)
class AddMembers:
    actor_id: str
    conversation_id: str
    user_ids: tuple[str, ...]


@dataclass(frozen=True)
class RemoveMember:
    actor_id: str
    conversation_id: str
    user_id: str


@dataclass(frozen=True)
class ChangeRole:
    actor_id: str
    conversation_id: str
    user_id: str
    role: Role


async def _require_registered(users: UserDirectory, user_ids: Collection[str]) -> None:
    missing = await users.missing(user_ids)
    if missing:
        raise InvalidRequest(f"unknown users: {', '.join(sorted(missing))}")


async def _announce_added(pusher: Pusher, conversation: Conversation, added: Collection[str], by: str) -> None:
    frames = [
        {"type": "member_added", "conversation_id": conversation.conversation_id, "user_id": user_id, "by": by}
        for user_id in added
    ]
    await pusher.push_frames(list(conversation.members), frames)


async def create_direct(
    cmd: CreateDirect,
    *,
    store: ConversationStore,
    users: UserDirectory,
    pusher: Pusher,
    large_group_threshold: int,
    now: Callable[[], datetime] = clock.utcnow,
) -> tuple[Conversation, bool]:
    """The pair's direct conversation, and whether this call created it."""
    candidate = domain.open_direct(
        ids.new_id(), cmd.creator_id, cmd.peer_id, now=now(), large_group_threshold=large_group_threshold
    )
    await _require_registered(users, [cmd.peer_id])
    conversation, created = await store.create(candidate)
    if created:
        await _announce_added(pusher, conversation, [cmd.peer_id], cmd.creator_id)
    return conversation, created


async def create_group(
    cmd: CreateGroup,
    *,
    store: ConversationStore,
    users: UserDirectory,
    pusher: Pusher,
    large_group_threshold: int,
    now: Callable[[], datetime] = clock.utcnow,
) -> Conversation:
    conversation = domain.open_group(
        ids.new_id(), cmd.creator_id, cmd.title, cmd.member_ids, now=now(), large_group_threshold=large_group_threshold
    )
    added = [user_id for user_id in conversation.members if user_id != cmd.creator_id]
    if added:
        await _require_registered(users, added)
    await store.create(conversation)
    await _announce_added(pusher, conversation, added, cmd.creator_id)
    return conversation


async def get_conversation(
    query: GetConversation, *, store: ConversationStore, activity: ActivityReader
) -> tuple[Conversation, Activity]:
    conversation = await store.get(query.conversation_id)
    if conversation is None or not conversation.is_member(query.user_id):
        raise domain.not_found(query.conversation_id)
    return conversation, await activity_of(query.user_id, conversation, activity=activity)


async def list_conversations(
    query: ListConversations, *, store: ConversationStore, activity: ActivityReader
) -> list[tuple[Conversation, Activity]]:
    """The user's conversations, newest activity first."""
    conversations = await store.list_for_user(query.user_id)
    activities = await activity.activity(query.user_id, conversations) if conversations else {}
    listed = [(c, activities.get(c.conversation_id, NO_ACTIVITY)) for c in conversations]
    listed.sort(key=lambda pair: domain.activity_order(*pair), reverse=True)
    return listed


async def add_members(
    cmd: AddMembers,
    *,
    store: ConversationStore,
    users: UserDirectory,
    pusher: Pusher,
    large_group_threshold: int,
) -> Conversation:
    def change(conversation: Conversation) -> Conversation:
        return domain.add_members(conversation, cmd.actor_id, cmd.user_ids, large_group_threshold=large_group_threshold)

    # A dry run on the current state first, so that a stranger learns nothing about the users
    # named (not_found) and a plain member is refused before anyone is looked up.
    current = await store.get(cmd.conversation_id)
    if current is None:
        raise domain.not_found(cmd.conversation_id)
    change(current)
    # Members already in are users already checked; a concurrent removal cannot make them unknown.
    newcomers = [user_id for user_id in domain.unique(cmd.user_ids) if not current.is_member(user_id)]
    if newcomers:
        await _require_registered(users, newcomers)
    before, after = await store.update(cmd.conversation_id, change)
    added = [user_id for user_id in after.members if user_id not in before.members]
    await _announce_added(pusher, after, added, cmd.actor_id)
    return after


async def remove_member(
    cmd: RemoveMember, *, store: ConversationStore, pusher: Pusher, large_group_threshold: int
) -> Conversation:
    before, after = await store.update(
        cmd.conversation_id,
        lambda conversation: domain.remove_member(
            conversation, cmd.actor_id, cmd.user_id, large_group_threshold=large_group_threshold
        ),
    )
    frame = {
        "type": "member_removed",
        "conversation_id": after.conversation_id,
        "user_id": cmd.user_id,
        "by": cmd.actor_id,
    }
    await pusher.push([*after.members, cmd.user_id], frame)
    if after.owner is not None and after.owner != before.owner:
        await _announce_role(pusher, after, after.owner, cmd.actor_id)
    return after


async def change_role(cmd: ChangeRole, *, store: ConversationStore, pusher: Pusher) -> Conversation:
    before, after = await store.update(
        cmd.conversation_id,
        lambda conversation: domain.change_role(conversation, cmd.actor_id, cmd.user_id, cmd.role),
    )
    if before.role_of(cmd.user_id) is not after.role_of(cmd.user_id):
        await _announce_role(pusher, after, cmd.user_id, cmd.actor_id)
    return after


async def _announce_role(pusher: Pusher, conversation: Conversation, user_id: str, by: str) -> None:
    role = conversation.members[user_id]
    frame = {
        "type": "member_role_changed",
        "conversation_id": conversation.conversation_id,
        "user_id": user_id,
        "role": role.value,
        "by": by,
    }
    await pusher.push(list(conversation.members), frame)


async def activity_of(user_id: str, conversation: Conversation, *, activity: ActivityReader) -> Activity:
    """How ``user_id`` sees one conversation's messages (zeros when there are none yet)."""
    found = await activity.activity(user_id, [conversation])
    return found.get(conversation.conversation_id, NO_ACTIVITY)
