"""Rolling upgrades: every service's internal calls, now defined once (services.common.contract), still
talk to a process of the previous release, whose routers and clients were written by hand. Both
directions over real HTTP on loopback: today's clients against the previous routers (kept below as they
were, trimmed to the wire), and the previous clients' exact requests against today's routers (message's
and delivery's answered exactly as the previous routers answer them)."""

# No `from __future__ import annotations`: the previous routers below are read by FastAPI at runtime as written.

import asyncio
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from services.common.clock import rfc3339
from services.common.errors import CourierError, NotFound
from services.common.internal import HEADER, RequireInternal
from services.common.push import Push
from services.common.ring import RingSource
from services.conversation import internal as conversation
from services.conversation.adapters.memory import MemoryConversationStore
from services.conversation.directory import ConversationDirectory
from services.conversation.domain import Activity, Conversation, ConversationType, Role
from services.delivery import internal as delivery
from services.file import internal as file
from services.identity import internal as identity
from services.message import app
from services.message import internal as message
from services.message.domain import Message
from services.message.ports import Conversation as MessageConversation
from services.presence import internal as presence
from tests.support.loopback import GUARD, TOKEN, internal_service
from tests.unit.message.test_internal_send import send_one


class Users:
    """identity's ``UserDirectory``: alice and bob exist."""

    async def missing(self, user_ids: Collection[str]) -> set[str]:
        return set(user_ids) - {"alice", "bob"}

    async def profiles(self, user_ids: Collection[str]) -> dict[str, dict[str, str]]:
        return {u: {"user_id": u, "username": u} for u in user_ids if u in {"alice", "bob"}}


class Shares:
    """file's ``FileShares``: every file is a small text file."""

    def __init__(self) -> None:
        self.attached: list[tuple[str, str, str]] = []

    async def attach(self, file_id: str, conversation_id: str, user_id: str) -> dict[str, Any]:
        self.attached.append((file_id, conversation_id, user_id))
        return {"file_id": file_id, "name": "a.txt", "size": 3, "content_type": "text/plain"}


class Tracker:
    """presence's ``PresenceTracker``, recording every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def connected(self, user_id: str, device_id: str) -> None:
        self.calls.append(("connected", user_id, device_id))

    async def heartbeat(self, user_id: str, device_id: str) -> None:
        self.calls.append(("heartbeat", user_id, device_id))

    async def heartbeat_many(self, devices: Sequence[tuple[str, str]]) -> None:
        self.calls.append(("heartbeat_many", list(devices)))

    async def disconnected(self, user_id: str, device_id: str) -> None:
        self.calls.append(("disconnected", user_id, device_id))

    async def subscribe(self, subscriber_id: str, user_ids: Collection[str]) -> list[dict[str, Any]]:
        self.calls.append(("subscribe", subscriber_id, list(user_ids)))
        return [{"type": "presence", "user_id": u, "online": False} for u in user_ids]

    async def unsubscribe_all(self, subscriber_id: str) -> None:
        self.calls.append(("unsubscribe_all", subscriber_id))


async def _conversations() -> ConversationDirectory:
    directory = ConversationDirectory(MemoryConversationStore())
    at = datetime(2026, 1, 1, tzinfo=UTC)
    members = {"alice": Role.OWNER, "bob": Role.MEMBER}
    await directory.create(Conversation("c1", ConversationType.GROUP, "team", members, at, large=False))
    return directory


AT = datetime(2026, 1, 1, 12, 30, 15, 123000, tzinfo=UTC)


def _message(seq: int, client_msg_id: str = "m1") -> Message:
    content = {"type": "text", "text": "héllo"}
    return Message(f"msg-{seq}", "c1", seq, "alice", "phone", client_msg_id, content, AT)


class Messages:
    """message's ``MessageService`` as delivery and conversation use it, recording every call: sends to
    c1 are stored (client_msg_id ``dup`` was already), any other conversation is not found."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def send(self, cmd: app.SendMessage) -> app.Sent:
        self.calls.append(("send", cmd))
        if cmd.conversation_id != "c1":
            raise NotFound("no such conversation")
        if cmd.client_msg_id == "dup":
            return app.Sent(_message(1, "dup"), False)
        return app.Sent(_message(7, cmd.client_msg_id), True)

    async def send_many(self, cmds: Sequence[app.SendMessage]) -> list[app.Sent | Exception]:
        answers: list[app.Sent | Exception] = []
        for cmd in cmds:
            try:
                answers.append(await self.send(cmd))
            except NotFound as exc:
                answers.append(exc)
        return answers

    async def sync(
        self, user_id: str, cursors: Mapping[str, int], *, limit: int | None = None
    ) -> list[app.SyncedConversation]:
        self.calls.append(("sync", user_id, dict(cursors), limit))
        return [app.SyncedConversation("c1", [_message(1), _message(2)], True)]

    async def mark_read(self, conversation_id: str, user_id: str, seq: int) -> int:
        self.calls.append(("mark_read", conversation_id, user_id, seq))
        return min(seq, 2)

    async def activity(self, user_id: str, conversations: Sequence[MessageConversation]) -> dict[str, app.Activity]:
        self.calls.append(("activity", user_id, [(c.conversation_id, dict(c.roles), c.large) for c in conversations]))
        return {
            "c1": app.Activity(2, 1, 1, {"seq": 2, "text": "hi"}, AT),
            "c2": app.Activity(0, 0, 0, None, None),
        }


