"""The HTTP contract of /v1/conversations*, through the router that build_conversations returns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from conversation_support import T0, FakeActivity, FakeUsers, RecordingPusher, uid
from fastapi import FastAPI

from services.common.db import create_all, create_engine, sessionmaker
from services.common.settings import JwtSettings, Settings
from services.common.tokens import AccessTokens, Principal
from services.common.web import Authenticate, install_error_handlers
from services.conversation.domain import Activity
from services.conversation.main import Conversations, build_conversations

Headers = Callable[[str], dict[str, str]]

WIRE_KEYS = {
    "conversation_id",
    "type",
    "title",
    "members",
    "max_seq",
    "read_seq",
    "unread_count",
    "last_message",
    "large",
    "created_at",
}


@pytest.fixture
def tokens() -> AccessTokens:
    return AccessTokens(JwtSettings(keys={"k1": "conversation-test-secret-of-32-bytes!"}, active_kid="k1"))


@pytest.fixture
def as_user(tokens: AccessTokens) -> Headers:
    return lambda user_id: {"Authorization": f"Bearer {tokens.issue(Principal(user_id, 'd1'), session_id=uid('s'))}"}


@pytest.fixture(params=["memory", "sql"])
async def service(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    tokens: AccessTokens,
    users: FakeUsers,
    activity: FakeActivity,
    pusher: RecordingPusher,
) -> AsyncIterator[Conversations]:
    settings = Settings(large_group_threshold=3)
    auth = Authenticate(tokens)
    if request.param == "memory":
        yield build_conversations(settings, sessions=None, auth=auth, users=users, activity=activity, pusher=pusher)
        return
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'conversation-api.db'}")
    await create_all(engine)
    try:
        yield build_conversations(
            settings, sessions=sessionmaker(engine), auth=auth, users=users, activity=activity, pusher=pusher
        )
    finally:
        await engine.dispose()


@pytest.fixture
async def client(service: Conversations) -> AsyncIterator[httpx.AsyncClient]:
    application = FastAPI()
    install_error_handlers(application)
    application.include_router(service.router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://test") as client:
        yield client


async def new_group(client: httpx.AsyncClient, as_user: Headers, owner: str, *members: str) -> str:
    response = await client.post(
        "/v1/conversations",
        json={"type": "group", "title": "team", "member_ids": list(members)},
        headers=as_user(owner),
    )
    assert response.status_code == 201, response.text
    conversation_id: str = response.json()["conversation_id"]
    return conversation_id


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


async def test_direct_is_created_once_then_returned_with_200(
    client: httpx.AsyncClient, as_user: Headers, users: FakeUsers
) -> None:
    a, b = uid("a"), uid("b")
    users.add(a, b)

    first = await client.post("/v1/conversations", json={"type": "direct", "peer_id": b}, headers=as_user(a))
    again = await client.post("/v1/conversations", json={"type": "direct", "peer_id": a}, headers=as_user(b))

    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["conversation_id"] == first.json()["conversation_id"]
    body = first.json()
    assert set(body) == WIRE_KEYS
    assert body["type"] == "direct"
    assert body["title"] is None
    assert sorted(m["user_id"] for m in body["members"]) == sorted([a, b])
    assert {m["role"] for m in body["members"]} == {"member"}
    assert (body["max_seq"], body["read_seq"], body["unread_count"], body["last_message"]) == (0, 0, 0, None)
    assert body["created_at"].endswith("Z")


async def test_direct_with_yourself_or_a_stranger_id_is_invalid(
    client: httpx.AsyncClient, as_user: Headers, users: FakeUsers
) -> None:
    a = uid("a")
    users.add(a)

    yourself = await client.post("/v1/conversations", json={"type": "direct", "peer_id": a}, headers=as_user(a))
    unknown = await client.post(
        "/v1/conversations", json={"type": "direct", "peer_id": uid("ghost")}, headers=as_user(a)
    )

    assert_error(yourself, 400, "invalid_request")
    assert_error(unknown, 400, "invalid_request")


async def test_group_is_created_with_the_creator_as_owner(
    client: httpx.AsyncClient, as_user: Headers, users: FakeUsers, pusher: RecordingPusher
) -> None:
    o, b = uid("o"), uid("b")
    users.add(o, b)

    response = await client.post(
        "/v1/conversations",
        json={"type": "group", "title": " Launch ", "member_ids": [b, b]},
        headers=as_user(o),
    )

    assert response.status_code == 201
    body = response.json()
    assert set(body) == WIRE_KEYS
    assert (body["type"], body["title"], body["large"]) == ("group", "Launch", False)
    assert body["members"] == [{"user_id": o, "role": "owner"}, {"user_id": b, "role": "member"}]
    assert [p.frame["user_id"] for p in pusher.of_type("member_added")] == [b]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"type": "channel", "title": "x"},
        {"type": "group"},
        {"type": "group", "title": ""},
        {"type": "group", "title": "x" * 101},
        {"type": "group", "title": "x", "member_ids": "abc"},
        {"type": "group", "title": "x", "member_ids": [""]},
        {"type": "group", "title": 5},
        {"type": "direct"},
        {"type": "direct", "peer_id": "x" * 65},
    ],
)
async def test_malformed_creation_is_invalid_request(
    client: httpx.AsyncClient, as_user: Headers, body: dict[str, object]
) -> None:
    response = await client.post("/v1/conversations", json=body, headers=as_user(uid("o")))

    assert response.status_code in (400, 422)
    assert_error(response, response.status_code, "invalid_request")


async def test_non_json_body_is_invalid_request(client: httpx.AsyncClient, as_user: Headers) -> None:
    response = await client.post(
        "/v1/conversations", content=b"{nope", headers={**as_user(uid("o")), "Content-Type": "application/json"}
    )

    assert_error(response, 422, "invalid_request")


async def test_requests_without_a_token_are_unauthorized(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v1/conversations"), 401, "unauthorized")
    assert_error(await client.post("/v1/conversations", json={"type": "direct", "peer_id": "x"}), 401, "unauthorized")


async def test_non_members_get_the_same_404_as_for_a_missing_conversation(
    client: httpx.AsyncClient, as_user: Headers, users: FakeUsers
) -> None:
    o, eve = uid("o"), uid("eve")
    users.add(eve)
    cid = await new_group(client, as_user, o)

    hidden = await client.get(f"/v1/conversations/{cid}", headers=as_user(eve))
    missing = await client.get("/v1/conversations/does-not-exist", headers=as_user(eve))
    add = await client.post(f"/v1/conversations/{cid}/members", json={"user_ids": [eve]}, headers=as_user(eve))
    remove = await client.delete(f"/v1/conversations/{cid}/members/{o}", headers=as_user(eve))
    patch = await client.patch(f"/v1/conversations/{cid}/members/{o}", json={"role": "admin"}, headers=as_user(eve))

    for response in (hidden, missing, add, remove, patch):
        assert_error(response, 404, "not_found")
    assert hidden.json()["error"]["message"].replace(cid, "X") == missing.json()["error"]["message"].replace(
        "does-not-exist", "X"
    )


async def test_member_reads_the_conversation_with_activity(
    client: httpx.AsyncClient, as_user: Headers, users: FakeUsers, activity: FakeActivity
) -> None:
    o, b = uid("o"), uid("b")
    users.add(b)
    cid = await new_group(client, as_user, o, b)
    activity.set(b, cid, Activity(max_seq=4, read_seq=1, unread_count=3, last_message={"seq": 4}, last_activity_at=T0))

    body = (await client.get(f"/v1/conversations/{cid}", headers=as_user(b))).json()

    assert (body["max_seq"], body["read_seq"], body["unread_count"], body["last_message"]) == (4, 1, 3, {"seq": 4})


async def test_list_is_newest_activity_first(
    client: httpx.AsyncClient, as_user: Headers, activity: FakeActivity
) -> None:
    o = uid("o")
    first = await new_group(client, as_user, o)
    second = await new_group(client, as_user, o)
    activity.set(
        o,
        first,
        Activity(max_seq=1, read_seq=1, unread_count=0, last_message=None, last_activity_at=T0 + timedelta(days=3650)),
    )

    response = await client.get("/v1/conversations", headers=as_user(o))

    assert response.status_code == 200
    assert [c["conversation_id"] for c in response.json()["conversations"]] == [first, second]
    assert (await client.get("/v1/conversations", headers=as_user(uid("lonely")))).json() == {"conversations": []}


async def test_admin_adds_members_and_the_group_turns_large(
    client: httpx.AsyncClient, as_user: Headers, users: FakeUsers, pusher: RecordingPusher
) -> None:
    o, b, c, d = uid("o"), uid("b"), uid("c"), uid("d")
    users.add(b, c, d)
    cid = await new_group(client, as_user, o, b)
    await client.patch(f"/v1/conversations/{cid}/members/{b}", json={"role": "admin"}, headers=as_user(o))

    response = await client.post(f"/v1/conversations/{cid}/members", json={"user_ids": [c, d, o]}, headers=as_user(b))

    assert response.status_code == 200
    body = response.json()
    assert [m["user_id"] for m in body["members"]] == [o, b, c, d]
    assert body["large"] is True
    assert {p.frame["user_id"] for p in pusher.of_type("member_added")} >= {c, d}


async def test_plain_member_cannot_add_and_unknown_users_are_named(
    client: httpx.AsyncClient, as_user: Headers, users: FakeUsers
) -> None:
    o, b, ghost = uid("o"), uid("b"), uid("ghost")
    users.add(b)
    cid = await new_group(client, as_user, o, b)

    by_member = await client.post(f"/v1/conversations/{cid}/members", json={"user_ids": [ghost]}, headers=as_user(b))
    unknown = await client.post(f"/v1/conversations/{cid}/members", json={"user_ids": [ghost]}, headers=as_user(o))
    empty = await client.post(f"/v1/conversations/{cid}/members", json={"user_ids": []}, headers=as_user(o))

    assert_error(by_member, 403, "forbidden")
    assert_error(unknown, 400, "invalid_request")
    assert ghost in unknown.json()["error"]["message"]
    assert_error(empty, 422, "invalid_request")


async def test_direct_membership_cannot_change(client: httpx.AsyncClient, as_user: Headers, users: FakeUsers) -> None:
    a, b, c = uid("a"), uid("b"), uid("c")
    users.add(a, b, c)
    cid = (await client.post("/v1/conversations", json={"type": "direct", "peer_id": b}, headers=as_user(a))).json()[
        "conversation_id"
    ]

    add = await client.post(f"/v1/conversations/{cid}/members", json={"user_ids": [c]}, headers=as_user(a))
    leave = await client.delete(f"/v1/conversations/{cid}/members/{a}", headers=as_user(a))

    assert_error(add, 400, "invalid_request")
    assert_error(leave, 400, "invalid_request")


async def test_remove_and_leave_answer_204_and_owner_hands_over(
    client: httpx.AsyncClient, as_user: Headers, users: FakeUsers, pusher: RecordingPusher
) -> None:
    o, b, c = uid("o"), uid("b"), uid("c")
    users.add(b, c)
    cid = await new_group(client, as_user, o, b, c)

    removed = await client.delete(f"/v1/conversations/{cid}/members/{c}", headers=as_user(o))
    left = await client.delete(f"/v1/conversations/{cid}/members/{o}", headers=as_user(o))

    assert (removed.status_code, removed.content) == (204, b"")
    assert left.status_code == 204
    assert_error(await client.get(f"/v1/conversations/{cid}", headers=as_user(o)), 404, "not_found")
    body = (await client.get(f"/v1/conversations/{cid}", headers=as_user(b))).json()
    assert body["members"] == [{"user_id": b, "role": "owner"}]
    assert [p.frame["user_id"] for p in pusher.of_type("member_removed")] == [c, o]


async def test_removing_the_owner_or_an_admin_needs_the_owner(
    client: httpx.AsyncClient, as_user: Headers, users: FakeUsers
) -> None:
    o, a1, a2 = uid("o"), uid("a1"), uid("a2")
    users.add(a1, a2)
    cid = await new_group(client, as_user, o, a1, a2)
    for admin in (a1, a2):
        await client.patch(f"/v1/conversations/{cid}/members/{admin}", json={"role": "admin"}, headers=as_user(o))

    owner_removed = await client.delete(f"/v1/conversations/{cid}/members/{o}", headers=as_user(a1))
    admin_removed = await client.delete(f"/v1/conversations/{cid}/members/{a2}", headers=as_user(a1))
    by_owner = await client.delete(f"/v1/conversations/{cid}/members/{a2}", headers=as_user(o))
    not_there = await client.delete(f"/v1/conversations/{cid}/members/{a2}", headers=as_user(o))

    assert_error(owner_removed, 403, "forbidden")
    assert_error(admin_removed, 403, "forbidden")
    assert by_owner.status_code == 204
    assert_error(not_there, 404, "not_found")


async def test_only_the_owner_changes_roles_to_admin_or_member(
    client: httpx.AsyncClient, as_user: Headers, users: FakeUsers
) -> None:
    o, b, c = uid("o"), uid("b"), uid("c")
    users.add(b, c)
    cid = await new_group(client, as_user, o, b, c)

    promoted = await client.patch(f"/v1/conversations/{cid}/members/{b}", json={"role": "admin"}, headers=as_user(o))
    by_admin = await client.patch(f"/v1/conversations/{cid}/members/{c}", json={"role": "admin"}, headers=as_user(b))
    to_owner = await client.patch(f"/v1/conversations/{cid}/members/{c}", json={"role": "owner"}, headers=as_user(o))

    assert promoted.status_code == 200
    assert {"user_id": b, "role": "admin"} in promoted.json()["members"]
    assert_error(by_admin, 403, "forbidden")
    assert_error(to_owner, 422, "invalid_request")


async def test_directory_sees_what_the_routes_changed(
    client: httpx.AsyncClient, as_user: Headers, users: FakeUsers, service: Conversations
) -> None:
    o, b = uid("o"), uid("b")
    users.add(b)
    cid = await new_group(client, as_user, o)
    assert await service.directory.is_member(cid, b) is False

    await client.post(f"/v1/conversations/{cid}/members", json={"user_ids": [b]}, headers=as_user(o))

    assert await service.directory.is_member(cid, b) is True
    assert await service.directory.conversation_ids(b) == [cid]
    conversation = await service.directory.get(cid)
    assert conversation is not None
    assert list(conversation.members) == [o, b]
