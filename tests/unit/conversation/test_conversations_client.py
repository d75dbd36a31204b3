"""The conversation client other services use, against conversation's real internal routes
(uvicorn on loopback): a burst of look-ups of one conversation costs one request, and answers
(found or not) are kept for ``cache_s``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from conversation_support import group, uid

from services.conversation.adapters.memory import MemoryConversationStore
from services.conversation.directory import ConversationDirectory
from services.conversation.domain import Role
from services.conversation.internal import ConversationsClient, internal_router
from tests.support.loopback import GUARD, internal_service


@dataclass
class Served:
    directory: ConversationDirectory
    client: ConversationsClient | None = None
    requests: list[str] = field(default_factory=list)
    open: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def lookups(self) -> ConversationsClient:
        assert self.client is not None
        return self.client


@contextlib.asynccontextmanager
async def served() -> AsyncIterator[Served]:
    """Requests are counted, then held until ``open`` is set."""
    state = Served(ConversationDirectory(MemoryConversationStore()))
    async with internal_service(internal_router(state.directory, GUARD), hold=state.open.wait) as internal:
        state.requests = internal.paths
        state.client = ConversationsClient(internal.client)
        yield state


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0.01)


async def test_concurrent_lookups_of_one_conversation_share_one_request() -> None:
    async with served() as s:
        alice, bob = uid("a"), uid("b")
        conversation = group((alice, Role.OWNER), (bob, Role.MEMBER))
        await s.directory.create(conversation)
        lookups = [asyncio.create_task(s.lookups.get(conversation.conversation_id)) for _ in range(20)]
        await _until(lambda: len(s.requests) == 1)
        s.open.set()
        found = await asyncio.wait_for(asyncio.gather(*lookups), 30)
        assert [set(f.roles) if f else None for f in found] == [{alice, bob}] * 20
        assert len(s.requests) == 1
        assert await s.lookups.is_member(conversation.conversation_id, bob)
        assert len(s.requests) == 1  # answered from the cache


async def test_a_missing_conversation_is_none_for_every_waiter() -> None:
    async with served() as s:
        s.open.set()
        found = await asyncio.wait_for(asyncio.gather(*(s.lookups.get("missing") for _ in range(5))), 30)
        assert found == [None] * 5
        assert len(s.requests) == 1


async def test_a_waiter_that_leaves_does_not_spoil_the_lookup_for_the_next() -> None:
    async with served() as s:
        conversation = group((uid("a"), Role.OWNER))
        await s.directory.create(conversation)
        leaving = asyncio.create_task(s.lookups.get(conversation.conversation_id))
        await _until(lambda: len(s.requests) == 1)
        leaving.cancel()  # the only waiter leaves; the request it started carries on
        staying = asyncio.create_task(s.lookups.get(conversation.conversation_id))
        s.open.set()
        found = await asyncio.wait_for(staying, 30)
        assert found is not None and found.conversation_id == conversation.conversation_id
        assert len(s.requests) == 1
