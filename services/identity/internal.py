"""identity's internal API: which users exist and their profiles (for conversation), and the client
that implements conversation's ``UserDirectory`` over it."""

from collections.abc import Collection

from fastapi import APIRouter
from pydantic import BaseModel

from services.common.contract import call, serve
from services.common.internal import InternalClient, RequireInternal
from services.identity.app import UserDirectory


class UserIds(BaseModel):
    user_ids: list[str]


class Missing(BaseModel):
    missing: list[str]


class Profiles(BaseModel):
    profiles: dict[str, dict[str, str]]


@call("POST", "/internal/identity/missing", UserIds, Missing)
async def missing(directory: UserDirectory, body: UserIds) -> Missing:
    return Missing(missing=sorted(await directory.missing(body.user_ids)))


@call("POST", "/internal/identity/profiles", UserIds, Profiles)
async def profiles(directory: UserDirectory, body: UserIds) -> Profiles:
    return Profiles(profiles=await directory.profiles(body.user_ids))


def internal_router(directory: UserDirectory, guard: RequireInternal) -> APIRouter:
    return serve(directory, guard, [missing, profiles])


class IdentityClient:
    """conversation's ``UserDirectory`` port over HTTP."""

    def __init__(self, client: InternalClient) -> None:
        self._client = client

    async def missing(self, user_ids: Collection[str]) -> set[str]:
        return set((await missing.ask(self._client, UserIds(user_ids=list(user_ids)))).missing)

    async def profiles(self, user_ids: Collection[str]) -> dict[str, dict[str, str]]:
        return (await profiles.ask(self._client, UserIds(user_ids=list(user_ids)))).profiles
