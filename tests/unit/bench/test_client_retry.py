"""The load tool's sockets retry a 503 as a client would, and nothing else."""

from __future__ import annotations

from http import HTTPStatus

import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from bench.client import Socket


class Doorman:
    """A WebSocket server that answers the first ``refusals`` upgrades with ``status``."""

    def __init__(self, refusals: int, status: HTTPStatus) -> None:
        self.refusals = refusals
        self.status = status
        self.upgrades = 0

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        self.upgrades += 1
        if self.refusals:
            self.refusals -= 1
            return connection.respond(self.status, "not now\n")
        return None


async def idle(connection: ServerConnection) -> None:
    await connection.wait_closed()


async def test_a_socket_refused_with_503_opens_on_a_later_try() -> None:
    doorman = Doorman(2, HTTPStatus.SERVICE_UNAVAILABLE)
    async with serve(idle, "127.0.0.1", 0, process_request=doorman) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        socket = await Socket.open_retrying(f"ws://127.0.0.1:{port}/v1/ws", "token", attempts=3)
        await socket.close()
    assert doorman.upgrades == 3


async def test_a_socket_refused_otherwise_is_not_tried_again() -> None:
    doorman = Doorman(1, HTTPStatus.UNAUTHORIZED)
    async with serve(idle, "127.0.0.1", 0, process_request=doorman) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        with pytest.raises(websockets.InvalidStatus):
            await Socket.open_retrying(f"ws://127.0.0.1:{port}/v1/ws", "token")
    assert doorman.upgrades == 1


async def test_the_last_503_is_the_callers() -> None:
    doorman = Doorman(2, HTTPStatus.SERVICE_UNAVAILABLE)
    async with serve(idle, "127.0.0.1", 0, process_request=doorman) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        with pytest.raises(websockets.InvalidStatus, match="503"):
            await Socket.open_retrying(f"ws://127.0.0.1:{port}/v1/ws", "token", attempts=2)
    assert doorman.upgrades == 2
