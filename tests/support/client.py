"""A small protocol client for tests: HTTP calls with httpx, devices on real WebSockets (websockets)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

DEADLINE_S = 30.0
_ids = itertools.count(1)


def unique(prefix: str) -> str:
    """A username unique across tests sharing one server."""
    return f"{prefix}{secrets.token_hex(4)}"


@dataclass
class User:
    user_id: str
    username: str
    password: str
    access_token: str
    refresh_token: str
    device_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


class Api:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.AsyncClient(base_url=base_url, timeout=30)

    async def close(self) -> None:
        await self.http.aclose()

    async def register(self, prefix: str = "u", *, device_id: str | None = None) -> User:
        username, password = unique(prefix), "correct horse battery"
        answer = await self.http.post("/v1/auth/register", json={"username": username, "password": password})
        assert answer.status_code == 201, answer.text
        return await self.login(username, password, device_id=device_id)

    async def login(self, username: str, password: str, *, device_id: str | None = None) -> User:
        body: dict[str, Any] = {"username": username, "password": password}
        if device_id:
            body["device_id"] = device_id
        answer = await self.http.post("/v1/auth/login", json=body)
        assert answer.status_code == 200, answer.text
        data = answer.json()
        return User(data["user_id"], username, password, data["access_token"], data["refresh_token"], data["device_id"])

    async def device(self, user: User, device_id: str) -> User:
        """Another device of the same user (its own login)."""
        return await self.login(user.username, user.password, device_id=device_id)

    async def direct(self, user: User, peer: User) -> str:
        answer = await self.http.post(
            "/v1/conversations", json={"type": "direct", "peer_id": peer.user_id}, headers=user.headers
        )
        assert answer.status_code in (200, 201), answer.text
        return str(answer.json()["conversation_id"])

    async def group(self, owner: User, *members: User, title: str = "group") -> str:
        answer = await self.http.post(
            "/v1/conversations",
            json={"type": "group", "title": title, "member_ids": [m.user_id for m in members]},
            headers=owner.headers,
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["conversation_id"])

    async def upload(
        self, user: User, data: bytes, *, name: str = "notes.txt", content_type: str = "text/plain"
    ) -> dict[str, Any]:
        """The whole upload flow: create, PUT every part to its signed URL, complete."""
        digest = hashlib.sha256(data).hexdigest()
        created = await self.http.post(
            "/v1/files/uploads",
            headers=user.headers,
            json={"name": name, "size": len(data), "content_type": content_type, "sha256": digest},
        )
        assert created.status_code in (200, 201), created.text
        body: dict[str, Any] = created.json()
        if created.status_code == 200:
            return body
        part_size = body["part_size"]
        for part in body["parts"]:
            n = part["part_number"]
            put = await self.http.put(part["url"], content=data[(n - 1) * part_size : n * part_size])
            assert put.status_code == 200, put.text
        done = await self.http.post(f"/v1/files/uploads/{body['upload_id']}/complete", headers=user.headers)
        assert done.status_code == 200, done.text
        return dict(done.json())

    async def send(self, user: User, cid: str, text: str, *, client_msg_id: str | None = None) -> httpx.Response:
        return await self.http.post(
            f"/v1/conversations/{cid}/messages",
            json={"client_msg_id": client_msg_id or unique("m"), "content": {"type": "text", "text": text}},
            headers=user.headers,
        )


@dataclass
class Device:
    """One connected device: collects every frame the server sends, in order."""

    user: User
    ws: ClientConnection
    frames: list[dict[str, Any]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    _reader: asyncio.Task[None] | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def connect(cls, ws_url: str, user: User) -> Device:
        ws = await websockets.connect(f"{ws_url}?access_token={user.access_token}", max_size=8 << 20)
        device = cls(user, ws)
        device._reader = asyncio.create_task(device._read())
        return device

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.frames.append(orjson.loads(raw))
                self._arrived.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            self._arrived.set()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def request(self, frame: dict[str, Any], *, answer: str) -> dict[str, Any]:
        """Send a frame with a fresh id and wait for the answer (or error) carrying it as ref."""
        frame_id = f"f{next(_ids)}"
        await self.send({**frame, "id": frame_id})
        return await self.wait_for(lambda f: f.get("ref") == frame_id and f["type"] in (answer, "error"))

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = DEADLINE_S
    ) -> dict[str, Any]:
        """The first frame (already received or arriving) that matches."""

        async def scan() -> dict[str, Any]:
            seen = 0
            while True:
                for frame in self.frames[seen:]:
                    if predicate(frame):
                        return frame
                seen = len(self.frames)
                if self.closed.is_set():
                    raise AssertionError(f"socket closed ({self.close_code}) before the awaited frame")
                self._arrived.clear()
                await self._arrived.wait()

        return await asyncio.wait_for(scan(), timeout)

    async def wait_until(self, condition: Callable[[], bool], *, timeout: float = DEADLINE_S) -> None:
        async def poll() -> None:
            while not condition():
                if self.closed.is_set():
                    raise AssertionError(f"socket closed ({self.close_code}) before the condition held")
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(poll(), timeout)

    def messages(self, cid: str) -> dict[int, dict[str, Any]]:
        """Stored events of a conversation received so far, deduplicated by seq (as a client does)."""
        return {f["seq"]: f for f in self.frames if f["type"] == "message" and f["conversation_id"] == cid}

    async def send_text(self, cid: str, text: str, *, client_msg_id: str | None = None) -> dict[str, Any]:
        return await self.request(
            {
                "type": "send",
                "conversation_id": cid,
                "client_msg_id": client_msg_id or unique("m"),
                "content": {"type": "text", "text": text},
            },
            answer="send_ack",
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 10)
