"""HTTP routes of identity (``/v1/auth/*``, ``/v1/users*``): translate requests to use cases."""

# No postponed annotations here: FastAPI must resolve the route signatures, which use the local
# ``Caller`` alias bound to the ``auth`` dependency this router is built with.

from datetime import timedelta
from typing import Annotated, Self

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel

from services.common.clock import utcnow
from services.common.tokens import AccessTokens, Principal
from services.common.web import Authenticate, TextRoute
from services.identity import app
from services.identity.app import Clock
from services.identity.domain import User, wire_user
from services.identity.passwords import Passwords
from services.identity.ports import SessionRevocations, SessionStore, UserStore


class RegisterBody(BaseModel):
    username: str
    password: str
    display_name: str | None = None


class LoginBody(BaseModel):
    username: str
    password: str
    device_id: str | None = None
    device_name: str | None = None


class RefreshBody(BaseModel):
    refresh_token: str


class UserOut(BaseModel):
    user_id: str
    username: str
    display_name: str

    @classmethod
    def of(cls, user: User) -> Self:
        return cls(**wire_user(user))


class UsersOut(BaseModel):
    users: list[UserOut]


class TokensOut(BaseModel):
    access_token: str
    refresh_token: str
    expires_in: int
    user_id: str
    device_id: str

    @classmethod
    def of(cls, pair: app.TokenPair) -> Self:
        return cls(
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            expires_in=pair.expires_in,
            user_id=pair.user_id,
            device_id=pair.device_id,
        )


def create_router(
    *,
    users: UserStore,
    sessions: SessionStore,
    revocations: SessionRevocations,
    passwords: Passwords,
    tokens: AccessTokens,
    auth: Authenticate,
    refresh_ttl: timedelta,
    clock: Clock = utcnow,
) -> APIRouter:
    router = APIRouter(tags=["identity"], route_class=TextRoute)
    Caller = Annotated[Principal, Depends(auth)]

    @router.post("/v1/auth/register", status_code=201)
    async def register(body: RegisterBody) -> UserOut:
        cmd = app.Register(username=body.username, password=body.password, display_name=body.display_name)
        return UserOut.of(await app.register(cmd, users=users, passwords=passwords, clock=clock))

    @router.post("/v1/auth/login")
    async def login(body: LoginBody) -> TokensOut:
        cmd = app.Login(
            username=body.username, password=body.password, device_id=body.device_id, device_name=body.device_name
        )
        pair = await app.login(
            cmd,
            users=users,
            sessions=sessions,
            revocations=revocations,
            passwords=passwords,
            tokens=tokens,
            refresh_ttl=refresh_ttl,
            clock=clock,
        )
        return TokensOut.of(pair)

    @router.post("/v1/auth/refresh")
    async def refresh(body: RefreshBody) -> TokensOut:
        cmd = app.Refresh(refresh_token=body.refresh_token)
        pair = await app.refresh(
            cmd, sessions=sessions, revocations=revocations, tokens=tokens, refresh_ttl=refresh_ttl, clock=clock
        )
        return TokensOut.of(pair)

    @router.post("/v1/auth/logout", status_code=204)
    async def logout(principal: Caller) -> Response:
        await app.logout(principal, sessions=sessions, revocations=revocations)
        return Response(status_code=204)

    @router.get("/v1/users/me")
    async def me(principal: Caller) -> UserOut:
        return UserOut.of(await app.get_user(principal.user_id, users=users))

    @router.get("/v1/users/{user_id}")
    async def user(user_id: str, _principal: Caller) -> UserOut:
        return UserOut.of(await app.get_user(user_id, users=users))

    @router.get("/v1/users")
    async def search(
        _principal: Caller,
        prefix: Annotated[str, Query(max_length=64, description="Start of the username (case-insensitive).")] = "",
        limit: Annotated[int, Query(description="Most users returned, 1-100.")] = 20,
    ) -> UsersOut:
        found = await app.search_users(app.SearchUsers(prefix=prefix, limit=limit), users=users)
        return UsersOut(users=[UserOut.of(user) for user in found])

    return router
