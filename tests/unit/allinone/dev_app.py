"""The ``courier dev`` app in this process: its lifespan run by hand, HTTP through httpx's ASGI transport,
WebSockets as raw ASGI connections (no server, no thread)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import orjson
from fastapi import FastAPI

from services.allinone import create_app
from services.common.settings import PasswordSettings, Settings
from tests.support.asgi import websocket_scope

PASSWORD = "correct horse battery"
DEADLINE_S = 20.0


@dataclass(frozen=True)
class Closed:
    code: int
    reason: str


class Socket:
    """The client side of one ``/v1/ws`` connection."""

    def __init__(self, app: FastAPI, token: str) -> None:
        self._incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outgoing: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        scope = websocket_scope(token)
        self._incoming.put_nowait({"type": "websocket.connect"})
        self.task = asyncio.create_task(app(scope, self._incoming.get, self._outgoing.put))

    async def receive(self) -> dict[str, Any] | Closed:
        """The next frame, or how the server closed the socket."""
        while True:
            event = await asyncio.wait_for(self._outgoing.get(), DEADLINE_S)
            if event["type"] == "websocket.send":
                frame: dict[str, Any] = orjson.loads(event["text"])
                return frame
            if event["type"] == "websocket.close":
                return Closed(int(event.get("code", 1000)), str(event.get("reason", "")))

    async def closed(self) -> Closed:
        """Wait (at most the deadline) until the server closes the socket, skipping the frames before."""
        while not isinstance(received := await self.receive(), Closed):
            pass
        return received

    async def ping(self) -> None:
        """A round trip: once it is answered the socket is attached and serving."""
        self._incoming.put_nowait({"type": "websocket.receive", "text": '{"type": "ping", "id": "p"}'})
        assert await self.receive() == {"type": "pong", "ref": "p"}

    async def end(self) -> None:
        self._incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self.task, DEADLINE_S)


@dataclass
class DevApp:
    app: FastAPI
    http: httpx.AsyncClient

    async def account(self) -> str:
        """A new user's name."""
        username = f"u{uuid4().hex[:12]}"
        answer = await self.http.post("/v1/auth/register", json={"username": username, "password": PASSWORD})
        assert answer.status_code == 201, answer.text
        return username

    async def login(self, username: str, device_id: str = "phone") -> dict[str, Any]:
        answer = await self.http.post(
            "/v1/auth/login", json={"username": username, "password": PASSWORD, "device_id": device_id}
        )
        assert answer.status_code == 200, answer.text
        tokens: dict[str, Any] = answer.json()
        return tokens

    async def me(self, access_token: str) -> httpx.Response:
        return await self.http.get("/v1/users/me", headers={"Authorization": f"Bearer {access_token}"})

    def connect(self, access_token: str) -> Socket:
        return Socket(self.app, access_token)


def dev_settings(data_dir: Path) -> Settings:
    cheap = PasswordSettings(time_cost=1, memory_kib=8, parallelism=1)
    return Settings(mode="dev", data_dir=data_dir, passwords=cheap)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[DevApp]:
    """``courier dev`` as ``create_app`` builds it, started and stopped like the server does."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://courier.test") as http:
            yield DevApp(app, http)
