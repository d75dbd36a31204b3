"""The user pool: deterministic names, created once with bounded parallelism, tokens cached.

Registration and login each cost the server an argon2 hash (about 0.4 s of CPU here), so the pool
is reused across runs: user ``i`` of pool ``u`` is always ``bench-u-00000i`` with the same password,
and the tokens are kept in ``.users-<target>.json`` beside the server's data (``Target.users_dir``:
``make up``'s infra directory, ``courier dev``'s data directory; ``bench/results`` for another URL).
A later run refreshes tokens (cheap) instead of logging in again, and only creates users it has never seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.client import Http, HttpError
from bench.progress import Progress
from bench.table import duration

PASSWORD = "bench password, loopback only"
DEVICE_ID = "bench"
SAVE_EVERY = 50


def username(pool: str, index: int) -> str:
    """``bench-u-000042``: valid (3-32 characters, starts with a letter) and stable across runs."""
    if not pool.isalnum() or not 0 <= index < 1_000_000:
        raise ValueError(f"bad pool {pool!r} or index {index}")
    return f"bench-{pool}-{index:06d}"


@dataclass
class BenchUser:
    username: str
    user_id: str
    access_token: str
    refresh_token: str
    device_id: str
    expires_at: float

    @classmethod
    def from_tokens(cls, name: str, data: dict[str, Any], *, now: float) -> BenchUser:
        return cls(
            name,
            str(data["user_id"]),
            str(data["access_token"]),
            str(data["refresh_token"]),
            str(data["device_id"]),
            now + float(data["expires_in"]),
        )


@dataclass
class UserCache:
    """The tokens of one target's pool and the conversations the scenarios reuse."""

    path: Path
    users: dict[str, BenchUser] = field(default_factory=dict)
    conversations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> UserCache:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls(path)
        users = {name: BenchUser(**fields) for name, fields in data.get("users", {}).items()}
        return cls(path, users, dict(data.get("conversations", {})))

    def save(self) -> None:
        """Atomically (a run interrupted while saving keeps the previous file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        data = {
            "users": {name: asdict(user) for name, user in self.users.items()},
            "conversations": self.conversations,
        }
        temporary.write_text(json.dumps(data))
        os.chmod(temporary, 0o600)
        temporary.replace(self.path)

    def forget(self) -> None:
        self.users.clear()
        self.conversations.clear()


class Pool:
    def __init__(self, http: Http, cache: UserCache, *, parallelism: int, progress: Progress) -> None:
        self.http = http
        self.cache = cache
        self.parallelism = parallelism
        self.progress = progress
        self.outcomes: Counter[str] = Counter()
        self._checked = False

    async def _ensure(self, name: str, *, valid_for_s: float, device: int = 0) -> BenchUser:
        """A user (or another device of it: its own login, its own socket) with a fresh token."""
        now = time.time()
        key = name if device == 0 else f"{name}#{device}"
        device_id = DEVICE_ID if device == 0 else f"{DEVICE_ID}-{device}"
        cached = self.cache.users.get(key)
        if cached is not None and cached.expires_at - now >= valid_for_s:
            self.outcomes["cached"] += 1
            return cached
        if cached is not None:
            try:
                user = BenchUser.from_tokens(name, await self.http.refresh(cached.refresh_token), now=now)
            except HttpError as exc:
                if exc.status != 401:
                    raise
            else:
                self.outcomes["refreshed"] += 1
                self.cache.users[key] = user
                return user
        created = device == 0 and await self.http.register(name, PASSWORD)
        try:
            user = BenchUser.from_tokens(name, await self.http.login(name, PASSWORD, device_id), now=now)
        except HttpError as exc:
            if exc.status != 401 or device == 0:
                raise
            created = await self.http.register(name, PASSWORD)  # a device of a user this server lost
            user = BenchUser.from_tokens(name, await self.http.login(name, PASSWORD, device_id), now=now)
        self.outcomes["created" if created else "logged in"] += 1
        self.cache.users[key] = user
        return user

    async def _check_cache(self, *, valid_for_s: float) -> None:
        """The cache may belong to an earlier server on the same port (data wiped, tokens still
        verifying): one user is checked against the server, and the cache dropped if unknown."""
        if self._checked or not self.cache.users:
            self._checked = True
            return
        self._checked = True
        probe = next(key for key in self.cache.users if "#" not in key)
        user = await self._ensure(probe, valid_for_s=valid_for_s)
        if await self.http.me(user.access_token) is None or user.username != probe:
            self.progress.note(f"user cache {self.cache.path.name} does not match this server; starting afresh")
            self.cache.forget()
            self.cache.save()

    async def users(self, pool: str, count: int, *, devices: int = 1, valid_for_s: float = 600.0) -> list[BenchUser]:
        """Users 0..count-1 of ``pool``, each with an access token valid ``valid_for_s`` more; with
        ``devices`` > 1, every user's further devices too (one login each, no registration), listed
        device by device: all first devices, then all second ones..."""
        wanted = [(username(pool, i), d) for d in range(devices) for i in range(count)]
        await self._check_cache(valid_for_s=valid_for_s)
        started = time.monotonic()
        done = 0
        slots = asyncio.Semaphore(self.parallelism)
        found: dict[tuple[str, int], BenchUser] = {}
        total = len(wanted)

        async def one(name: str, device: int) -> None:
            nonlocal done
            async with slots:
                found[(name, device)] = await self._ensure(name, valid_for_s=valid_for_s, device=device)
            done += 1
            if done % SAVE_EVERY == 0:
                self.cache.save()

        def status() -> str:
            elapsed = time.monotonic() - started
            speed = done / elapsed if elapsed > 0 else 0.0
            eta = (total - done) / speed if speed > 0 else 0.0
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
            return f"users {pool}: {done}/{total} ({outcomes}) {speed:.1f}/s, ETA {duration(eta)}"

        async with self.progress.ticking(status):
            try:
                await asyncio.gather(*(one(name, device) for name, device in wanted))
            finally:
                with contextlib.suppress(OSError):
                    self.cache.save()
        return [found[key] for key in wanted]
