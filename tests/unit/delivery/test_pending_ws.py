"""The ``/v1/ws`` endpoint restores a device's pending frames as it connects, before anything else.

Driven as raw ASGI: the endpoint's app gets a websocket scope and two queues, no server or thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import orjson
from fastapi import FastAPI

from services.common.settings import JwtSettings
from services.common.tokens import AccessTokens, Principal
from services.delivery.api import WebSocketSettings, build_router
from services.delivery.hub import Hub
from services.delivery.pending import MemoryPendingStore, Pending
from services.delivery.session import SessionDeps
from tests.support.asgi import websocket_scope
from tests.unit.delivery.test_pending_contract import message, uid
from tests.unit.delivery.test_pending_hub import Unused


class Socket:
    """The client side of one ASGI websocket connection."""

    def __init__(self, app: FastAPI, token: str) -> None:
        self._incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outgoing: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        scope = websocket_scope(token)
        self._incoming.put_nowait({"type": "websocket.connect"})
        self.task = asyncio.create_task(app(scope, self._incoming.get, self._outgoing.put))

    async def receive(self) -> dict[str, Any]:
        while True:
            event = await asyncio.wait_for(self._outgoing.get(), 10)
            if event["type"] == "websocket.send":
                frame: dict[str, Any] = orjson.loads(event["text"])
                return frame
            assert event["type"] == "websocket.accept", event

    def send(self, frame: dict[str, Any]) -> None:
        self._incoming.put_nowait({"type": "websocket.receive", "text": orjson.dumps(frame).decode()})

    async def disconnect(self) -> None:
        self._incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(self.task, 10)


async def test_connecting_device_first_gets_its_pending_frames_redelivered_and_its_acks_reach_the_store() -> None:
    store, u, c = MemoryPendingStore(), uid("u"), uid("c")
    await store.add(u, "phone", [message(c, 1), message(c, 2)])  # left unacked on another node
    await store.ack(u, "phone", c, 1)
    tokens, unused, hub = AccessTokens(JwtSettings()), Unused(), Hub(pending=store)
    deps = SessionDeps(
        hub=hub,
        pusher=hub,
        messages=unused,
        members=unused,
        presence=unused,
        heartbeat_every_s=3600,
        sync_limit=100,
        sync_max_bytes=1 << 20,
    )
    settings = WebSocketSettings(
        queue_size=64,
        queue_bytes=1 << 20,
        write_timeout_s=30,
        idle_timeout_s=30,
        max_frame_bytes=65536,
        ack_timeout_s=30,
        max_redeliveries=3,
    )
    app = FastAPI()
    app.include_router(build_router(deps, tokens=tokens, settings=settings))

    ws = Socket(app, tokens.issue(Principal(u, "phone"), session_id=uid("s")))
    try:
        assert await ws.receive() == {**message(c, 2), "redelivered": True}
        ws.send({"type": "ack", "conversation_id": c, "seq": 2})
        ws.send({"type": "ping", "id": 1})
        assert await ws.receive() == {"type": "pong", "ref": 1}  # frames of one socket are handled in order
        await ws.disconnect()
    finally:
        ws.task.cancel()

    assert await store.load(u, "phone") == Pending([], {c: 2})
    assert hub.connection_count == 0