class Hub:
    """A delivery node's hub, recording what it is asked to push."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def push_many(self, pushes: Sequence[Push]) -> None:
        self.calls.append(("push_many", list(pushes)))

    async def push_frames(self, user_ids: Collection[str], frames: Sequence[Mapping[str, Any]]) -> None:
        self.calls.append(("push_frames", list(user_ids), list(frames)))


# The previous release's routers, as they were written by hand.


class UserIds(BaseModel):
    user_ids: list[str]


class Attach(BaseModel):
    file_id: str
    conversation_id: str
    user_id: str


class Device(BaseModel):
    user_id: str
    device_id: str


class Devices(BaseModel):
    devices: list[Device] = Field(max_length=500)


class Subscription(BaseModel):
    subscriber_id: str
    user_ids: list[str] = []


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
    sends: list[SendBody] = Field(max_length=500)


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


class PushBody(BaseModel):
    user_ids: list[str]
    frame: dict[str, Any]
    tracked: bool = False
    skip_device: tuple[str, str] | None = None


def to_push(body: PushBody) -> Push:
    return Push(body.user_ids, body.frame, body.tracked, body.skip_device)


class PushBatchBody(BaseModel):
    pushes: list[PushBody] = Field(max_length=500)


class PushFramesBody(BaseModel):
    user_ids: list[str]
    frames: list[dict[str, Any]] = Field(max_length=500)


def previous_identity(directory: Users, guard: RequireInternal) -> APIRouter:
    router = APIRouter(prefix="/internal/identity", dependencies=[Depends(guard)], include_in_schema=False)

    @router.post("/missing")
    async def missing(body: UserIds) -> dict[str, Any]:
        return {"missing": sorted(await directory.missing(body.user_ids))}

    @router.post("/profiles")
    async def profiles(body: UserIds) -> dict[str, Any]:
        return {"profiles": await directory.profiles(body.user_ids)}

    return router


def previous_file(shares: Shares, guard: RequireInternal) -> APIRouter:
    router = APIRouter(prefix="/internal/files", dependencies=[Depends(guard)], include_in_schema=False)

    @router.post("/attach")
    async def attach(body: Attach) -> dict[str, Any]:
        return await shares.attach(body.file_id, body.conversation_id, body.user_id)

    return router


def previous_presence(tracker: Tracker, guard: RequireInternal) -> APIRouter:
    router = APIRouter(prefix="/internal/presence", dependencies=[Depends(guard)], include_in_schema=False)

    @router.post("/connected", status_code=204)
    async def connected(body: Device) -> None:
        await tracker.connected(body.user_id, body.device_id)

    @router.post("/heartbeat/batch", status_code=204)
    async def heartbeats(body: Devices) -> None:
        await tracker.heartbeat_many([(d.user_id, d.device_id) for d in body.devices])

    @router.post("/disconnected", status_code=204)
    async def disconnected(body: Device) -> None:
        await tracker.disconnected(body.user_id, body.device_id)

    @router.post("/subscribe")
    async def subscribe(body: Subscription) -> dict[str, Any]:
        return {"frames": await tracker.subscribe(body.subscriber_id, body.user_ids)}

    @router.post("/unsubscribe_all", status_code=204)
    async def unsubscribe_all(body: Subscription) -> None:
        await tracker.unsubscribe_all(body.subscriber_id)

    return router


def previous_conversation(directory: ConversationDirectory, guard: RequireInternal) -> APIRouter:
    router = APIRouter(prefix="/internal/conversations", dependencies=[Depends(guard)], include_in_schema=False)

    @router.get("/{conversation_id}")
    async def get(conversation_id: str) -> dict[str, Any]:
        found = await directory.get(conversation_id)
        if found is None:
            raise NotFound("no such conversation")
        return {
            "conversation_id": found.conversation_id,
            "roles": {user_id: str(role) for user_id, role in found.members.items()},
            "large": found.large,
        }

    @router.get("/of/{user_id}")
    async def of_user(user_id: str) -> dict[str, Any]:
        return {"conversation_ids": await directory.conversation_ids(user_id)}

    return router


def previous_message(service: Messages, guard: RequireInternal) -> APIRouter:
    router = APIRouter(prefix="/internal/messages", dependencies=[Depends(guard)], include_in_schema=False)

    def sent(sent: app.Sent) -> dict[str, Any]:
        return {"message": sent.message.to_wire(), "created": sent.created}

    def result(outcome: app.Sent | BaseException) -> dict[str, Any]:
        if isinstance(outcome, app.Sent):
            return sent(outcome)
        assert isinstance(outcome, CourierError)
        return {"status": outcome.status, **outcome.body()}

    @router.post("/send")
    async def send(body: SendBody) -> dict[str, Any]:
        return sent(await service.send(body.to_command()))

    @router.post("/send/batch")
    async def send_batch(body: SendBatchBody) -> dict[str, Any]:
        outcomes = await asyncio.gather(*(service.send(s.to_command()) for s in body.sends), return_exceptions=True)
        return {"results": [result(outcome) for outcome in outcomes]}

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
        views = [MessageConversation(c.conversation_id, c.roles, c.large) for c in body.conversations]
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


def previous_delivery(local: Hub, guard: RequireInternal) -> APIRouter:
    router = APIRouter(prefix="/internal", dependencies=[Depends(guard)], include_in_schema=False)

    @router.post("/push", status_code=204)
    async def push(body: PushBody) -> Response:
        await local.push_many([to_push(body)])
        return Response(status_code=204)

    @router.post("/push/batch", status_code=204)
    async def push_batch(body: PushBatchBody) -> Response:
        await local.push_many([to_push(p) for p in body.pushes])
        return Response(status_code=204)

    @router.post("/push/frames", status_code=204)
    async def push_frames(body: PushFramesBody) -> Response:
        await local.push_frames(body.user_ids, body.frames)
        return Response(status_code=204)

    return router


# Today's clients against the previous routers.


async def test_identity_client_against_the_previous_router() -> None:
    async with internal_service(previous_identity(Users(), GUARD)) as served:
        client = identity.IdentityClient(served.client)
        assert await client.missing(["alice", "zed", "bob", "amy"]) == {"zed", "amy"}
        assert await client.profiles(["bob", "zed"]) == {"bob": {"user_id": "bob", "username": "bob"}}


async def test_file_client_against_the_previous_router() -> None:
    shares = Shares()
    async with internal_service(previous_file(shares, GUARD)) as served:
        attached = await file.FileSharesClient(served.client).attach("f1", "c1", "alice")
    assert attached == {"file_id": "f1", "name": "a.txt", "size": 3, "content_type": "text/plain"}
    assert shares.attached == [("f1", "c1", "alice")]


async def test_presence_client_against_the_previous_router() -> None:
    tracker = Tracker()
    async with internal_service(previous_presence(tracker, GUARD)) as served:
        client = presence.PresenceClient(served.client)
        await client.connected("alice", "phone")
        await client.heartbeat("alice", "phone")
        await client.heartbeat_many([("alice", "phone"), ("bob", "web")])
        frames = await client.subscribe("alice:phone", ["bob"])
        await client.disconnected("alice", "phone")
        await client.unsubscribe_all("alice:phone")
    assert frames == [{"type": "presence", "user_id": "bob", "online": False}]
    assert tracker.calls == [
        ("connected", "alice", "phone"),
        ("heartbeat_many", [("alice", "phone")]),
        ("heartbeat_many", [("alice", "phone"), ("bob", "web")]),
        ("subscribe", "alice:phone", ["bob"]),
        ("disconnected", "alice", "phone"),
        ("unsubscribe_all", "alice:phone"),
    ]


async def test_conversations_client_against_the_previous_router() -> None:
    async with internal_service(previous_conversation(await _conversations(), GUARD)) as served:
        client = conversation.ConversationsClient(served.client)
        found = await client.get("c1")
        assert found is not None
        assert (found.conversation_id, dict(found.roles), found.large) == (
            "c1",
            {"alice": "owner", "bob": "member"},
            False,
        )
        assert await client.get("c2") is None
        assert await client.conversation_ids("bob") == ["c1"]
        assert await client.members("c1", "alice") == ["alice", "bob"]
        with pytest.raises(NotFound):
            await client.members("c1", "carol")


def _send(conversation_id: str, client_msg_id: str) -> app.SendMessage:
    return app.SendMessage(conversation_id, "alice", "phone", client_msg_id, {"type": "text", "text": "héllo"})


async def test_messages_client_against_the_previous_router() -> None:
    messages = Messages()
    async with internal_service(previous_message(messages, GUARD)) as served:
        client = message.MessagesClient(served.client)
        sends = [_send("c1", "m1"), _send("c1", "dup"), _send("c2", "m2")]
        stored, again, refused = await asyncio.gather(*(send_one(client, s) for s in sends), return_exceptions=True)
        synced = await client.sync("alice", {"c1": 0, "c3": 4}, limit=50)
        read = await client.mark_read("c1", "alice", 9)
        record = Conversation("c1", ConversationType.GROUP, "team", {"alice": Role.OWNER}, AT, large=True)
        activity = await client.activity("alice", [record])
    assert stored == app.Sent(_message(7, "m1"), True)
    assert again == app.Sent(_message(1, "dup"), False)
    assert isinstance(refused, NotFound) and refused.message == "no such conversation"
    assert synced == [app.SyncedConversation("c1", [_message(1), _message(2)], True)]
    assert read == 2
    assert activity == {
        "c1": Activity(2, 1, 1, {"seq": 2, "text": "hi"}, AT),
        "c2": Activity(0, 0, 0, None, None),
    }
    assert messages.calls == [
        *(("send", s) for s in sends),
        ("sync", "alice", {"c1": 0, "c3": 4}, 50),
        ("mark_read", "c1", "alice", 9),
        ("activity", "alice", [("c1", {"alice": "owner"}, True)]),
    ]
    assert served.paths[0] == "/internal/messages/send/batch"


async def test_ring_pusher_against_the_previous_router() -> None:
    hub = Hub()
    async with internal_service(previous_delivery(hub, GUARD)) as served:
        pusher = delivery.RingPusher(RingSource(nodes={"delivery-0": served.url}), TOKEN)
        try:
            frame = {"type": "message", "conversation_id": "c1", "seq": 1}
            await pusher.push(["alice", "bob"], frame, tracked=True, skip_device=("alice", "phone"))
            await pusher.push(["bob"], {"type": "typing", "conversation_id": "c1"})
            frames = [{"type": "member_added", "conversation_id": "c1", "user_id": f"u{n}"} for n in range(3)]
            await pusher.push_frames(["alice", "bob"], frames)
        finally:
            await pusher.close()
    assert pusher.failures == 0
    assert hub.calls == [
        ("push_many", [Push(["alice", "bob"], frame, True, ("alice", "phone"))]),
        ("push_many", [Push(["bob"], {"type": "typing", "conversation_id": "c1"})]),
        ("push_frames", ["alice", "bob"], frames),
    ]
    assert served.paths == ["/internal/push/batch"] * 2 + ["/internal/push/frames"]


# The previous release's clients (their exact requests) against today's routers.


async def test_previous_identity_requests_against_todays_router() -> None:
    async with internal_service(identity.internal_router(Users(), GUARD)) as served:  # type: ignore[arg-type]
        call = served.client.call
        assert await call("POST", "/internal/identity/missing", {"user_ids": ["zed", "alice", "amy"]}) == {
            "missing": ["amy", "zed"]
        }
        assert await call("POST", "/internal/identity/profiles", {"user_ids": ["alice"]}) == {
            "profiles": {"alice": {"user_id": "alice", "username": "alice"}}
        }


async def test_previous_file_requests_against_todays_router() -> None:
    async with internal_service(file.internal_router(Shares(), GUARD)) as served:  # type: ignore[arg-type]
        body = {"file_id": "f1", "conversation_id": "c1", "user_id": "alice"}
        assert await served.client.call("POST", "/internal/files/attach", body) == {
            "file_id": "f1",
            "name": "a.txt",
            "size": 3,
            "content_type": "text/plain",
        }


async def test_previous_presence_requests_against_todays_router() -> None:
    tracker = Tracker()
    async with internal_service(presence.internal_router(tracker, GUARD)) as served:  # type: ignore[arg-type]
        call = served.client.call
        assert await call("POST", "/internal/presence/connected", {"user_id": "alice", "device_id": "phone"}) is None
        assert await call("POST", "/internal/presence/heartbeat", {"user_id": "alice", "device_id": "phone"}) is None
        devices = {"devices": [{"user_id": "alice", "device_id": "phone"}]}
        assert await call("POST", "/internal/presence/heartbeat/batch", devices) is None
        subscribed = await call("POST", "/internal/presence/subscribe", {"subscriber_id": "s", "user_ids": ["bob"]})
        assert subscribed == {"frames": [{"type": "presence", "user_id": "bob", "online": False}]}
        assert await call("POST", "/internal/presence/disconnected", {"user_id": "alice", "device_id": "phone"}) is None
        assert await call("POST", "/internal/presence/unsubscribe_all", {"subscriber_id": "s"}) is None
    assert [c[0] for c in tracker.calls] == [
        "connected",
        "heartbeat",
        "heartbeat_many",
        "subscribe",
        "disconnected",
        "unsubscribe_all",
    ]


async def test_previous_conversation_requests_against_todays_router() -> None:
    async with internal_service(conversation.internal_router(await _conversations(), GUARD)) as served:
        call = served.client.call
        assert await call("GET", "/internal/conversations/c1") == {
            "conversation_id": "c1",
            "roles": {"alice": "owner", "bob": "member"},
            "large": False,
        }
        with pytest.raises(NotFound, match="no such conversation"):
            await call("GET", "/internal/conversations/c2")
        assert await call("GET", "/internal/conversations/of/alice") == {"conversation_ids": ["c1"]}
        assert await call("GET", "/internal/conversations/of/nobody") == {"conversation_ids": []}


async def _answers(router: APIRouter, requests: Sequence[tuple[str, Any]]) -> list[tuple[int, str, Any]]:
    """Each request posted as the previous clients posted it: status, content type and JSON answer."""
    answers = []
    async with (
        internal_service(router) as served,
        httpx.AsyncClient(base_url=served.url, headers={HEADER: TOKEN}) as http,
    ):
        for path, body in requests:
            answer = await http.post(path, json=body)
            json = answer.json() if answer.content else None
            answers.append((answer.status_code, answer.headers.get("content-type", ""), json))
    return answers


def _wire(seq: int, client_msg_id: str = "m1") -> dict[str, Any]:
    return {
        "message_id": f"msg-{seq}",
        "conversation_id": "c1",
        "seq": seq,
        "sender_id": "alice",
        "sender_device_id": "phone",
        "client_msg_id": client_msg_id,
        "content": {"type": "text", "text": "héllo"},
        "created_at": "2026-01-01T12:30:15.123Z",
        "recalled": False,
        "edited": False,
    }


def _send_body(conversation_id: str, client_msg_id: str) -> dict[str, Any]:
    return {
        "conversation_id": conversation_id,
        "sender_id": "alice",
        "sender_device_id": "phone",
        "client_msg_id": client_msg_id,
        "content": {"type": "text", "text": "héllo"},
    }


MESSAGE_REQUESTS = [
    ("/internal/messages/send", _send_body("c1", "m1")),
    ("/internal/messages/send", _send_body("c2", "m1")),
    (
        "/internal/messages/send/batch",
        {"sends": [_send_body("c1", "m1"), _send_body("c1", "dup"), _send_body("c2", "m2")]},
    ),
    ("/internal/messages/send/batch", {"sends": [_send_body("c1", f"m{n}") for n in range(501)]}),
    ("/internal/messages/sync", {"user_id": "alice", "cursors": {"c1": 0}, "limit": None}),
    ("/internal/messages/sync", {"user_id": "alice", "cursors": {}, "limit": 10}),
    ("/internal/messages/read", {"conversation_id": "c1", "user_id": "alice", "seq": 9}),
    ("/internal/messages/read", {"conversation_id": "c1", "user_id": "alice"}),
    (
        "/internal/messages/activity",
        {"user_id": "alice", "conversations": [{"conversation_id": "c1", "roles": {"alice": "owner"}, "large": False}]},
    ),
]


async def test_previous_message_requests_against_todays_router() -> None:
    today, previous = Messages(), Messages()
    answers = await _answers(message.internal_router(today, GUARD), MESSAGE_REQUESTS)  # type: ignore[arg-type]
    assert answers == await _answers(previous_message(previous, GUARD), MESSAGE_REQUESTS)
    assert today.calls == previous.calls
    json = "application/json"
    assert answers[0] == (200, json, {"message": _wire(7), "created": True})
    assert answers[1][0] == 404
    assert answers[2] == (
        200,
        json,
        {
            "results": [
                {"message": _wire(7), "created": True},
                {"message": _wire(1, "dup"), "created": False},
                {"status": 404, "error": {"code": "not_found", "message": "no such conversation"}},
            ]
        },
    )
    assert answers[3][0] == 422 and answers[3][2]["error"]["code"] == "invalid_request"
    assert answers[4] == (
        200,
        json,
        {"conversations": [{"conversation_id": "c1", "messages": [_wire(1), _wire(2)], "has_more": True}]},
    )
    assert answers[7][0] == 422
    assert answers[8] == (
        200,
        json,
        {
            "activity": {
                "c1": {
                    "max_seq": 2,
                    "read_seq": 1,
                    "unread_count": 1,
                    "last_message": {"seq": 2, "text": "hi"},
                    "last_activity_at": "2026-01-01T12:30:15.123Z",
                },
                "c2": {"max_seq": 0, "read_seq": 0, "unread_count": 0, "last_message": None, "last_activity_at": None},
            }
        },
    )


FRAME = {"type": "message", "conversation_id": "c1", "seq": 1}
DELIVERY_REQUESTS = [
    ("/internal/push", {"user_ids": ["alice"], "frame": FRAME, "tracked": True}),
    (
        "/internal/push/batch",
        {
            "pushes": [
                {"frame": FRAME, "tracked": True, "skip_device": ["alice", "phone"], "user_ids": ["alice", "bob"]},
                {"frame": {"type": "typing"}, "tracked": False, "skip_device": None, "user_ids": ["bob"]},
            ]
        },
    ),
    ("/internal/push/frames", {"user_ids": ["alice", "bob"], "frames": [FRAME, {"type": "typing"}]}),
    ("/internal/push/batch", {"pushes": [{"frame": FRAME, "user_ids": ["bob"]}] * 501}),
    ("/internal/push/frames", {"user_ids": ["bob"]}),
]


async def test_previous_delivery_requests_against_todays_router() -> None:
    today, previous = Hub(), Hub()
    answers = await _answers(delivery.internal_router(today, GUARD), DELIVERY_REQUESTS)  # type: ignore[arg-type]
    assert answers == await _answers(previous_delivery(previous, GUARD), DELIVERY_REQUESTS)
    assert today.calls == previous.calls
    assert [status for status, _, _ in answers] == [204, 204, 204, 422, 422]
    assert [answer for _, _, answer in answers[:3]] == [None] * 3
    assert today.calls == [
        ("push_many", [Push(["alice"], FRAME, True)]),
        (
            "push_many",
            [Push(["alice", "bob"], FRAME, True, ("alice", "phone")), Push(["bob"], {"type": "typing"})],
        ),
        ("push_frames", ["alice", "bob"], [FRAME, {"type": "typing"}]),
    ]
