"""The conversation store in process memory: embedded mode without SQL, and unit tests."""

from __future__ import annotations

from collections.abc import Callable

from services.conversation.domain import Conversation, not_found, pair_key


class MemoryConversationStore:
    def __init__(self) -> None:
        self._conversations: dict[str, Conversation] = {}
        self._by_pair: dict[str, str] = {}
        self._by_user: dict[str, set[str]] = {}

    # No method awaits between reading and writing, so each one is atomic on the event loop.

    async def create(self, conversation: Conversation) -> tuple[Conversation, bool]:
        key = pair_key(conversation)
        if key is not None and key in self._by_pair:
            return self._conversations[self._by_pair[key]], False
        if key is not None:
            self._by_pair[key] = conversation.conversation_id
        self._put(None, conversation)
        return conversation, True

    async def get(self, conversation_id: str) -> Conversation | None:
        return self._conversations.get(conversation_id)

    async def list_for_user(self, user_id: str) -> list[Conversation]:
        return [self._conversations[cid] for cid in sorted(self._by_user.get(user_id, ()))]

    async def conversation_ids(self, user_id: str) -> list[str]:
        return sorted(self._by_user.get(user_id, ()))

    async def update(
        self, conversation_id: str, change: Callable[[Conversation], Conversation]
    ) -> tuple[Conversation, Conversation]:
        before = self._conversations.get(conversation_id)
        if before is None:
            raise not_found(conversation_id)
        after = change(before)
        self._put(before, after)
        return before, after

    def _put(self, before: Conversation | None, after: Conversation) -> None:
        cid = after.conversation_id
        self._conversations[cid] = after
        for user_id in set(before.members if before else ()) - set(after.members):
            self._by_user[user_id].discard(cid)
        for user_id in after.members:
            self._by_user.setdefault(user_id, set()).add(cid)
