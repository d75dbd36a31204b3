"""Rolling upgrades: identity's, file's, presence's and conversation's internal calls, now defined once
(services.common.contract), still talk to a process of the previous release, whose routers and clients
were written by hand. Both directions over real HTTP on loopback: today's clients against the previous
routers (kept below as they were), and the previous clients' exact requests against today's routers."""

# No `from __future__ import annotations`: the previous routers below are read by FastAPI at runtime as written.

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from services.common.errors import NotFound
from services.common.internal import RequireInternal
from services.conversation import internal as conversation
from services.conversation.adapters.memory import MemoryConversationStore
from services.conversation.directory import ConversationDirectory
from services.conversation.domain import Conversation, ConversationType, Role
from services.file import internal as file
from services.identity import internal as identity
from services.presence import internal as presence
from tests.support.loopback import GUARD, internal_service


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
