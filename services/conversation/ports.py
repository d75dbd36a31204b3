"""What the conversation use cases need from the outside: storage, the user registry, message activity."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol

from services.conversation.domain import Activity, Conversation


class ConversationStore(Protocol):
    async def create(self, conversation: Conversation) -> tuple[Conversation, bool]:
        """Store a new conversation and return it with True. A direct conversation is unique per pair
        of users: when the pair already has one, that one comes back with False and nothing is stored."""
        ...

    async def get(self, conversation_id: str) -> Conversation | None: ...

    async def list_for_user(self, user_id: str) -> list[Conversation]:
        """Every conversation ``user_id`` is a member of, in no particular order."""
        ...

    async def conversation_ids(self, user_id: str) -> list[str]: ...

    async def update(
        self, conversation_id: str, change: Callable[[Conversation], Conversation]
    ) -> tuple[Conversation, Conversation]:
        """Apply ``change`` atomically (no other update of the same conversation interleaves) and
        return (before, after). Raises NotFound when the conversation does not exist; whatever
        ``change`` raises aborts the update with nothing written."""
        ...


class UserDirectory(Protocol):
    async def missing(self, user_ids: Collection[str]) -> set[str]:
        """The ids among ``user_ids`` that are not registered users."""
        ...


class ActivityReader(Protocol):
    async def activity(self, user_id: str, conversations: Sequence[Conversation]) -> Mapping[str, Activity]:
        """Activity by conversation id, as ``user_id`` sees it; a missing key means no messages yet."""
        ...
