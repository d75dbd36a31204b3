"""conversation's internal API (membership reads for message, delivery and file) and its client.

The client keeps answers for a short time: a membership check runs on every send, and a removed
member may keep sending for at most ``cache_s`` (the directory itself caches too).
"""

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

from fastapi import APIRouter
from pydantic import BaseModel

from services.common.contract import call, serve
from services.common.errors import NotFound
from services.common.internal import InternalClient, RequireInternal
from services.conversation.directory import ConversationDirectory
from services.message.ports import Conversation


class ConversationRef(BaseModel):
    conversation_id: str


class ConversationView(BaseModel):
    conversation_id: str
    roles: dict[str, str]
    large: bool


class UserRef(BaseModel):
    user_id: str


class ConversationIds(BaseModel):
    conversation_ids: list[str]


@call("GET", "/internal/conversations/{conversation_id}", ConversationRef, ConversationView)
async def get(directory: ConversationDirectory, ref: ConversationRef) -> ConversationView:
    found = await directory.get(ref.conversation_id)
    if found is None:
        raise NotFound("no such conversation")
    roles = {user_id: str(role) for user_id, role in found.members.items()}
    return ConversationView(conversation_id=found.conversation_id, roles=roles, large=found.large)


@call("GET", "/internal/conversations/of/{user_id}", UserRef, ConversationIds)
async def conversation_ids(directory: ConversationDirectory, ref: UserRef) -> ConversationIds:
    return ConversationIds(conversation_ids=await directory.conversation_ids(ref.user_id))


def internal_router(directory: ConversationDirectory, guard: RequireInternal) -> APIRouter:
    return serve(directory, guard, [get, conversation_ids])


class ConversationsClient:
    """message's ``Conversations``, delivery's ``Members`` and file's ``ConversationMembership``."""

    def __init__(self, client: InternalClient, *, cache_s: float = 2.0, cache_size: int = 20_000) -> None:
        self._client = client
        self._cache_s = cache_s
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[float, Conversation | None]] = OrderedDict()
        self._fetching: dict[str, asyncio.Future[Conversation | None]] = {}

    async def get(self, conversation_id: str) -> Conversation | None:
        hit = self._cache.get(conversation_id)
        if hit is not None and time.monotonic() - hit[0] < self._cache_s:
            self._cache.move_to_end(conversation_id)
            return hit[1]
        # One request per conversation at a time: a burst of sends to it waits for the same answer.
        fetch = self._fetching.get(conversation_id)
        if fetch is None:
            fetch = self._fetching[conversation_id] = asyncio.ensure_future(self._fetch(conversation_id))
            fetch.add_done_callback(partial(self._fetched, conversation_id))
        return await asyncio.shield(fetch)

    def _fetched(self, conversation_id: str, done: asyncio.Future[Conversation | None]) -> None:
        self._fetching.pop(conversation_id, None)
        if not done.cancelled():
            done.exception()  # retrieved here too, so a failure whose callers all left is not reported as lost

    async def _fetch(self, conversation_id: str) -> Conversation | None:
        asked = time.monotonic()
        try:
            view = await get.ask(self._client, ConversationRef(conversation_id=conversation_id))
            found: Conversation | None = Conversation(view.conversation_id, view.roles, view.large)
        except NotFound:
            found = None
        self._cache[conversation_id] = (asked, found)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return found

    async def conversation_ids(self, user_id: str) -> list[str]:
        return (await conversation_ids.ask(self._client, UserRef(user_id=user_id))).conversation_ids

    async def is_member(self, conversation_id: str, user_id: str) -> bool:
        found = await self.get(conversation_id)
        return found is not None and user_id in found.roles

    async def members(self, conversation_id: str, user_id: str) -> Sequence[str]:
        found = await self.get(conversation_id)
        if found is None or user_id not in found.roles:
            raise NotFound("no such conversation")
        return list(found.roles)
