"""What the identity use cases need: a user store, a device-session store, and where revoked sessions go."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Protocol

from services.identity.domain import Session, User


class UserStore(Protocol):
    async def add(self, user: User) -> None:
        """Store a new user; ``Conflict`` when the (normalized) username is taken."""
        ...

    async def get(self, user_id: str) -> User | None: ...

    async def by_username(self, username: str) -> User | None: ...

    async def get_many(self, user_ids: Collection[str]) -> list[User]:
        """The users among ``user_ids`` that exist, in no particular order."""
        ...

    async def search(self, prefix: str, *, limit: int) -> list[User]:
        """Users whose username starts with ``prefix`` (taken literally), ordered by username."""
        ...

    async def set_password_hash(self, user_id: str, password_hash: str) -> None: ...


class SessionStore(Protocol):
    async def put(self, session: Session) -> str | None:
        """Store ``session``, replacing the previous session of the same device; returns that one's id."""
        ...

    async def by_refresh_hash(self, refresh_hash: str) -> Session | None:
        """The session whose current refresh token has this hash."""
        ...

    async def rotated_from(self, refresh_hash: str) -> str | None:
        """The id of the session a refresh token with this hash was rotated out of, if any."""
        ...

    async def rotate(
        self, session_id: str, *, old_hash: str, new_hash: str, expires_at: datetime, now: datetime
    ) -> bool:
        """Swap the session's refresh token if it is still ``old_hash`` (False if another refresh won).

        The old hash is remembered until its own expiry, so its reuse can be detected; remembered
        hashes already expired at ``now`` may be forgotten.
        """
        ...

    async def delete(self, session_id: str) -> None:
        """Revoke a session and forget its rotated tokens."""
        ...

    async def delete_device(self, user_id: str, device_id: str) -> None:
        """Revoke the session of one device, if it has one."""
        ...

    async def delete_expired(self, user_id: str, *, now: datetime) -> None:
        """Forget the user's sessions whose refresh token expired (devices that never came back)."""
        ...


class SessionRevocations(Protocol):
    """Where an ended session is announced, so that its access tokens stop working before they expire
    (``services.common.revocation``: in this process, or for every process through Redis)."""

    async def revoke(self, session_id: str) -> None:
        """Refuse the session's access tokens from now until they would have expired."""
        ...
