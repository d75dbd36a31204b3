"""Access tokens: HS256 JWTs carrying a key id, so signing keys rotate without logging anyone out.

identity issues them; the gateway, the delivery nodes and every service verify them, against the
signature, the expiry and this process's set of revoked sessions (``RevokedSessions``): a token of a
session that was logged out, replaced by a new login of its device, or revoked for refresh-token reuse
is refused although it has not expired yet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from services.common.errors import Unauthorized
from services.common.settings import JwtSettings

REVOKED = "access token revoked; log in again"
_PRUNE_EVERY_S = 60.0


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user and the device the access token was issued to, and the device's session."""

    user_id: str
    device_id: str
    session_id: str = ""


class RevokedSessions:
    """The session ids whose access tokens this process refuses, each until every token of it has expired.

    Filled by identity's revocations: directly in one process, followed from Redis in the distributed
    mode (``services.common.revocation``). Checked synchronously on every verification, so it is a
    plain dict; ``changed`` wakes the one task that closes revoked sockets (delivery).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._until: dict[str, float] = {}
        self._clock = clock
        self._next_prune = clock() + _PRUNE_EVERY_S
        self._changed = asyncio.Event()

    def add(self, session_id: str, until: float) -> None:
        """Refuse ``session_id`` until ``until`` (epoch seconds, at or after its last token's expiry)."""
        now = self._clock()
        if now >= self._next_prune:
            self._until = {sid: end for sid, end in self._until.items() if end > now}
            self._next_prune = now + _PRUNE_EVERY_S
        if until > max(now, self._until.get(session_id, 0.0)):
            self._until[session_id] = until
            self._changed.set()

    def __contains__(self, session_id: object) -> bool:
        until = self._until.get(session_id) if isinstance(session_id, str) else None
        return until is not None and until > self._clock()

    def __len__(self) -> int:
        return len(self._until)

    async def changed(self) -> None:
        """Return once a session was revoked since the previous call (for one waiting task)."""
        await self._changed.wait()
        self._changed.clear()


class AccessTokens:
    def __init__(self, settings: JwtSettings, *, revoked: RevokedSessions | None = None) -> None:
        if settings.active_kid not in settings.keys:
            raise ValueError(f"active signing key {settings.active_kid!r} is not among the keys")
        self._settings = settings
        self.revoked = revoked if revoked is not None else RevokedSessions()

    @property
    def ttl_s(self) -> int:
        return self._settings.access_ttl_s

    def issue(self, principal: Principal, *, session_id: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self._settings.issuer,
            "sub": principal.user_id,
            "did": principal.device_id,
            "sid": session_id,
            "iat": now,
            "exp": now + self._settings.access_ttl_s,
        }
        kid = self._settings.active_kid
        return jwt.encode(claims, self._settings.keys[kid], algorithm="HS256", headers={"kid": kid})

    def verify(self, token: str) -> Principal:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._settings.keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise Unauthorized("access token signed with an unknown key")
            claims = jwt.decode(
                token,
                key,
                algorithms=["HS256"],
                issuer=self._settings.issuer,
                # Every token names its session, so every token can be revoked.
                options={"require": ["exp", "sub", "did", "sid"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("access token expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("invalid access token") from exc
        session_id = str(claims["sid"])
        if session_id in self.revoked:
            raise Unauthorized(REVOKED)
        return Principal(user_id=str(claims["sub"]), device_id=str(claims["did"]), session_id=session_id)


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if there is one."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
