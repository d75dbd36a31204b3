"""Access tokens: HS256 JWTs carrying a key id, so signing keys rotate without logging anyone out.

identity issues them; the gateway, the delivery nodes and every service verify them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from services.common.errors import Unauthorized
from services.common.settings import JwtSettings


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user and the device the access token was issued to."""

    user_id: str
    device_id: str


class AccessTokens:
    def __init__(self, settings: JwtSettings) -> None:
        if settings.active_kid not in settings.keys:
            raise ValueError(f"active signing key {settings.active_kid!r} is not among the keys")
        self._settings = settings

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
                options={"require": ["exp", "sub", "did"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("access token expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("invalid access token") from exc
        return Principal(user_id=str(claims["sub"]), device_id=str(claims["did"]))


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if there is one."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
