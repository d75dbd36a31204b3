"""In-memory identity stores: the embedded mode without a database, and the use-case tests.

Every method runs without awaiting, so each is atomic on the event loop like a SQL transaction.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Collection
from dataclasses import replace
from datetime import datetime

from services.common.errors import Conflict, NotFound
from services.identity.domain import Session, User


class MemoryUserStore:
    def __init__(self) -> None:
        self._by_id: dict[str, User] = {}
        self._id_by_username: dict[str, str] = {}
        self._sorted_names: list[str] = []  # kept sorted so a prefix search is a bisect

    async def add(self, user: User) -> None:
        if user.username in self._id_by_username:
            raise Conflict(f"username {user.username!r} is already taken")
        self._by_id[user.user_id] = user
        self._id_by_username[user.username] = user.user_id
        bisect.insort(self._sorted_names, user.username)

    async def get(self, user_id: str) -> User | None:
        return self._by_id.get(user_id)

    async def by_username(self, username: str) -> User | None:
        user_id = self._id_by_username.get(username)
        return None if user_id is None else self._by_id[user_id]

    async def get_many(self, user_ids: Collection[str]) -> list[User]:
        return [self._by_id[user_id] for user_id in set(user_ids) if user_id in self._by_id]

    async def search(self, prefix: str, *, limit: int) -> list[User]:
        found: list[User] = []
        for name in itertools.islice(self._sorted_names, bisect.bisect_left(self._sorted_names, prefix), None):
            if not name.startswith(prefix) or len(found) == limit:
                break
            found.append(self._by_id[self._id_by_username[name]])
        return found

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        user = self._by_id.get(user_id)
        if user is None:
            raise NotFound(f"no user with id {user_id!r}")
        self._by_id[user_id] = replace(user, password_hash=password_hash)


class MemorySessionStore:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._devices: dict[str, dict[str, str]] = {}  # user id -> device id -> session id
        self._by_refresh_hash: dict[str, str] = {}
        self._rotated: dict[str, str] = {}  # hash of a rotated-out refresh token -> session id
        # session id -> {rotated hash: when that token would have expired}
        self._rotated_by_session: dict[str, dict[str, datetime]] = {}

    async def put(self, session: Session) -> str | None:
        previous = self._devices.get(session.user_id, {}).get(session.device_id)
        if previous is not None:
            self._drop(previous)
        self._sessions[session.session_id] = session
        self._devices.setdefault(session.user_id, {})[session.device_id] = session.session_id
        self._by_refresh_hash[session.refresh_hash] = session.session_id
        return previous

    async def by_refresh_hash(self, refresh_hash: str) -> Session | None:
        session_id = self._by_refresh_hash.get(refresh_hash)
        return None if session_id is None else self._sessions[session_id]

    async def rotated_from(self, refresh_hash: str) -> str | None:
        return self._rotated.get(refresh_hash)

    async def rotate(
        self, session_id: str, *, old_hash: str, new_hash: str, expires_at: datetime, now: datetime
    ) -> bool:
        session = self._sessions.get(session_id)
        if session is None or session.refresh_hash != old_hash:
            return False
        rotated = self._rotated_by_session.setdefault(session_id, {})
        for token_hash in [h for h, token_expiry in rotated.items() if token_expiry <= now]:
            del rotated[token_hash]
            del self._rotated[token_hash]
        rotated[old_hash] = session.refresh_expires_at
        self._rotated[old_hash] = session_id
        del self._by_refresh_hash[old_hash]
        self._sessions[session_id] = replace(session, refresh_hash=new_hash, refresh_expires_at=expires_at)
        self._by_refresh_hash[new_hash] = session_id
        return True

    async def delete(self, session_id: str) -> None:
        if session_id in self._sessions:
            self._drop(session_id)

    async def delete_device(self, user_id: str, device_id: str) -> None:
        session_id = self._devices.get(user_id, {}).get(device_id)
        if session_id is not None:
            self._drop(session_id)

    async def delete_expired(self, user_id: str, *, now: datetime) -> None:
        for session_id in list(self._devices.get(user_id, {}).values()):
            if self._sessions[session_id].expired(now):
                self._drop(session_id)

    def _drop(self, session_id: str) -> None:
        session = self._sessions.pop(session_id)
        devices = self._devices[session.user_id]
        del devices[session.device_id]
        if not devices:
            del self._devices[session.user_id]
        del self._by_refresh_hash[session.refresh_hash]
        for token_hash in self._rotated_by_session.pop(session_id, {}):
            del self._rotated[token_hash]
