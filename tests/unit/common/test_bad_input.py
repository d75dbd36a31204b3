"""Bad input is refused in the protocol's error shape, never answered 500, and the connection stays usable.

``courier dev``'s whole app in process: HTTP through httpx's ASGI transport, the WebSocket as raw ASGI.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from services.allinone import create_app
from services.common.settings import JwtSettings, PasswordSettings, Settings
from tests.support.asgi import websocket_scope

LONE = "\ud800"
"""A lone surrogate: valid in a JSON escape, but not Unicode text."""
MAX_INT = 2**63 - 1
PASSWORD = "correct horse battery"
SHA256 = "0" * 64
DEADLINE_S = 20.0


@dataclass
class Dev:
    app: FastAPI
    http: httpx.AsyncClient
    alice_id: str
    alice_token: str
    bob_id: str
    conversation_id: str

    @property
    def alice(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.alice_token}"}

    async def post(self, path: str, body: Any, *, method: str = "POST") -> httpx.Response:
        """``body`` as JSON text, a lone surrogate written as JSON libraries write it: ``"\\ud800"``."""
        if body is None:
            return await self.http.request(method, path, headers=self.alice)
        headers = {**self.alice, "content-type": "application/json"}
        return await self.http.request(method, path, content=json.dumps(body).encode(), headers=headers)

    async def stored(self) -> list[dict[str, Any]]:
        answer = await self.http.get(f"/v1/conversations/{self.conversation_id}/messages", headers=self.alice)
        assert answer.status_code == 200, answer.text
        messages: list[dict[str, Any]] = answer.json()["messages"]
        return messages


def dev_settings_for(data_dir: Path, *, database_url: str = "") -> Settings:
    return Settings(
        mode="dev",
        data_dir=data_dir,
        database_url=database_url,
        jwt=JwtSettings(keys={"k": "bad-input-test-secret-0123456789abcdef"}, active_kid="k"),
        passwords=PasswordSettings(time_cost=1, memory_kib=8, parallelism=1),
    )


@pytest.fixture
def dev_settings(tmp_path: Path) -> Settings:
    """``courier dev`` on SQLite; tests/integration/test_sql_bad_input.py runs the same on real databases."""
    return dev_settings_for(tmp_path)


@pytest.fixture
async def dev(dev_settings: Settings) -> AsyncIterator[Dev]:
    app = create_app(dev_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://courier") as http:
            user_ids = []
            for name in ("alice", "bob"):
                answer = await http.post("/v1/auth/register", json={"username": name, "password": PASSWORD})
                assert answer.status_code == 201, answer.text
                user_ids.append(answer.json()["user_id"])
            login = {"username": "alice", "password": PASSWORD, "device_id": "phone"}
            token = (await http.post("/v1/auth/login", json=login)).json()["access_token"]
            dev = Dev(app, http, user_ids[0], token, user_ids[1], "")
            group = {"type": "group", "title": "team", "member_ids": [dev.bob_id]}
            dev.conversation_id = (await http.post("/v1/conversations", json=group, headers=dev.alice)).json()[
                "conversation_id"
            ]
            first = {"client_msg_id": "m1", "content": {"type": "text", "text": "hello"}}
            sent = await http.post(f"/v1/conversations/{dev.conversation_id}/messages", json=first, headers=dev.alice)
            assert sent.status_code == 201, sent.text
            yield dev


def assert_invalid_request(answer: httpx.Response, status: int) -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == "invalid_request"


async def assert_still_served(dev: Dev) -> None:
    """The same client goes on being answered, and the conversation holds only its first message."""
    assert (await dev.http.get("/v1/users/me", headers=dev.alice)).status_code == 200
    assert [m["client_msg_id"] for m in await dev.stored()] == ["m1"]


Request = Callable[[Dev, str], tuple[str, str, dict[str, Any]]]


def messages(dev: Dev) -> str:
    return f"/v1/conversations/{dev.conversation_id}/messages"


# Every text field a client can send over HTTP, each to be given ``bad``.
TEXT_FIELDS: dict[str, Request] = {
    "register username": lambda d, bad: ("POST", "/v1/auth/register", {"username": "c" + bad, "password": PASSWORD}),
    "register password": lambda d, bad: (
        "POST",
        "/v1/auth/register",
        {"username": "carol", "password": PASSWORD + bad},
    ),
    "register display_name": lambda d, bad: (
        "POST",
        "/v1/auth/register",
        {"username": "carol", "password": PASSWORD, "display_name": "Carol " + bad},
    ),
    "login username": lambda d, bad: ("POST", "/v1/auth/login", {"username": "alice" + bad, "password": PASSWORD}),
    "login password": lambda d, bad: ("POST", "/v1/auth/login", {"username": "alice", "password": PASSWORD + bad}),
    "login device_id": lambda d, bad: (
        "POST",
        "/v1/auth/login",
        {"username": "alice", "password": PASSWORD, "device_id": "pad" + bad},
    ),
    "login device_name": lambda d, bad: (
        "POST",
        "/v1/auth/login",
        {"username": "alice", "password": PASSWORD, "device_name": "Pad " + bad},
    ),
    "refresh refresh_token": lambda d, bad: ("POST", "/v1/auth/refresh", {"refresh_token": "t" + bad}),
    "direct peer_id": lambda d, bad: ("POST", "/v1/conversations", {"type": "direct", "peer_id": d.bob_id + bad}),
    "group title": lambda d, bad: ("POST", "/v1/conversations", {"type": "group", "title": "Team " + bad}),
    "group member_ids": lambda d, bad: (
        "POST",
        "/v1/conversations",
        {"type": "group", "title": "Team", "member_ids": [d.bob_id + bad]},
    ),
    "add user_ids": lambda d, bad: (
        "POST",
        f"/v1/conversations/{d.conversation_id}/members",
        {"user_ids": [d.bob_id + bad]},
    ),
    "role": lambda d, bad: (
        "PATCH",
        f"/v1/conversations/{d.conversation_id}/members/{d.bob_id}",
        {"role": "admin" + bad},
    ),
    "send client_msg_id": lambda d, bad: (
        "POST",
        messages(d),
        {"client_msg_id": "m" + bad, "content": {"type": "text", "text": "hi"}},
    ),
    "send text": lambda d, bad: (
        "POST",
        messages(d),
        {"client_msg_id": "m2", "content": {"type": "text", "text": bad}},
    ),
    "send caption": lambda d, bad: (
        "POST",
        messages(d),
        {"client_msg_id": "m2", "content": {"type": "file", "file_id": "f1", "caption": "look " + bad}},
    ),
    "send file_id": lambda d, bad: (
        "POST",
        messages(d),
        {"client_msg_id": "m2", "content": {"type": "file", "file_id": "f1" + bad}},
    ),
    "send call_id": lambda d, bad: (
        "POST",
        messages(d),
        {"client_msg_id": "m2", "content": {"type": "call", "call_id": "k" + bad, "state": "ended"}},
    ),
    "send content type": lambda d, bad: ("POST", messages(d), {"client_msg_id": "m2", "content": {"type": bad}}),
    "edit text": lambda d, bad: ("POST", messages(d) + "/1/edit", {"content": {"type": "text", "text": "hi " + bad}}),
    "upload name": lambda d, bad: (
        "POST",
        "/v1/files/uploads",
        {"name": "a" + bad + ".txt", "size": 3, "content_type": "text/plain", "sha256": SHA256},
    ),
    "upload content_type": lambda d, bad: (
        "POST",
        "/v1/files/uploads",
        {"name": "a.txt", "size": 3, "content_type": "text/plain; x=" + bad, "sha256": SHA256},
    ),
    "upload sha256": lambda d, bad: (
        "POST",
        "/v1/files/uploads",
        {"name": "a.txt", "size": 3, "content_type": "text/plain", "sha256": SHA256[:-1] + bad},
    ),
}


# What no store can hold, and what the answer says of it.
UNSTORABLE = {"lone surrogate": (LONE, "surrogate"), "NUL": ("\x00", "NUL")}


@pytest.mark.parametrize("bad", list(UNSTORABLE))
@pytest.mark.parametrize("field", list(TEXT_FIELDS))
async def test_a_lone_surrogate_or_nul_in_any_text_field_answers_400_and_reaches_no_store(
    dev: Dev, field: str, bad: str
) -> None:
    char, named = UNSTORABLE[bad]
    method, path, body = TEXT_FIELDS[field](dev, char)

    answer = await dev.post(path, body, method=method)

    assert_invalid_request(answer, 400)
    assert named in answer.json()["error"]["message"]
    await assert_still_served(dev)


def client_routes(dev: Dev) -> list[APIRoute]:
    """Every route of the API. The presigned blob URLs are left out: their signature covers the path and
    the query, so nothing a client changes in them reaches a handler."""
    return [
        r
        for r in dev.app.routes
        if isinstance(r, APIRoute) and r.path.startswith("/v1/") and not r.path.startswith("/v1/files/blobs/")
    ]


@pytest.mark.parametrize("bad", list(UNSTORABLE))
async def test_every_route_that_reads_a_json_body_refuses_a_lone_surrogate_or_nul(dev: Dev, bad: str) -> None:
    """Whatever its fields: the body is refused as it is read, so a new route or field cannot forget it."""
    routes = [r for r in client_routes(dev) if r.body_field is not None]
    assert len(routes) >= 10
    for route in routes:
        path = route.path_format.format(**dict.fromkeys(route.param_convertors, "1"))
        for method in route.methods:
            answer = await dev.post(path, {"anything": UNSTORABLE[bad][0]}, method=method)
            assert answer.status_code == 400, f"{method} {route.path}: {answer.text}"
            assert answer.json()["error"]["code"] == "invalid_request"


async def test_every_route_refuses_nul_in_its_path_or_query(dev: Dev) -> None:
    """NUL is the one character a path or query can carry that a store cannot (the rest of what does not
    decode becomes U+FFFD): in a path parameter or in the query string of every route, it is 400."""
    routes = client_routes(dev)
    assert len(routes) >= 15
    for route in routes:
        if route.param_convertors:
            path = route.path_format.format(**dict.fromkeys(route.param_convertors, "a%00b"))
        else:
            path = route.path + "?user_ids=a%00b&prefix=a%00b"
        for method in route.methods:
            answer = await dev.http.request(method, path, headers=dev.alice)
            assert answer.status_code == 400, f"{method} {path}: {answer.text}"
            assert "NUL" in answer.json()["error"]["message"]
    await assert_still_served(dev)


# Each a request of alice's in her conversation: (method, path below it, JSON body or None).
BEYOND_THE_STORE: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "after_seq": ("GET", f"/messages?after_seq={MAX_INT + 1}", None),
    "before_seq": ("GET", f"/messages?before_seq={MAX_INT + 1}", None),
    "after_seq far beyond": ("GET", f"/messages?after_seq={10**30}", None),
    "recall seq": ("POST", f"/messages/{MAX_INT + 1}/recall", None),
    "edit seq": ("POST", f"/messages/{MAX_INT + 1}/edit", {"content": {"type": "text", "text": "x"}}),
    "read seq": ("POST", "/read", {"seq": MAX_INT + 1}),
}


@pytest.mark.parametrize("what", list(BEYOND_THE_STORE))
async def test_an_integer_beyond_what_a_store_holds_is_an_invalid_request(dev: Dev, what: str) -> None:
    method, below, body = BEYOND_THE_STORE[what]

    answer = await dev.post(f"/v1/conversations/{dev.conversation_id}{below}", body, method=method)

    assert_invalid_request(answer, 422)
    await assert_still_served(dev)


async def test_the_largest_integer_a_store_holds_is_accepted(dev: Dev) -> None:
    page = await dev.http.get(f"{messages(dev)}?after_seq={MAX_INT}", headers=dev.alice)
    assert page.status_code == 200 and page.json() == {"messages": [], "has_more": False}
    too_far = await dev.http.post(f"{messages(dev)}/{MAX_INT}/recall", headers=dev.alice)
    assert too_far.status_code == 404


@pytest.mark.parametrize("seq", [True, False, 1.0, "1"])
async def test_a_seq_must_be_a_json_integer_not_a_bool_float_or_string(dev: Dev, seq: object) -> None:
    answer = await dev.post(f"/v1/conversations/{dev.conversation_id}/read", {"seq": seq})

    assert_invalid_request(answer, 422)


@pytest.mark.parametrize(
    "content",
    [
        {"type": "call", "call_id": "k1\n", "state": "ended"},
        {"type": "file", "file_id": "f1\n"},
    ],
)
async def test_an_id_in_content_with_a_trailing_newline_is_refused(dev: Dev, content: dict[str, Any]) -> None:
    answer = await dev.post(messages(dev), {"client_msg_id": "m2", "content": content})

    assert_invalid_request(answer, 400)
    await assert_still_served(dev)


async def test_a_client_msg_id_with_a_trailing_newline_is_refused(dev: Dev) -> None:
    answer = await dev.post(messages(dev), {"client_msg_id": "m2\n", "content": {"type": "text", "text": "hi"}})

    assert_invalid_request(answer, 400)
    assert "client_msg_id" in answer.json()["error"]["message"]
    await assert_still_served(dev)


NameRequest = Callable[[Dev, str], tuple[str, str, dict[str, Any]]]

# Every name other people see; one rule for all of them (docs/protocol.md 1.1).
NAMES: dict[str, NameRequest] = {
    "group title": lambda d, name: ("POST", "/v1/conversations", {"type": "group", "title": name}),
    "display_name": lambda d, name: (
        "POST",
        "/v1/auth/register",
        {"username": "carol", "password": PASSWORD, "display_name": name},
    ),
    "device_name": lambda d, name: (
        "POST",
        "/v1/auth/login",
        {"username": "alice", "password": PASSWORD, "device_name": name},
    ),
    "upload name": lambda d, name: (
        "POST",
        "/v1/files/uploads",
        {"name": name + ".txt", "size": 3, "content_type": "text/plain", "sha256": SHA256},
    ),
}
UNREADABLE = {
    "escape": "\x1b",
    "tab": "\t",
    "newline": "\n",
    "right-to-left override": "\u202e",
    "first strong isolate": "\u2068",
    "zero-width space": "\u200b",
    "line separator": "\u2028",
}


@pytest.mark.parametrize("char", list(UNREADABLE))
@pytest.mark.parametrize("name", list(NAMES))
async def test_names_refuse_control_format_and_line_break_characters(dev: Dev, name: str, char: str) -> None:
    method, path, body = NAMES[name](dev, f"Te{UNREADABLE[char]}am")

    answer = await dev.post(path, body, method=method)

    assert_invalid_request(answer, 400)
    assert "control, format or line-break characters" in answer.json()["error"]["message"]


@pytest.mark.parametrize("name", list(NAMES))
async def test_names_keep_letters_of_every_script_and_emoji(dev: Dev, name: str) -> None:
    method, path, body = NAMES[name](dev, "Équipe שלום 🎉")

    answer = await dev.post(path, body, method=method)

    assert answer.status_code in (200, 201), answer.text


class Socket:
    """The client side of one WebSocket of the app, driven as raw ASGI (no server, no thread)."""

    def __init__(self, app: FastAPI, token: str) -> None:
        self._incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outgoing: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        scope = websocket_scope(token)
        self._incoming.put_nowait({"type": "websocket.connect"})
        self.task = asyncio.create_task(app(scope, self._incoming.get, self._outgoing.put))

    def send(self, text: str) -> None:
        self._incoming.put_nowait({"type": "websocket.receive", "text": text})

    async def receive(self) -> dict[str, Any]:
        """The next frame; fails if the server closes the socket instead."""
        while True:
            event = await asyncio.wait_for(self._outgoing.get(), DEADLINE_S)
            if event["type"] == "websocket.send":
                frame: dict[str, Any] = orjson.loads(event["text"])
                return frame
            assert event["type"] == "websocket.accept", f"the socket ended: {event}"

    async def close(self) -> None:
        self._incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(self.task, DEADLINE_S)


@pytest.fixture
async def socket(dev: Dev) -> AsyncIterator[Socket]:
    ws = Socket(dev.app, dev.alice_token)
    try:
        yield ws
        await ws.close()
    finally:
        ws.task.cancel()


def frame(conversation_id: str, kind: str, **fields: Any) -> str:
    """A frame as JSON text; ``json`` writes a lone surrogate, which orjson (like the server) refuses."""
    return json.dumps({"type": kind, "id": "bad", "conversation_id": conversation_id, **fields})


BadFrame = Callable[[str], str]

BAD_FRAMES: dict[str, tuple[BadFrame, object]] = {
    "lone surrogate in a send": (
        lambda c: frame(c, "send", client_msg_id="w1", content={"type": "text", "text": LONE}),
        None,
    ),
    "NUL in a send": (lambda c: frame(c, "send", client_msg_id="w1", content={"type": "text", "text": "a\x00"}), "bad"),
    "NUL in a conversation_id": (lambda c: frame(c + "\x00", "typing", state="start"), "bad"),
    "NUL in a sync cursor": (lambda c: frame(c, "sync", cursors={c + "\x00": 0}), "bad"),
    "bool id": (lambda c: '{"type": "ping", "id": true}', None),
    "float id": (lambda c: '{"type": "ping", "id": 1.0}', None),
    "ack seq beyond the store": (lambda c: frame(c, "ack", seq=MAX_INT + 1), "bad"),
    "ack seq true": (lambda c: frame(c, "ack", seq=True), "bad"),
    "read seq beyond the store": (lambda c: frame(c, "read", seq=MAX_INT + 1), "bad"),
    "read seq true": (lambda c: frame(c, "read", seq=True), "bad"),
    "sync cursor beyond the store": (lambda c: frame(c, "sync", cursors={c: MAX_INT + 1}), "bad"),
    "sync cursor true": (lambda c: frame(c, "sync", cursors={c: True}), "bad"),
    "sync limit true": (lambda c: frame(c, "sync", limit=True), "bad"),
    "send client_msg_id with a trailing newline": (
        lambda c: frame(c, "send", client_msg_id="w1\n", content={"type": "text", "text": "hi"}),
        "bad",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
async def test_a_bad_frame_answers_an_error_frame_and_the_socket_stays_open(
    dev: Dev, socket: Socket, case: str
) -> None:
    bad, ref = BAD_FRAMES[case]

    socket.send(bad(dev.conversation_id))
    error = await socket.receive()
    socket.send('{"type": "ping", "id": "after"}')
    pong = await socket.receive()

    assert error["type"] == "error" and error["code"] == "invalid_request" and error["ref"] == ref, error
    assert pong == {"type": "pong", "ref": "after"}
    assert [m["client_msg_id"] for m in await dev.stored()] == ["m1"]
