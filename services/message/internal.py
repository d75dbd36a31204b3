"""message's internal API for delivery nodes (send, sync, read) and conversation (activity), with
the HTTP client that implements their ports."""

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from services.common.clock import rfc3339
from services.common.internal import InternalClient, RequireInternal
from services.conversation.domain import Activity as ConversationActivity
from services.conversation.domain import Conversation as ConversationRecord
from services.message import app
from services.message.domain import Message
from services.message.ports import Conversation
from services.message.service import MessageService


class SendBody(BaseModel):
    conversation_id: str
    sender_id: str
    sender_device_id: str
    client_msg_id: Any
    content: Any


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
        sent = await service.send(
            app.SendMessage(
                body.conversation_id, body.sender_id, body.sender_device_id, body.client_msg_id, body.content
            )
        )
        return {"message": sent.message.to_wire(), "created": sent.created}

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


class MessagesClient:
    """delivery's ``Messages`` port and conversation's ``ActivityReader`` over HTTP."""

    def __init__(self, client: InternalClient) -> None:
        self._client = client

    async def send(self, cmd: app.SendMessage) -> app.Sent:
        answer = await self._client.call(
            "POST",
            "/internal/messages/send",
            {
                "conversation_id": cmd.conversation_id,
                "sender_id": cmd.sender_id,
                "sender_device_id": cmd.sender_device_id,
                "client_msg_id": cmd.client_msg_id,
                "content": cmd.content,
            },
        )
        return app.Sent(Message.from_wire(answer["message"]), bool(answer["created"]))

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
