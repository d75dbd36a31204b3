"""The ``/v1/ws`` endpoint ends sockets that hold the server up: a client that stops reading (queue bound,
write timeout) and a client over its frame rate limit (closed at once, the rest of its flood dropped).

Driven as raw ASGI: the endpoint's app gets a websocket scope and a client whose reading can stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest
from fastapi import FastAPI

from services.common.errors import RateLimited, Unavailable
from services.common.settings import JwtSettings
from services.common.tokens import AccessTokens, Principal
from services.delivery.api import CLOSE_IDLE, WebSocketSettings, build_router
from services.delivery.hub import CLOSE_TOO_SLOW, WRITE_TIMEOUT, Hub
from services.delivery.ports import FrameLimiter
from services.delivery.session import SessionDeps
from tests.support.asgi import websocket_scope
from tests.support.waiting import wait_for
from tests.unit.delivery.test_pending_contract import uid
from tests.unit.delivery.test_pending_hub import Unused
from tests.unit.delivery.test_send_bounds import EMOJI_TEXT, History

SOCKET_BYTES = 1 << 20
SYNC_BYTES = 256 << 10


class Client:
    """The client side of one ASGI websocket connection. While ``reading`` is clear, every frame the
    server sends stays unwritten, as when the client stopped reading and the TCP buffers are full.

    As with a real server, closing takes a handshake: the client answers the close frame after the
    frames it sent before, and the server's close completes once it has read that answer."""

    def __init__(
        self, app: FastAPI, token: str, *, reading: bool = True, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.reading = asyncio.Event()
        if reading:
            self.reading.set()
        self.frames: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self._incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._answer_read = asyncio.Event()
        scope = websocket_scope(token, headers=headers)
        self._incoming.put_nowait({"type": "websocket.connect"})
        self.task = asyncio.create_task(app(scope, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        event = await self._incoming.get()
        if event["type"] == "websocket.disconnect":
            self._answer_read.set()
        return event

    async def _send(self, event: MutableMapping[str, Any]) -> None:
        if event["type"] == "websocket.send":
            await self.reading.wait()
            self.frames.append(orjson.loads(event["text"]))
        elif event["type"] == "websocket.close":
            self.close_code, self.close_reason = event["code"], event["reason"]
            self._incoming.put_nowait({"type": "websocket.disconnect", "code": event["code"]})
            await self._answer_read.wait()

    def send(self, frame: dict[str, Any]) -> None:
        self._incoming.put_nowait({"type": "websocket.receive", "text": orjson.dumps(frame).decode()})

    def leave(self) -> None:
        self._incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})

    @property
    def unread(self) -> int:
        """Frames sent by the client that the server has not received yet."""
        return self._incoming.qsize()

    async def done(self) -> None:
        await asyncio.wait_for(self.task, 20)


class Limiter:
    """Lets ``allowed`` frames through, then refuses every one."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed

    def frames(self, *, ip: str, user_id: str | None) -> Limiter:
        return self

    async def check(self) -> None:
        if self.allowed == 0:
            raise RateLimited("user rate limit exceeded", retry_after=0.5)
        self.allowed -= 1


def node(
    hub: Hub,
    *,
    write_timeout_s: float = 3600.0,
    idle_timeout_s: float = 3600.0,
    limiter: FrameLimiter | None = None,
    internal_token: str | None = None,
) -> tuple[FastAPI, AccessTokens]:
    tokens, unused = AccessTokens(JwtSettings()), Unused()
    deps = SessionDeps(
        hub=hub,
        pusher=hub,
        messages=History({"c1": 100}, EMOJI_TEXT),
        members=unused,
        presence=unused,
        heartbeat_every_s=3600,
        sync_limit=100,
        sync_max_bytes=SYNC_BYTES,
    )
    settings = WebSocketSettings(
        queue_size=1024,
        queue_bytes=SOCKET_BYTES,
        write_timeout_s=write_timeout_s,
        idle_timeout_s=idle_timeout_s,
        max_frame_bytes=65536,
        ack_timeout_s=30,
        max_redeliveries=3,
    )
    app = FastAPI()
    app.include_router(
        build_router(deps, tokens=tokens, settings=settings, limiter=limiter, internal_token=internal_token)
    )
    return app, tokens


def token(tokens: AccessTokens, user: str) -> str:
    return tokens.issue(Principal(user, "phone"), session_id=uid("s"))


async def test_client_that_never_reads_large_sync_results_is_closed_with_1013_holding_at_most_its_bound() -> None:
    hub = Hub(send_budget_bytes=64 << 20)
    app, tokens = node(hub, write_timeout_s=1.0)
    user = uid("u")
    held: list[int] = []
    client = Client(app, token(tokens, user), reading=False)
    await wait_for(lambda: bool(hub.devices(user)), "the socket to be attached")
    for i in range(200):  # 200 pages of about 256 KiB: 50 MiB if nothing bounded them
        client.send({"type": "sync", "id": i, "cursors": {"c1": 0}})

    while client.close_code is None:
        held.append(hub.send_budget.held)
        await wait_for(lambda: client.close_code is not None or hub.send_budget.held != held[-1], "a change")

    assert client.close_code == CLOSE_TOO_SLOW
    assert max(held) <= SOCKET_BYTES
    await client.done()
    assert hub.send_budget.held == 0
    assert hub.connection_count == 0


async def test_socket_whose_write_never_completes_is_closed_after_the_write_timeout() -> None:
    hub = Hub()
    app, tokens = node(hub, write_timeout_s=0.2)
    user = uid("u")
    client = Client(app, token(tokens, user), reading=False)
    await wait_for(lambda: bool(hub.devices(user)), "the socket to be attached")

    await hub.push([user], {"type": "typing", "conversation_id": "c1", "user_id": "bob", "state": "start"})

    await wait_for(lambda: client.close_code is not None, "the stuck socket to be closed")
    assert (client.close_code, client.close_reason) == (CLOSE_TOO_SLOW, WRITE_TIMEOUT)
    await client.done()
    assert (hub.connection_count, hub.send_budget.held) == (0, 0)


async def test_reading_client_is_not_closed_by_the_write_timeout() -> None:
    hub = Hub()
    app, tokens = node(hub, write_timeout_s=5.0)
    client = Client(app, token(tokens, uid("u")))

    for i in range(20):
        client.send({"type": "sync", "id": i, "cursors": {"c1": 0}})
    await wait_for(lambda: len(client.frames) == 20, "every sync answered")

    assert client.close_code is None
    client.send({"type": "ping", "id": "last"})
    await wait_for(lambda: client.frames[-1] == {"type": "pong", "ref": "last"}, "the pong")
    client.leave()
    await client.done()


async def test_silent_client_is_closed_after_the_idle_timeout_and_a_talking_one_is_not() -> None:
    hub = Hub()
    app, tokens = node(hub, idle_timeout_s=0.3)
    silent, talking = Client(app, token(tokens, uid("u"))), Client(app, token(tokens, uid("u")))
    started = time.monotonic()

    for i in range(8):  # 0.8 s of a frame every 0.1 s
        talking.send({"type": "ping", "id": i})
        await asyncio.sleep(0.1)

    assert (silent.close_code, silent.close_reason) == (CLOSE_IDLE, "idle timeout")
    await silent.done()
    assert time.monotonic() - started >= 0.3
    assert talking.close_code is None
    await wait_for(lambda: talking.close_code is not None, "the talking client, now silent, to be closed")
    talking.leave()
    await talking.done()


async def test_frame_over_the_rate_limit_is_answered_then_closed_with_4008_and_the_rest_is_dropped_unhandled() -> None:
    hub = Hub()
    app, tokens = node(hub, limiter=Limiter(allowed=10))
    client = Client(app, token(tokens, uid("u")))

    for i in range(300):  # far over the limit, sent before the server read any of it
        client.send({"type": "ping", "id": i})

    await wait_for(lambda: client.close_code is not None, "the close")
    assert client.close_code == 4008
    assert client.close_reason == "rate limited: user rate limit exceeded"
    assert client.frames == [
        *({"type": "pong", "ref": i} for i in range(10)),
        {
            "type": "error",
            "ref": None,
            "code": "rate_limited",
            "message": "user rate limit exceeded",
            "retry_after": 0.5,
        },
    ]
    # Read and dropped: a server that stopped reading would hold the close handshake up behind them.
    await client.done()
    assert client.unread == 0
    assert hub.connection_count == 0


@pytest.mark.parametrize(
    ("retry_after", "told"),
    [(b"0.420", {"retry_after": 0.42}), (None, {}), (b"soon", {}), (b"nan", {}), (b"-1", {})],
)
async def test_an_upgrade_the_gateway_refused_gets_its_retry_after_then_4008(
    retry_after: bytes | None, told: dict[str, float]
) -> None:
    hub = Hub()
    app, tokens = node(hub)
    headers = [(b"x-courier-reject", b"4008")]
    if retry_after is not None:
        headers.append((b"x-courier-retry-after", retry_after))
    client = Client(app, token(tokens, uid("u")), headers=headers)

    await wait_for(lambda: client.close_code is not None, "the close")
    assert (client.close_code, client.close_reason) == (4008, "rate limited")
    assert client.frames == [
        {"type": "error", "ref": None, "code": "rate_limited", "message": "too many connections; back off", **told}
    ]
    assert hub.connection_count == 0  # refused before it was a connection
    # The endpoint reads nothing more, so this test client's close handshake would wait for its answer forever.
    client.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await client.task


class Recorder:
    """Lets every frame through and notes the address each frame was counted under."""

    def __init__(self) -> None:
        self.ips: list[str] = []
        self._ip = ""

    def frames(self, *, ip: str, user_id: str | None) -> Recorder:
        self._ip = ip
        return self

    async def check(self) -> None:
        self.ips.append(self._ip)


async def test_frames_count_under_the_address_the_gateway_vouches_for_and_only_with_its_token() -> None:
    secret = "i" * 32
    forwarded = (b"x-forwarded-for", b"203.0.113.7")
    cases = {
        "203.0.113.7": [forwarded, (b"x-courier-internal", secret.encode())],
        "127.0.0.1": [forwarded, (b"x-courier-internal", b"a guess")],
    }
    for expected, headers in [*cases.items(), ("127.0.0.1", [forwarded])]:
        recorder, hub = Recorder(), Hub()
        app, tokens = node(hub, limiter=recorder, internal_token=secret)
        client = Client(app, token(tokens, uid("u")), headers=headers)
        client.send({"type": "ping", "id": 1})
        await wait_for(lambda c=client: len(c.frames) == 1, "the pong")  # type: ignore[misc]
        client.leave()
        await client.done()
        assert recorder.ips == [expected], headers


class Unreachable:
    def frames(self, *, ip: str, user_id: str | None) -> Unreachable:
        return self

    async def check(self) -> None:
        raise Unavailable("redis unreachable")


async def test_frames_are_served_while_the_frame_buckets_are_unreachable() -> None:
    hub = Hub()
    app, tokens = node(hub, limiter=Unreachable())
    client = Client(app, token(tokens, uid("u")))
    for i in range(3):
        client.send({"type": "ping", "id": i})

    await wait_for(lambda: len(client.frames) == 3, "three pongs")
    assert client.frames == [{"type": "pong", "ref": i} for i in range(3)]
    assert client.close_code is None
    client.leave()
    await client.done()
