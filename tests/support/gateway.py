"""Pieces of the distributed gateway for tests on loopback: a limiter that allows everything, and a front."""

from __future__ import annotations

import socket
from collections.abc import Mapping

from services.common.errors import RateLimited
from services.common.ring import RingSource
from services.common.settings import JwtSettings
from services.common.tokens import AccessTokens
from services.gateway.front import Front

TOKENS = AccessTokens(JwtSettings(keys={"k1": "test-secret-of-at-least-32-bytes-long!"}, active_kid="k1"))
INTERNAL_TOKEN = "t" * 32


class AllowAll:
    async def check(self, *, ip: str, user_id: str | None) -> None:
        return None


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RefuseAll:
    """A limiter over its limit: every request is refused, to be tried again in ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after

    async def check(self, *, ip: str, user_id: str | None) -> None:
        raise RateLimited("ip rate limit exceeded", retry_after=self.retry_after)


def front(nodes: Mapping[str, str], limiter: AllowAll | RefuseAll | None = None) -> Front:
    """A front over a ring of ``nodes`` (name -> URL), limiting nothing unless given a ``limiter``, its HTTP
    upstream a closed port."""
    return Front(
        ring=RingSource(nodes=dict(nodes)),
        tokens=TOKENS,
        limiter=limiter or AllowAll(),
        http_upstream=("127.0.0.1", closed_port()),
        internal_token=INTERNAL_TOKEN,
    )
