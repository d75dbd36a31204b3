"""message's internal API for delivery nodes (send, sync, read) and conversation (activity), with
the HTTP client that implements their ports."""

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from services.common.batching import Batcher
from services.common.clock import rfc3339
from services.common.errors import CourierError, Unavailable, from_body
from services.common.internal import InternalClient, RequireInternal
from services.conversation.domain import Activity as ConversationActivity
from services.conversation.domain import Conversation as ConversationRecord
from services.message import app
from services.message.domain import Message
from services.message.ports import Conversation
from services.message.service import MessageService

log = logging.getLogger("courier.message.internal")

MAX_SEND_BATCH = 500


class SendBody(BaseModel):
    conversation_id: str
    sender_id: str
    sender_device_id: str
    client_msg_id: Any
    content: Any

    def to_command(self) -> app.SendMessage:
        return app.SendMessage(
            self.conversation_id, self.sender_id, self.sender_device_id, self.client_msg_id, self.content
        )


class SendBatchBody(BaseModel):
    sends: list[SendBody] = Field(max_length=MAX_SEND_BATCH)


class SyncBody(BaseModel):
    user_id: str
    cursors: dict[str, int] = {}
    limit: int | None = None


class ReadBody(BaseModel):
    conversation_id: str
    user_id: str
    seq: int


class ConversationView(BaseModel):
    conversation_id: str
    roles: dict[str, str]
    large: bool


class ActivityBody(BaseModel):
    user_id: str
    conversations: list[ConversationView]


def internal_router(service: MessageService, guard: RequireInternal) -> APIRouter:
    router = APIRouter(prefix="/internal/messages", dependencies=[Depends(guard)], include_in_schema=False)

    @router.post("/send")
    async def send(body: SendBody) -> dict[str, Any]:
        """One send: what delivery nodes of the previous release send during a rolling upgrade."""
        return _sent(await service.send(body.to_command()))

    @router.post("/send/batch")
    async def send_batch(body: SendBatchBody) -> dict[str, Any]:
        """Several independent sends, one answer each in their order: ``{message, created}`` or the
        error that send alone would have answered. They run concurrently, so the store commits them
        together; a device never has two sends in one batch, as it waits for each ``send_ack``."""
        outcomes = await asyncio.gather(*(service.send(s.to_command()) for s in body.sends), return_exceptions=True)
        return {"results": [_send_result(outcome) for outcome in outcomes]}

    @router.post("/sync")
    async def sync(body: SyncBody) -> dict[str, Any]:
        synced = await service.sync(body.user_id, body.cursors, limit=body.limit)
        return {
            "conversations": [
                {
                    "conversation_id": s.conversation_id,
                    "messages": [m.to_wire() for m in s.messages],
                    "has_more": s.has_more,
                }
                for s in synced
            ]
        }

    @router.post("/read")
    async def read(body: ReadBody) -> dict[str, Any]:
        return {"seq": await service.mark_read(body.conversation_id, body.user_id, body.seq)}

    @router.post("/activity")
    async def activity(body: ActivityBody) -> dict[str, Any]:
        views = [Conversation(c.conversation_id, c.roles, c.large) for c in body.conversations]
        found = await service.activity(body.user_id, views)
        return {
            "activity": {
                cid: {
                    "max_seq": a.max_seq,
                    "read_seq": a.read_seq,
                    "unread_count": a.unread_count,
                    "last_message": a.last_message,
                    "last_activity_at": rfc3339(a.last_activity_at) if a.last_activity_at else None,
                }
                for cid, a in found.items()
            }
        }

    return router


def _sent(sent: app.Sent) -> dict[str, Any]:
    return {"message": sent.message.to_wire(), "created": sent.created}


def _send_result(outcome: app.Sent | BaseException) -> dict[str, Any]:
    if isinstance(outcome, app.Sent):
        return _sent(outcome)
    if isinstance(outcome, CourierError):
        return {"status": outcome.status, **outcome.body()}
    if not isinstance(outcome, Exception):
        raise outcome  # cancelled: the whole request goes
    log.error("a send of a batch failed", exc_info=outcome)
    return {"status": 503, **Unavailable("the send failed; retry it with the same client_msg_id").body()}


class MessagesClient:
    """delivery's ``Messages`` port and conversation's ``ActivityReader`` over HTTP. Sends leave in
    batches (``Batcher``): one request in flight, carrying every send that arrived meanwhile."""

    def __init__(self, client: InternalClient, *, max_batch: int = MAX_SEND_BATCH) -> None:
        self._client = client
        self._sends: Batcher[app.SendMessage, app.Sent] = Batcher(self._send_batch, max_batch=max_batch)

    async def send(self, cmd: app.SendMessage) -> app.Sent:
        return await self._sends.submit(cmd)

    async def _send_batch(self, cmds: list[app.SendMessage]) -> list[app.Sent | CourierError]:
        answer = await self._client.call(
            "POST",
            "/internal/messages/send/batch",
            {
                "sends": [
                    {
                        "conversation_id": cmd.conversation_id,
                        "sender_id": cmd.sender_id,
                        "sender_device_id": cmd.sender_device_id,
                        "client_msg_id": cmd.client_msg_id,
                        "content": cmd.content,
                    }
                    for cmd in cmds
                ]
            },
        )
        return [
            app.Sent(Message.from_wire(r["message"]), bool(r["created"]))
            if "message" in r
            else from_body(int(r.get("status", 503)), r)
            for r in answer["results"]
        ]

    async def sync(
        self, user_id: str, cursors: Mapping[str, int], *, limit: int | None = None
    ) -> list[app.SyncedConversation]:
        answer = await self._client.call(
            "POST", "/internal/messages/sync", {"user_id": user_id, "cursors": dict(cursors), "limit": limit}
        )
        return [
            app.SyncedConversation(
                c["conversation_id"], [Message.from_wire(m) for m in c["messages"]], bool(c["has_more"])
            )
            for c in answer["conversations"]
        ]

    async def mark_read(self, conversation_id: str, user_id: str, seq: int) -> int:
        answer = await self._client.call(
            "POST", "/internal/messages/read", {"conversation_id": conversation_id, "user_id": user_id, "seq": seq}
        )
        return int(answer["seq"])

    async def activity(
        self, user_id: str, conversations: Sequence[ConversationRecord]
    ) -> Mapping[str, ConversationActivity]:
        answer = await self._client.call(
            "POST",
            "/internal/messages/activity",
            {
                "user_id": user_id,
                "conversations": [
                    {
                        "conversation_id": c.conversation_id,
                        "roles": {u: str(r) for u, r in c.members.items()},
                        "large": c.large,
                    }
                    for c in conversations
                ],
            },
        )
        return {
            cid: ConversationActivity(
                a["max_seq"],
                a["read_seq"],
                a["unread_count"],
                a["last_message"],
                datetime.fromisoformat(a["last_activity_at"].replace("Z", "+00:00")) if a["last_activity_at"] else None,
            )
            for cid, a in answer["activity"].items()
        }
