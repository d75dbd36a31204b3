"""Every uvicorn server Courier starts uses the WebSocket implementation chosen by measurement, and that
one lets go of a client that stopped reading."""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from services.cli import WS_PROTOCOL
from services.common.wsprotocol import BoundedCloseProtocol

SERVICES = Path(__file__).resolve().parents[3] / "services"


def _uvicorn_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in sorted(SERVICES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "uvicorn"
                and node.func.attr in ("run", "Config")
            ):
                calls.append((f"{path.relative_to(SERVICES.parent)}:{node.lineno}", node))
    return calls


def _ws_argument(call: ast.Call) -> str | None:
    for keyword in call.keywords:
        if keyword.arg != "ws":
            continue
        if isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, str):
            return keyword.value.value
        if isinstance(keyword.value, ast.Name) and keyword.value.id == "WS_PROTOCOL":
            return WS_PROTOCOL
    return None


def test_every_uvicorn_server_names_the_chosen_implementation() -> None:
    calls = _uvicorn_calls()
    assert len(calls) >= 3  # courier dev, courier run, the gateway's inner server
    assert {where: _ws_argument(call) for where, call in calls} == {where: WS_PROTOCOL for where, _ in calls}


def test_the_chosen_implementation_is_websockets_sans_io_with_a_bounded_close() -> None:
    config = uvicorn.Config(FastAPI(), ws=WS_PROTOCOL, log_config=None)  # None: leave the logging of the tests alone
    config.load()
    assert config.ws_protocol_class is BoundedCloseProtocol


CLOSE_TIMEOUT_S = 0.5


class QuickClose(BoundedCloseProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = CLOSE_TIMEOUT_S


def _flooding_app(closed: asyncio.Event) -> FastAPI:
    """Writes until a write stalls (the client stopped reading), then closes, as the delivery node's writer does."""
    app = FastAPI()

    @app.websocket("/ws")
    async def flood(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                async with asyncio.timeout(0.2):
                    await websocket.send_text("x" * 65536)
        except TimeoutError:
            pass
        with contextlib.suppress(WebSocketDisconnect):  # what starlette makes of a dropped client
            await websocket.close(1013)
        closed.set()

    return app


async def test_a_client_that_reads_nothing_is_dropped_a_close_timeout_after_the_close() -> None:
    closed = asyncio.Event()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(_flooding_app(closed), ws=QuickClose, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    client = socket.create_connection(("127.0.0.1", port))
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        key = base64.b64encode(os.urandom(16)).decode()
        client.sendall(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )  # and never reads a byte
        async with asyncio.timeout(10):
            await closed.wait()
        asked_to_close = time.monotonic()
        async with asyncio.timeout(10):
            while server.server_state.connections:
                await asyncio.sleep(0.02)
        assert time.monotonic() - asked_to_close < CLOSE_TIMEOUT_S + 1.0
    finally:
        client.close()
        server.should_exit = True
        await serving
