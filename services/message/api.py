"""HTTP routes of the message service: send, history, read cursor, recall and edit."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, Field

from services.common.tokens import Principal
from services.common.web import Authenticate, TextRoute
from services.common.wire import MAX_INT, JsonSeq
from services.message import app
from services.message.service import MessageService

ConversationId = Annotated[str, Path(min_length=1, max_length=64)]
TargetSeq = Annotated[int, Path(ge=1, le=MAX_INT)]
QuerySeq = Annotated[int | None, Query(ge=0, le=MAX_INT)]


class SendBody(BaseModel):
    client_msg_id: str = Field(description="Client-chosen id; resending it returns the original message.")
    content: dict[str, Any] = Field(description="{type: text|file|call, ...}")


class ReadBody(BaseModel):
    seq: JsonSeq = Field(description="Everything up to this seq has been read.")


class EditBody(BaseModel):
    content: dict[str, Any]


def build_router(service: MessageService, auth: Authenticate) -> APIRouter:
    router = APIRouter(prefix="/v1/conversations", tags=["messages"], route_class=TextRoute)
    Caller = Annotated[Principal, Depends(auth)]

    @router.post("/{conversation_id}/messages", status_code=201)
    async def send(conversation_id: ConversationId, body: SendBody, caller: Caller, response: Response) -> Any:
        sent = await service.send(
            app.SendMessage(conversation_id, caller.user_id, caller.device_id, body.client_msg_id, body.content)
        )
        if not sent.created:
            response.status_code = 200
        return sent.message.to_wire()

    @router.get("/{conversation_id}/messages")
    async def history(
        conversation_id: ConversationId,
        caller: Caller,
        after_seq: QuerySeq = None,
        before_seq: QuerySeq = None,
        limit: Annotated[int | None, Query(ge=1, le=200)] = None,
    ) -> dict[str, Any]:
        page = await app.history(
            conversation_id, caller.user_id, after_seq=after_seq, before_seq=before_seq, limit=limit, deps=service.deps
        )
        return {"messages": [m.to_wire() for m in page.messages], "has_more": page.has_more}

    @router.post("/{conversation_id}/read", status_code=204)
    async def read(conversation_id: ConversationId, body: ReadBody, caller: Caller) -> Response:
        await service.mark_read(conversation_id, caller.user_id, body.seq)
        return Response(status_code=204)

    @router.post("/{conversation_id}/messages/{seq}/recall")
    async def recall(conversation_id: ConversationId, seq: TargetSeq, caller: Caller) -> Any:
        message = await app.recall(
            conversation_id, seq, by=caller.user_id, device_id=caller.device_id, deps=service.deps
        )
        return message.to_wire()

    @router.post("/{conversation_id}/messages/{seq}/edit")
    async def edit(conversation_id: ConversationId, seq: TargetSeq, body: EditBody, caller: Caller) -> Any:
        message = await app.edit(
            conversation_id, seq, body.content, by=caller.user_id, device_id=caller.device_id, deps=service.deps
        )
        return message.to_wire()

    return router
