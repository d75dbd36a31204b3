"""Pieces of the distributed gateway for tests on loopback: a limiter that allows everything, and a front."""

from __future__ import annotations

import socket
from collections.abc import Mapping

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


def front(nodes: Mapping[str, str]) -> Front:
    """A front over a ring of ``nodes`` (name -> URL), limiting nothing, its HTTP upstream a closed port."""
    return Front(
        ring=RingSource(nodes=dict(nodes)),
        tokens=TOKENS,
        limiter=AllowAll(),
        http_upstream=("127.0.0.1", closed_port()),
        internal_token=INTERNAL_TOKEN,
    )
