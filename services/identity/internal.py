"""identity's internal API for the other services, and the HTTP client that calls it."""

from collections.abc import Collection
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from services.common.internal import InternalClient, RequireInternal
from services.identity.app import UserDirectory


class UserIds(BaseModel):
    user_ids: list[str]


def internal_router(directory: UserDirectory, guard: RequireInternal) -> APIRouter:
    router = APIRouter(prefix="/internal/identity", dependencies=[Depends(guard)], include_in_schema=False)

    @router.post("/missing")
    async def missing(body: UserIds) -> dict[str, Any]:
        return {"missing": sorted(await directory.missing(body.user_ids))}

    @router.post("/profiles")
    async def profiles(body: UserIds) -> dict[str, Any]:
        return {"profiles": await directory.profiles(body.user_ids)}

    return router


class IdentityClient:
    """conversation's ``UserDirectory`` port over HTTP."""

    def __init__(self, client: InternalClient) -> None:
        self._client = client

    async def missing(self, user_ids: Collection[str]) -> set[str]:
        answer = await self._client.call("POST", "/internal/identity/missing", {"user_ids": list(user_ids)})
        return set(answer["missing"])

    async def profiles(self, user_ids: Collection[str]) -> dict[str, dict[str, str]]:
        answer = await self._client.call("POST", "/internal/identity/profiles", {"user_ids": list(user_ids)})
        return dict(answer["profiles"])
