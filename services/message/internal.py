"""message's internal API for delivery nodes (send, sync, read) and conversation (activity), with
the HTTP client that implements their ports."""

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, BeforeValidator, Discriminator, Field, PlainSerializer, Tag

from services.common.batching import Batcher
from services.common.clock import rfc3339
from services.common.contract import call, serve
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


def _parse_time(value: object) -> object:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value


Timestamp = Annotated[datetime, BeforeValidator(_parse_time), PlainSerializer(rfc3339, return_type=str)]
"""An RFC 3339 time on the wire (``rfc3339``: milliseconds, ``Z``), a timezone-aware datetime here."""


class Send(BaseModel):
    conversation_id: str
    sender_id: str
    sender_device_id: str
    client_msg_id: Any  # checked by the use case, which answers what is wrong with it
    content: Any

    @classmethod
    def of(cls, cmd: app.SendMessage) -> "Send":
        return cls.model_validate(cmd, from_attributes=True)

    def to_command(self) -> app.SendMessage:
        return app.SendMessage(
            self.conversation_id, self.sender_id, self.sender_device_id, self.client_msg_id, self.content
        )


class Sends(BaseModel):
    sends: list[Send] = Field(max_length=MAX_SEND_BATCH)


class Stored(BaseModel):
    """A send's answer: the message (``Message.to_wire``) and whether this send stored it."""

    message: dict[str, Any]
    created: bool

    @classmethod
    def of(cls, sent: app.Sent) -> "Stored":
        return cls(message=sent.message.to_wire(), created=sent.created)

    def to_sent(self) -> app.Sent:
        return app.Sent(Message.from_wire(self.message), self.created)


class ErrorBody(BaseModel):
    code: str
    message: str


class Failed(BaseModel):
    """A send of a batch that failed: the status and protocol error body it alone would have answered."""

    status: int = 503
    error: ErrorBody

    @classmethod
    def of(cls, error: CourierError) -> "Failed":
        return cls.model_validate({"status": error.status, **error.body()})


def _outcome(item: object) -> str:
    """Which of the two an item is: a send that stored its message has one (as the previous client told)."""
    return "stored" if isinstance(item, Stored) or (isinstance(item, dict) and "message" in item) else "failed"


Outcome = Annotated[Annotated[Stored, Tag("stored")] | Annotated[Failed, Tag("failed")], Discriminator(_outcome)]


class Outcomes(BaseModel):
    results: list[Outcome]


class SyncRequest(BaseModel):
    user_id: str
    cursors: dict[str, int] = {}
    limit: int | None = None


class SyncedMessages(BaseModel):
    conversation_id: str
    messages: list[dict[str, Any]]
    has_more: bool


class Synced(BaseModel):
    conversations: list[SyncedMessages]


class Read(BaseModel):
    conversation_id: str
    user_id: str
    seq: int


class ReadSeq(BaseModel):
    seq: int


class ConversationView(BaseModel):
    conversation_id: str
    roles: dict[str, str]
    large: bool


class ActivityRequest(BaseModel):
    user_id: str
    conversations: list[ConversationView]


class ActivityView(BaseModel):
    max_seq: int
    read_seq: int
    unread_count: int
    last_message: dict[str, Any] | None
    last_activity_at: Timestamp | None


class Activities(BaseModel):
    activity: dict[str, ActivityView]


@call("POST", "/internal/messages/send", Send, Stored)
async def send(service: MessageService, body: Send) -> Stored:
    """One send: what delivery nodes of the previous release send during a rolling upgrade."""
    return Stored.of(await service.send(body.to_command()))


@call("POST", "/internal/messages/send/batch", Sends, Outcomes)
async def send_many(service: MessageService, body: Sends) -> Outcomes:
    """Several sends, one answer each in their order: ``{message, created}`` or the error that send
    alone would have answered. They are committed together, and the sends of one device to one
    conversation in their order (a socket's sends in flight together)."""
    outcomes = await service.send_many([s.to_command() for s in body.sends])
    return Outcomes(results=[_send_result(outcome) for outcome in outcomes])


def _raised(outcome: app.Sent | BaseException) -> app.Sent | Exception:
    """A gathered outcome; a cancellation is raised rather than answered."""
    if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
        raise outcome
    return outcome


def _send_result(outcome: app.Sent | BaseException) -> Stored | Failed:
    if isinstance(outcome, app.Sent):
        return Stored.of(outcome)
    if isinstance(outcome, CourierError):
        return Failed.of(outcome)
    if not isinstance(outcome, Exception):
        raise outcome  # cancelled: the whole request goes
    log.error("a send of a batch failed", exc_info=outcome)
    return Failed.of(Unavailable("the send failed; retry it with the same client_msg_id"))


@call("POST", "/internal/messages/sync", SyncRequest, Synced)
async def sync(service: MessageService, body: SyncRequest) -> Synced:
    synced = await service.sync(body.user_id, body.cursors, limit=body.limit)
    return Synced(
        conversations=[
            SyncedMessages(
                conversation_id=s.conversation_id, messages=[m.to_wire() for m in s.messages], has_more=s.has_more
            )
            for s in synced
        ]
    )


