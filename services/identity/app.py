"""Identity use cases: register, log in, refresh, log out, and look users up.

Refresh tokens rotate on every use. A refresh token presented after it was rotated out means two
parties hold the chain (a thief, or a client that lost the newer token), so the device's whole
session is revoked and both must log in again.

A session ends by logout, by a new login of its device, or by that revocation; in each case it is
revoked (``SessionRevocations``) before it is forgotten, so its access tokens stop working everywhere
within seconds instead of living until they expire.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.common.clock import utcnow
from services.common.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from services.common.ids import new_id
from services.common.tokens import AccessTokens, Principal
from services.identity.domain import (
    PASSWORD_MAX,
    USERNAME_MAX,
    Session,
    User,
    check_device_id,
    check_password,
    normalize_device_name,
    normalize_display_name,
    normalize_username,
    refresh_token_hash,
    wire_user,
)
from services.identity.passwords import Passwords
from services.identity.ports import SessionRevocations, SessionStore, UserStore

Clock = Callable[[], datetime]

BAD_CREDENTIALS = "wrong username or password"
BAD_REFRESH = "invalid refresh token"
REUSED_REFRESH = "refresh token was already used; the session is revoked, log in again"
SEARCH_LIMIT_MAX = 100
_REFRESH_TOKEN_MAX = 256  # ours are 43 characters; anything far longer is not worth hashing


@dataclass(frozen=True)
class Register:
    username: str
    password: str
    display_name: str | None = None


@dataclass(frozen=True)
class Login:
    username: str
    password: str
    device_id: str | None = None
    device_name: str | None = None


@dataclass(frozen=True)
class Refresh:
    refresh_token: str


@dataclass(frozen=True)
class SearchUsers:
    prefix: str = ""
    limit: int = 20


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    user_id: str
    device_id: str


async def register(cmd: Register, *, users: UserStore, passwords: Passwords, clock: Clock = utcnow) -> User:
    username = normalize_username(cmd.username)
    check_password(cmd.password, username)
    display_name = normalize_display_name(cmd.display_name, username)
    # Checked before hashing so a taken name costs no argon2 work; the store's unique key settles races.
    if await users.by_username(username) is not None:
        raise Conflict(f"username {username!r} is already taken")
    user = User(
        user_id=new_id(),
        username=username,
        display_name=display_name,
        password_hash=await passwords.hash(cmd.password),
        created_at=clock(),
    )
    await users.add(user)
    return user


async def login(
    cmd: Login,
    *,
    users: UserStore,
    sessions: SessionStore,
    revocations: SessionRevocations,
    passwords: Passwords,
    tokens: AccessTokens,
    refresh_ttl: timedelta,
    clock: Clock = utcnow,
) -> TokenPair:
    if cmd.device_id is None:
        device_id = new_id()
    else:
        check_device_id(cmd.device_id)
        device_id = cmd.device_id
    device_name = normalize_device_name(cmd.device_name)
    if len(cmd.password) > PASSWORD_MAX:
        # No registered password is this long; refusing before hashing says nothing about the user.
        raise Unauthorized(BAD_CREDENTIALS)
    user = await _find_by_username(cmd.username, users)
    # An unknown user is checked against a decoy hash, so both failures take as long.
    matches = await passwords.verify(user.password_hash if user else None, cmd.password)
    if user is None or not matches:
        raise Unauthorized(BAD_CREDENTIALS)
    if passwords.needs_rehash(user.password_hash):
        await users.set_password_hash(user.user_id, await passwords.hash(cmd.password))

    now = clock()
    await sessions.delete_expired(user.user_id, now=now)
    refresh_token = _new_refresh_token()
    session = Session(
        session_id=new_id(),
        user_id=user.user_id,
        device_id=device_id,
        device_name=device_name,
        refresh_hash=refresh_token_hash(refresh_token),
        refresh_expires_at=now + refresh_ttl,
        created_at=now,
    )
    replaced = await sessions.put(session)
    if replaced is not None:
        # The device logged in again: whoever still holds its previous tokens loses them too.
        await revocations.revoke(replaced)
    return _token_pair(session, refresh_token, tokens)


async def refresh(
    cmd: Refresh,
    *,
    sessions: SessionStore,
    revocations: SessionRevocations,
    tokens: AccessTokens,
    refresh_ttl: timedelta,
    clock: Clock = utcnow,
) -> TokenPair:
    if not cmd.refresh_token or len(cmd.refresh_token) > _REFRESH_TOKEN_MAX:
        raise Unauthorized(BAD_REFRESH)
    old_hash = refresh_token_hash(cmd.refresh_token)
    session = await sessions.by_refresh_hash(old_hash)
    if session is None:
        reused_in = await sessions.rotated_from(old_hash)
        if reused_in is not None:
            await _end_session(reused_in, sessions=sessions, revocations=revocations)
            raise Unauthorized(REUSED_REFRESH)
        raise Unauthorized(BAD_REFRESH)

    now = clock()
    if session.expired(now):
        await _end_session(session.session_id, sessions=sessions, revocations=revocations)
        raise Unauthorized("refresh token expired; log in again")
    new_token = _new_refresh_token()
    rotated = await sessions.rotate(
        session.session_id,
        old_hash=old_hash,
        new_hash=refresh_token_hash(new_token),
        expires_at=now + refresh_ttl,
        now=now,
    )
    if not rotated:
        # A concurrent refresh with the same token won the swap: the token was used twice.
        await _end_session(session.session_id, sessions=sessions, revocations=revocations)
        raise Unauthorized(REUSED_REFRESH)
    return _token_pair(session, new_token, tokens)


async def logout(principal: Principal, *, sessions: SessionStore, revocations: SessionRevocations) -> None:
    # Revoked first: if that fails the client is told so, and a retry with the same token still works.
    await revocations.revoke(principal.session_id)
    await sessions.delete_device(principal.user_id, principal.device_id)


async def get_user(user_id: str, *, users: UserStore) -> User:
    user = await users.get(user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id!r}")
    return user


async def search_users(cmd: SearchUsers, *, users: UserStore) -> list[User]:
    if not 1 <= cmd.limit <= SEARCH_LIMIT_MAX:
        raise InvalidRequest(f"limit must be between 1 and {SEARCH_LIMIT_MAX}")
    prefix = cmd.prefix.lower()
    if len(prefix) > USERNAME_MAX:
        return []
    return await users.search(prefix, limit=cmd.limit)


class UserDirectory:
    """What other services ask identity: which users exist, and their public profiles."""

    def __init__(self, users: UserStore) -> None:
        self._users = users

    async def missing(self, user_ids: Collection[str]) -> set[str]:
        wanted = set(user_ids)
        if not wanted:
            return set()
        return wanted - {user.user_id for user in await self._users.get_many(wanted)}

    async def profiles(self, user_ids: Collection[str]) -> dict[str, dict[str, str]]:
        wanted = set(user_ids)
        if not wanted:
            return {}
        return {user.user_id: wire_user(user) for user in await self._users.get_many(wanted)}


async def _end_session(session_id: str, *, sessions: SessionStore, revocations: SessionRevocations) -> None:
    await revocations.revoke(session_id)
    await sessions.delete(session_id)


async def _find_by_username(raw: str, users: UserStore) -> User | None:
    try:
        username = normalize_username(raw)
    except InvalidRequest:
        return None  # a name that could never be registered; still answered like a wrong password
    return await users.by_username(username)


def _new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def _token_pair(session: Session, refresh_token: str, tokens: AccessTokens) -> TokenPair:
    principal = Principal(user_id=session.user_id, device_id=session.device_id)
    return TokenPair(
        access_token=tokens.issue(principal, session_id=session.session_id),
        refresh_token=refresh_token,
        expires_in=tokens.ttl_s,
        user_id=session.user_id,
        device_id=session.device_id,
    )
