"""file's internal API (attach a file to a message) and the client the message service uses."""

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from services.common.internal import InternalClient, RequireInternal
from services.file.app import FileShares


class Attach(BaseModel):
    file_id: str
    conversation_id: str
    user_id: str


def internal_router(shares: FileShares, guard: RequireInternal) -> APIRouter:
    router = APIRouter(prefix="/internal/files", dependencies=[Depends(guard)], include_in_schema=False)

    @router.post("/attach")
    async def attach(body: Attach) -> dict[str, Any]:
        return await shares.attach(body.file_id, body.conversation_id, body.user_id)

    return router


class FileSharesClient:
    def __init__(self, client: InternalClient) -> None:
        self._client = client

    async def attach(self, file_id: str, conversation_id: str, user_id: str) -> dict[str, Any]:
        body = {"file_id": file_id, "conversation_id": conversation_id, "user_id": user_id}
        return dict(await self._client.call("POST", "/internal/files/attach", body))
