"""The protocol client of the load tool: HTTP calls (httpx) and devices on WebSockets (websockets).

It speaks docs/protocol.md and nothing more: JSON text frames with ``type``, answers matched by
``ref``, cumulative ``ack``s. Every frame that is not an answer goes to the scenario's handler with
the wall-clock time it arrived, which is what latencies are measured against.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection, connect

FrameHandler = Callable[[dict[str, Any], float], None]
MAX_FRAME_BYTES = 8 << 20


class HttpError(Exception):
    """An HTTP answer the tool did not expect, with the protocol's error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Http:
    """HTTP calls with bounded parallelism; 429 answers are waited out (``Retry-After``) and
    retried, and counted, since a benchmark that trips the limiter measures the limiter."""

    def __init__(self, base_url: str, *, parallelism: int = 16, timeout_s: float = 120.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=parallelism, max_keepalive_connections=parallelism),
        )
        self.rate_limited = 0
        self.calls: Counter[str] = Counter()

    async def close(self) -> None:
        await self._client.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        token: str | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        content = orjson.dumps(body) if body is not None else None
        if content is not None:
            headers["Content-Type"] = "application/json"
        for attempt in itertools.count(1):
            try:
                answer = await self._client.request(method, path, content=content, headers=headers)
            except httpx.TransportError as exc:
                if attempt >= 5:
                    raise HttpError(0, "transport", f"{method} {path}: {exc!r}") from exc
                await asyncio.sleep(0.2 * attempt)
                continue
            self.calls[f"{method} {answer.status_code}"] += 1
            if answer.status_code == 429 and attempt < 20:
                self.rate_limited += 1
                await asyncio.sleep(float(answer.headers.get("retry-after", "1")))
                continue
            data = orjson.loads(answer.content) if answer.content else None
            if answer.status_code not in expect:
                error = (data or {}).get("error", {}) if isinstance(data, dict) else {}
                raise HttpError(answer.status_code, error.get("code", "?"), error.get("message", answer.text[:200]))
            return answer.status_code, data
        raise AssertionError("unreachable")

    async def register(self, username: str, password: str) -> bool:
        """True when created, False when the name was taken already (a user of an earlier run)."""
        status, _ = await self.call(
            "POST", "/v1/auth/register", body={"username": username, "password": password}, expect=(201, 409)
        )
        return status == 201

    async def login(self, username: str, password: str, device_id: str) -> dict[str, Any]:
        _, data = await self.call(
            "POST", "/v1/auth/login", body={"username": username, "password": password, "device_id": device_id}
        )
        return dict(data)

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        _, data = await self.call("POST", "/v1/auth/refresh", body={"refresh_token": refresh_token})
        return dict(data)

    async def me(self, token: str) -> dict[str, Any] | None:
        status, data = await self.call("GET", "/v1/users/me", token=token, expect=(200, 401, 404))
        return dict(data) if status == 200 else None

    async def direct(self, token: str, peer_id: str) -> str:
        _, data = await self.call(
            "POST", "/v1/conversations", token=token, body={"type": "direct", "peer_id": peer_id}, expect=(200, 201)
        )
        return str(data["conversation_id"])

    async def group(self, token: str, title: str, member_ids: list[str]) -> str:
        _, data = await self.call(
            "POST",
            "/v1/conversations",
            token=token,
            body={"type": "group", "title": title, "member_ids": member_ids},
            expect=(201,),
        )
        return str(data["conversation_id"])

    async def add_members(self, token: str, conversation_id: str, user_ids: list[str]) -> None:
        await self.call(
            "POST", f"/v1/conversations/{conversation_id}/members", token=token, body={"user_ids": user_ids}
        )

    async def conversation(self, token: str, conversation_id: str) -> dict[str, Any] | None:
        status, data = await self.call("GET", f"/v1/conversations/{conversation_id}", token=token, expect=(200, 404))
        return dict(data) if status == 200 else None


