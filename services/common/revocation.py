"""Revoking sessions: identity records a revoked session id, every verifier of access tokens refuses it.

A revocation lasts ``ttl_s``: the access token's lifetime plus a margin for clocks that disagree, after
which every token of the session has expired on its own. ``MemoryRevocations`` writes straight into the
process's ``RevokedSessions`` (``courier dev``, or a process without Redis). ``RedisRevocations`` also
appends the revocation to one Redis stream, ``revoked-sessions``, which every process of the distributed
mode reads every ``poll_s`` (half a second), so a revocation reaches them all within about that. The
stream is trimmed to the entries younger than ``ttl_s`` and expires when nothing is revoked for that long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from services.common.errors import Unavailable
from services.common.redis import reply_text, unavailable
from services.common.tokens import RevokedSessions

log = logging.getLogger("courier.revocation")

CLOCK_MARGIN_S = 60.0
"""Added to the access token's lifetime: a revocation outlives the token even on a clock this far behind."""


class MemoryRevocations:
    """Revocations seen by this process alone."""

    def __init__(self, revoked: RevokedSessions, *, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._revoked = revoked
        self._ttl_s = ttl_s
        self._clock = clock

    async def revoke(self, session_id: str) -> None:
        self._revoked.add(session_id, self._clock() + self._ttl_s)


class RedisRevocations:
    """Revocations shared by every process through a Redis stream.

    ``revoke`` appends (identity); ``run`` follows the stream into this process's ``RevokedSessions``
    (every process, identity included, so a revocation made by another identity replica counts here too).
    """

    def __init__(
        self,
        client: Redis,
        revoked: RevokedSessions,
        *,
        ttl_s: float,
        prefix: str = "courier:",
        poll_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.revoked = revoked
        self._ttl_s = ttl_s
        self._key = f"{prefix}revoked-sessions"
        self._poll_s = poll_s
        self._clock = clock
        self._cursor = "0-0"  # the id of the last entry read; a new process reads the whole (trimmed) stream

    async def revoke(self, session_id: str) -> None:
        now = self._clock()
        until = now + self._ttl_s
        oldest_ms = int((now - self._ttl_s) * 1000)  # entry ids are Redis's milliseconds
        with unavailable("revoking a session"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xadd(self._key, {"sid": session_id, "until": f"{until:.3f}"}, minid=oldest_ms, approximate=True)
                pipe.pexpire(self._key, int(self._ttl_s * 1000))
                await pipe.execute()
        self.revoked.add(session_id, until)

    async def catch_up(self) -> int:
        """Read every revocation not seen yet, without waiting for new ones; returns how many were read."""
        total = 0
        while True:
            read = await self._read()
            total += read
            if read < _BATCH:
                return total

    async def run(self) -> None:
        """Follow the stream for as long as the process runs; while Redis is away the set stays as it was.

        It polls (``poll_s``) rather than blocking in ``XREAD``: a task cancelled inside a blocking read
        of redis-py can miss its cancellation and never end, which would hang the process's shutdown.
        """
        healthy = True
        while True:
            try:
                await self.catch_up()
            except Unavailable as exc:
                if healthy:
                    log.warning("cannot follow revoked sessions (%s); retrying", exc.message)
                    healthy = False
            else:
                if not healthy:
                    log.info("following revoked sessions again")
                    healthy = True
            await asyncio.sleep(self._poll_s)

    async def start(self) -> None:
        """Before serving: learn the revocations made while this process was away (best effort)."""
        try:
            await self.catch_up()
        except Unavailable as exc:
            log.warning("revoked sessions not loaded at start (%s); following them once Redis answers", exc.message)

    async def _read(self) -> int:
        with unavailable("reading revoked sessions"):
            answer: Any = await self._client.xread({self._key: self._cursor}, count=_BATCH)
        entries = answer[0][1] if answer else []
        for entry_id, fields in entries:
            self._cursor = reply_text(entry_id)
            entry = {reply_text(name): reply_text(value) for name, value in fields.items()}
            try:
                self.revoked.add(entry["sid"], float(entry["until"]))
            except (KeyError, ValueError):
                log.warning("skipping a malformed revocation %s", self._cursor)
        return len(entries)


_BATCH = 500
