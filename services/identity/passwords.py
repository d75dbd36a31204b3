"""argon2 password hashing kept off the event loop, with a bounded number of hashes at once."""

from __future__ import annotations

import asyncio
import os

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from services.common.settings import PasswordSettings


def password_hasher(settings: PasswordSettings) -> PasswordHasher:
    """The argon2id hasher with the configured cost."""
    return PasswordHasher(
        time_cost=settings.time_cost, memory_cost=settings.memory_kib, parallelism=settings.parallelism
    )


class Passwords:
    """Hash and verify in worker threads; each argon2 call holds ``memory_cost`` KiB for its
    duration, so a burst of logins is limited to ``concurrency`` hashes at once."""

    def __init__(self, hasher: PasswordHasher | None = None, *, concurrency: int | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        self._slots = asyncio.Semaphore(concurrency or os.cpu_count() or 4)
        self._decoy: str | None = None

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches. Without a hash (unknown user) a decoy hash is verified
        instead, so the answer takes as long as for a real user with a wrong password."""
        if password_hash is None:
            if self._decoy is None:
                self._decoy = await self.hash("decoy password that no user has")
            await self._verify(self._decoy, password)
            return False
        return await self._verify(password_hash, password)

    async def _verify(self, password_hash: str, password: str) -> bool:
        async with self._slots:
            try:
                return await asyncio.to_thread(self._hasher.verify, password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash was made with other parameters than the hasher's current ones."""
        return self._hasher.check_needs_rehash(password_hash)