def connect_error_kind(exc: BaseException) -> str:
    """A short name for why a WebSocket did not open, for the error counts of the report."""
    if isinstance(exc, websockets.InvalidStatus):
        return f"http {exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "handshake timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError):
        return f"os error {exc.errno}"
    return type(exc).__name__


class Socket:
    """One device's WebSocket. A reader task resolves the answers of ``request`` (by ``ref``) and
    hands every other frame to ``on_frame(frame, arrived_at)``."""

    def __init__(self, ws: ClientConnection, on_frame: FrameHandler | None) -> None:
        self.ws = ws
        self.on_frame = on_frame
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self.received = 0
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        ws_url: str,
        token: str,
        *,
        on_frame: FrameHandler | None = None,
        deflate: bool = False,
        open_timeout_s: float = 30.0,
    ) -> Socket:
        ws = await connect(
            f"{ws_url}?access_token={token}",
            compression="deflate" if deflate else None,
            open_timeout=open_timeout_s,
            ping_interval=None,
            close_timeout=5,
            max_size=MAX_FRAME_BYTES,
        )
        return cls(ws, on_frame)

    @classmethod
    async def open_retrying(cls, ws_url: str, token: str, *, deflate: bool = False, attempts: int = 5) -> Socket:
        """``open``, tried again after an answer of 503 (a server with no room right now, as while ten thousand
        sockets connect at once) the way a client retries: after 1, 2, 4... seconds, ``attempts`` times in all."""
        for attempt in range(attempts - 1):
            try:
                return await cls.open(ws_url, token, deflate=deflate)
            except websockets.InvalidStatus as exc:
                if exc.response.status_code != 503:
                    raise
            await asyncio.sleep(2.0**attempt)
        return await cls.open(ws_url, token, deflate=deflate)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                arrived = time.time()
                self.received += 1
                frame = orjson.loads(raw)
                ref = frame.get("ref")
                waiter = self._waiting.pop(ref, None) if isinstance(ref, int) else None
                if waiter is not None:
                    if not waiter.done():
                        waiter.set_result(frame)
                elif self.on_frame is not None:
                    self.on_frame(frame, arrived)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
            self.closed.set()
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError(f"socket closed ({self.close_code})"))
            self._waiting.clear()

    def next_id(self) -> int:
        return next(self._ids)

    async def send(self, frame: Mapping[str, Any]) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def request(self, frame: Mapping[str, Any], *, timeout_s: float = 60.0) -> dict[str, Any]:
        """Send ``frame`` with a fresh id; its answer (or the error frame carrying its ref)."""
        frame_id = self.next_id()
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[frame_id] = waiter
        try:
            await self.send({**frame, "id": frame_id})
            return await asyncio.wait_for(waiter, timeout_s)
        finally:
            self._waiting.pop(frame_id, None)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._reader, 10)


@dataclass
class Acker:
    """Cumulative acks as a real client sends them: the highest seq seen per conversation, sent as
    soon as the socket is free, so a burst of pushes is acked by one frame rather than one each."""

    socket: Socket
    highest: dict[str, int]
    sent: dict[str, int]
    frames: int = 0

    @classmethod
    def start(cls, socket: Socket) -> tuple[Acker, asyncio.Task[None]]:
        acker = cls(socket, {}, {})
        return acker, asyncio.create_task(acker._run())

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()

    def note(self, conversation_id: str, seq: int) -> None:
        if seq > self.highest.get(conversation_id, 0):
            self.highest[conversation_id] = seq
            self._wake.set()

    async def _run(self) -> None:
        while not self.socket.closed.is_set():
            await self._wake.wait()
            self._wake.clear()
            for cid, seq in list(self.highest.items()):
                if seq > self.sent.get(cid, 0):
                    self.sent[cid] = seq
                    try:
                        await self.socket.send({"type": "ack", "conversation_id": cid, "seq": seq})
                    except websockets.ConnectionClosed:
                        return
                    self.frames += 1
