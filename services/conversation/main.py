"""Composition of the conversation service: settings and collaborators in, router and directory out."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.push import Pusher
from services.common.settings import Settings
from services.common.web import Authenticate
from services.conversation.adapters.memory import MemoryConversationStore
from services.conversation.adapters.sql import SqlConversationStore
from services.conversation.api import Dependencies, build_router
from services.conversation.directory import ConversationDirectory
from services.conversation.ports import ActivityReader, ConversationStore, UserDirectory


@dataclass(frozen=True)
class Conversations:
    router: APIRouter
    # For the other services: get(id), conversation_ids(user_id), is_member(id, user_id), cached.
    directory: ConversationDirectory


def build_conversations(
    settings: Settings,
    *,
    sessions: async_sessionmaker[AsyncSession] | None,
    auth: Authenticate,
    users: UserDirectory,
    activity: ActivityReader,
    pusher: Pusher,
) -> Conversations:
    """``sessions`` None keeps conversations in memory; otherwise they live in SQL (tables created
    by the caller through ``services.common.db.create_all`` or migrations)."""
    store: ConversationStore = MemoryConversationStore() if sessions is None else SqlConversationStore(sessions)
    directory = ConversationDirectory(store)
    deps = Dependencies(
        store=directory,
        users=users,
        activity=activity,
        pusher=pusher,
        large_group_threshold=settings.large_group_threshold,
    )
    return Conversations(router=build_router(deps, auth=auth), directory=directory)