@call("POST", "/internal/messages/read", Read, ReadSeq)
async def mark_read(service: MessageService, body: Read) -> ReadSeq:
    return ReadSeq(seq=await service.mark_read(body.conversation_id, body.user_id, body.seq))


@call("POST", "/internal/messages/activity", ActivityRequest, Activities)
async def activity(service: MessageService, body: ActivityRequest) -> Activities:
    views = [Conversation(c.conversation_id, c.roles, c.large) for c in body.conversations]
    found = await service.activity(body.user_id, views)
    return Activities(
        activity={
            cid: ActivityView(
                max_seq=a.max_seq,
                read_seq=a.read_seq,
                unread_count=a.unread_count,
                last_message=None if a.last_message is None else dict(a.last_message),
                last_activity_at=a.last_activity_at,
            )
            for cid, a in found.items()
        }
    )


def internal_router(service: MessageService, guard: RequireInternal) -> APIRouter:
    return serve(service, guard, [send, send_many, sync, mark_read, activity])


# Send requests one delivery node keeps in flight to the message service: a slow batch (a long group
# commit) holds back only its own sends.
SENDS_IN_FLIGHT = 4
# A send request leaves at most this often (seconds) after the last one, or as soon as every device of the last one
# has sent again: under load each request carries the sends of several devices, where without it most carried one;
# idle, and for one device alone, a send leaves at once (docs/performance.md 22). 16 ms rather than 8 since a socket's
# sends no longer wait for each other's answers (docs/performance.md 27).
SEND_INTERVAL_S = 0.016


class MessagesClient:
    """delivery's ``Messages`` port and conversation's ``ActivityReader`` over HTTP. Sends leave in
    batches (``Batcher``): up to ``SENDS_IN_FLIGHT`` requests at once, each carrying the sends that
    arrived while the others were out or during ``SEND_INTERVAL_S`` after the last request. The
    Batcher's key is the device: a device's sends are in one request in flight at a time, so they reach
    the message service in their order (which commits them in it), and other devices' requests may answer
    in any order; a device back with more sends ends the pause early."""

    def __init__(self, client: InternalClient, *, max_batch: int = MAX_SEND_BATCH) -> None:
        if max_batch > MAX_SEND_BATCH:
            raise ValueError(f"the send/batch call takes at most {MAX_SEND_BATCH} sends")
        self._client = client
        self._sends: Batcher[app.SendMessage, app.Sent] = Batcher(
            self._send_batch,
            max_batch=max_batch,
            in_flight=SENDS_IN_FLIGHT,
            interval_s=SEND_INTERVAL_S,
            key=lambda cmd: (cmd.sender_id, cmd.sender_device_id),
        )

    async def send_many(self, cmds: Sequence[app.SendMessage]) -> list[app.Sent | Exception]:
        """One device's sends in their order: submitted together, so they leave in one request or, past
        ``max_batch``, in requests one after the other (one batch of a device in flight at a time)."""
        if len(cmds) == 1:  # the usual batch: awaited here rather than in a task of its own to gather
            try:
                return [await self._sends.submit(cmds[0])]
            except Exception as exc:  # noqa: BLE001 - this send's answer, as gathered ones are
                return [exc]
        outcomes = await asyncio.gather(*(self._sends.submit(cmd) for cmd in cmds), return_exceptions=True)
        return [_raised(outcome) for outcome in outcomes]

    async def _send_batch(self, cmds: list[app.SendMessage]) -> list[app.Sent | CourierError]:
        answer = await send_many.ask(self._client, Sends(sends=[Send.of(cmd) for cmd in cmds]))
        return [r.to_sent() if isinstance(r, Stored) else from_body(r.status, r.model_dump()) for r in answer.results]

    async def sync(
        self, user_id: str, cursors: Mapping[str, int], *, limit: int | None = None
    ) -> list[app.SyncedConversation]:
        answer = await sync.ask(self._client, SyncRequest(user_id=user_id, cursors=dict(cursors), limit=limit))
        return [
            app.SyncedConversation(c.conversation_id, [Message.from_wire(m) for m in c.messages], c.has_more)
            for c in answer.conversations
        ]

    async def mark_read(self, conversation_id: str, user_id: str, seq: int) -> int:
        read = Read(conversation_id=conversation_id, user_id=user_id, seq=seq)
        return (await mark_read.ask(self._client, read)).seq

    async def activity(
        self, user_id: str, conversations: Sequence[ConversationRecord]
    ) -> Mapping[str, ConversationActivity]:
        views = [
            ConversationView(
                conversation_id=c.conversation_id, roles={u: str(r) for u, r in c.members.items()}, large=c.large
            )
            for c in conversations
        ]
        answer = await activity.ask(self._client, ActivityRequest(user_id=user_id, conversations=views))
        return {
            cid: ConversationActivity(a.max_seq, a.read_seq, a.unread_count, a.last_message, a.last_activity_at)
            for cid, a in answer.activity.items()
        }
