"""file's internal API (attach a file to a message) and the client the message service uses."""

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from services.common.contract import call, serve
from services.common.internal import InternalClient, RequireInternal
from services.file.app import FileShares


class Attach(BaseModel):
    file_id: str
    conversation_id: str
    user_id: str


class Attached(BaseModel):
    file_id: str
    name: str
    size: int
    content_type: str


@call("POST", "/internal/files/attach", Attach, Attached)
async def attach(shares: FileShares, body: Attach) -> Attached:
    return Attached.model_validate(await shares.attach(body.file_id, body.conversation_id, body.user_id))


def internal_router(shares: FileShares, guard: RequireInternal) -> APIRouter:
    return serve(shares, guard, [attach])


class FileSharesClient:
    """message's ``FileShares`` port over HTTP."""

    def __init__(self, client: InternalClient) -> None:
        self._client = client

    async def attach(self, file_id: str, conversation_id: str, user_id: str) -> dict[str, Any]:
        body = Attach(file_id=file_id, conversation_id=conversation_id, user_id=user_id)
        return (await attach.ask(self._client, body)).model_dump()
