"""Composition of identity: stores chosen by configuration, then the router and the user directory."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.settings import Settings
from services.common.tokens import AccessTokens
from services.common.web import Authenticate
from services.identity.adapters.memory import MemorySessionStore, MemoryUserStore
from services.identity.adapters.sql import SqlSessionStore, SqlUserStore
from services.identity.api import create_router
from services.identity.app import UserDirectory
from services.identity.passwords import Passwords, password_hasher
from services.identity.ports import SessionRevocations, SessionStore, UserStore


@dataclass(frozen=True)
class Identity:
    router: APIRouter
    directory: UserDirectory


def build_identity(
    settings: Settings,
    *,
    sessions: async_sessionmaker[AsyncSession] | None,
    tokens: AccessTokens,
    auth: Authenticate,
    revocations: SessionRevocations,
    hasher: PasswordHasher | None = None,
) -> Identity:
    """``sessions`` None keeps users and sessions in memory (lost on exit). ``revocations`` is where ended
    sessions go so that ``tokens`` (here, and in every other process) refuse their access tokens."""
    users: UserStore
    device_sessions: SessionStore
    if sessions is None:
        users, device_sessions = MemoryUserStore(), MemorySessionStore()
    else:
        users, device_sessions = SqlUserStore(sessions), SqlSessionStore(sessions)
    router = create_router(
        users=users,
        sessions=device_sessions,
        revocations=revocations,
        passwords=Passwords(hasher or password_hasher(settings.passwords)),
        tokens=tokens,
        auth=auth,
        refresh_ttl=timedelta(seconds=settings.jwt.refresh_ttl_s),
    )
    return Identity(router=router, directory=UserDirectory(users))
