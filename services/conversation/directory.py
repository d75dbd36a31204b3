"""The conversation store behind a small in-process cache: membership is read on every message sent.

Writes made through this wrapper drop what they touch at once. Writes made by other processes are
seen after at most ``ttl_s``, which bounds how long a removed member can still pass a check.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from services.conversation.domain import Conversation
from services.conversation.ports import ConversationStore


class ConversationDirectory:
    """A ``ConversationStore`` that caches conversations by id (LRU, bounded, with expiry)."""

    def __init__(
        self,
        store: ConversationStore,
        *,
        ttl_s: float = 5.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, Conversation]] = OrderedDict()
        # Bumped by every write: a read that was in flight across a write must not cache what it read.
        self._generation = 0

    async def get(self, conversation_id: str) -> Conversation | None:
        entry = self._cache.get(conversation_id)
        now = self._clock()
        if entry is not None and entry[0] > now:
            self._cache.move_to_end(conversation_id)
            return entry[1]
        generation = self._generation
        conversation = await self._store.get(conversation_id)
        if conversation is None:
            self._cache.pop(conversation_id, None)
        elif generation == self._generation:
            self._cache[conversation_id] = (now + self._ttl_s, conversation)
            self._cache.move_to_end(conversation_id)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return conversation

    async def is_member(self, conversation_id: str, user_id: str) -> bool:
        conversation = await self.get(conversation_id)
        return conversation is not None and conversation.is_member(user_id)

    async def conversation_ids(self, user_id: str) -> list[str]:
        return await self._store.conversation_ids(user_id)

    async def list_for_user(self, user_id: str) -> list[Conversation]:
        return await self._store.list_for_user(user_id)

    async def create(self, conversation: Conversation) -> tuple[Conversation, bool]:
        return await self._store.create(conversation)

    async def update(
        self, conversation_id: str, change: Callable[[Conversation], Conversation]
    ) -> tuple[Conversation, Conversation]:
        try:
            return await self._store.update(conversation_id, change)
        finally:
            # Also on failure: the write may have reached the database before the error.
            self._generation += 1
            self._cache.pop(conversation_id, None)
