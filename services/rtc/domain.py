"""ICE servers handed to call clients: STUN as configured, and TURN with time-limited credentials
of coturn's TURN REST API scheme (``use-auth-secret``), which the TURN server checks with the same
shared secret and no call back to Courier."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class IceServer:
    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None


def turn_credentials(secret: str, user_id: str, *, expires_at: int) -> tuple[str, str]:
    """The username ``"<expiry unix time>:<user id>"`` and its credential, base64(HMAC-SHA1)."""
    username = f"{expires_at}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers(
    *,
    stun_urls: Sequence[str],
    turn_urls: Sequence[str],
    turn_secret: str,
    ttl_s: int,
    user_id: str,
    now: float,
) -> list[IceServer]:
    """STUN urls as one entry; TURN urls as another only when both they and the secret are set."""
    servers = []
    if stun_urls:
        servers.append(IceServer(urls=tuple(stun_urls)))
    if turn_urls and turn_secret:
        username, credential = turn_credentials(turn_secret, user_id, expires_at=int(now) + ttl_s)
        servers.append(IceServer(urls=tuple(turn_urls), username=username, credential=credential))
    return servers
