"""Conversations and the rules of their membership: who may add, remove and promote whom.

Pure: every rule takes a ``Conversation`` and returns a new one, or raises a ``CourierError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from services.common.errors import Forbidden, InvalidRequest, NotFound
from services.common.wire import check_name

MAX_ID_LENGTH = 64
MAX_TITLE_LENGTH = 100


class ConversationType(StrEnum):
    DIRECT = "direct"
    GROUP = "group"


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


@dataclass(frozen=True)
class Conversation:
    """A conversation and its members.

    ``members`` is ordered by seniority (who joined first comes first): ownership passes down that
    order. It is read-only because stores and caches hand the same object to many readers.
    """

    conversation_id: str
    type: ConversationType
    title: str | None
    members: Mapping[str, Role]
    created_at: datetime
    large: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", MappingProxyType(dict(self.members)))

    def role_of(self, user_id: str) -> Role | None:
        return self.members.get(user_id)

    def is_member(self, user_id: str) -> bool:
        return user_id in self.members

    @property
    def owner(self) -> str | None:
        return next((user_id for user_id, role in self.members.items() if role is Role.OWNER), None)


@dataclass(frozen=True)
class Activity:
    """What a user sees of a conversation's messages; comes from the message service."""

    max_seq: int
    read_seq: int
    unread_count: int
    last_message: Mapping[str, Any] | None
    last_activity_at: datetime | None


NO_ACTIVITY = Activity(max_seq=0, read_seq=0, unread_count=0, last_message=None, last_activity_at=None)


def not_found(conversation_id: str) -> NotFound:
    """The one answer for a missing conversation and for one the caller is not in (no existence leak)."""
    return NotFound(f"conversation {conversation_id} not found")


def pair_key(conversation: Conversation) -> str | None:
    """The key that makes a direct conversation unique per pair of users; None for groups."""
    if conversation.type is not ConversationType.DIRECT:
        return None
    first, second = sorted(conversation.members)
    # Hashed so that no separator can ever make two different pairs collide, at a fixed column width.
    return hashlib.sha256(f"{len(first)}:{first}{second}".encode()).hexdigest()


def unique(user_ids: Iterable[str]) -> list[str]:
    """The ids without duplicates, first occurrence kept."""
    return list(dict.fromkeys(user_ids))


def clean_title(title: str) -> str:
    cleaned = title.strip()
    if not cleaned:
        raise InvalidRequest("title must not be empty")
    if len(cleaned) > MAX_TITLE_LENGTH:
        raise InvalidRequest(f"title must be at most {MAX_TITLE_LENGTH} characters")
    check_name(cleaned, "title")
    return cleaned


def _sized(conversation: Conversation, members: Mapping[str, Role], large_group_threshold: int) -> Conversation:
    return replace(conversation, members=members, large=len(members) > large_group_threshold)


def open_direct(
    conversation_id: str, creator_id: str, peer_id: str, *, now: datetime, large_group_threshold: int
) -> Conversation:
    if peer_id == creator_id:
        raise InvalidRequest("a direct conversation needs two different users; peer_id is yourself")
    members = {creator_id: Role.MEMBER, peer_id: Role.MEMBER}
    return Conversation(
        conversation_id=conversation_id,
        type=ConversationType.DIRECT,
        title=None,
        members=members,
        created_at=now,
        large=len(members) > large_group_threshold,
    )


def open_group(
    conversation_id: str,
    creator_id: str,
    title: str,
    member_ids: Iterable[str],
    *,
    now: datetime,
    large_group_threshold: int,
) -> Conversation:
    members = {creator_id: Role.OWNER}
    members.update((user_id, Role.MEMBER) for user_id in unique(member_ids) if user_id != creator_id)
    return Conversation(
        conversation_id=conversation_id,
        type=ConversationType.GROUP,
        title=clean_title(title),
        members=members,
        created_at=now,
        large=len(members) > large_group_threshold,
    )


def _require_member(conversation: Conversation, user_id: str) -> Role:
    role = conversation.role_of(user_id)
    if role is None:
        raise not_found(conversation.conversation_id)
    return role


def _require_group(conversation: Conversation, what: str) -> None:
    if conversation.type is ConversationType.DIRECT:
        raise InvalidRequest(f"cannot {what} in a direct conversation")


def add_members(
    conversation: Conversation, actor_id: str, user_ids: Iterable[str], *, large_group_threshold: int
) -> Conversation:
    """Owner and admins add users; those already in are left as they are."""
    actor_role = _require_member(conversation, actor_id)
    _require_group(conversation, "add members")
    if actor_role is Role.MEMBER:
        raise Forbidden("only the owner or an admin can add members")
    members = dict(conversation.members)
    members.update((user_id, Role.MEMBER) for user_id in unique(user_ids) if user_id not in members)
    return _sized(conversation, members, large_group_threshold)


def remove_member(
    conversation: Conversation, actor_id: str, user_id: str, *, large_group_threshold: int
) -> Conversation:
    """Anyone leaves; admins and the owner remove members; only the owner removes admins; nobody
    removes the owner. An owner who leaves hands ownership to the longest-standing admin, else the
    longest-standing member."""
    actor_role = _require_member(conversation, actor_id)
    _require_group(conversation, "remove members")
    target_role = conversation.role_of(user_id)
    if target_role is None:
        raise NotFound(f"user {user_id} is not a member of this conversation")
    if user_id != actor_id:
        if target_role is Role.OWNER:
            raise Forbidden("nobody can remove the owner")
        if target_role is Role.ADMIN and actor_role is not Role.OWNER:
            raise Forbidden("only the owner can remove an admin")
        if actor_role is Role.MEMBER:
            raise Forbidden("only the owner or an admin can remove members")
    members = {member: role for member, role in conversation.members.items() if member != user_id}
    if target_role is Role.OWNER and members:
        heir = next((member for member, role in members.items() if role is Role.ADMIN), next(iter(members)))
        members[heir] = Role.OWNER
    return _sized(conversation, members, large_group_threshold)


def change_role(conversation: Conversation, actor_id: str, user_id: str, role: Role) -> Conversation:
    """The owner makes members admins and admins members again."""
    actor_role = _require_member(conversation, actor_id)
    _require_group(conversation, "change roles")
    if actor_role is not Role.OWNER:
        raise Forbidden("only the owner can change roles")
    target_role = conversation.role_of(user_id)
    if target_role is None:
        raise NotFound(f"user {user_id} is not a member of this conversation")
    if role is Role.OWNER or target_role is Role.OWNER:
        raise InvalidRequest("the owner's role cannot be given or changed; roles are admin or member")
    members = dict(conversation.members)
    members[user_id] = role
    return replace(conversation, members=members)


def activity_order(conversation: Conversation, activity: Activity) -> tuple[datetime, str]:
    """Sort key for a user's list, newest activity first when reversed: the last message, else creation."""
    return (activity.last_activity_at or conversation.created_at, conversation.conversation_id)
