"""Service-to-service calls over long-lived WebSockets: the internal HTTP calls without HTTP's cost per call.

An internal call over HTTP costs both processes a request's setup, headers and parsing; on loopback about
240 us of CPU for one small POST (the client two thirds of it), several times what a frame on an open
WebSocket costs (docs/performance.md 25). Each ``InternalClient`` therefore sends its calls over up to
``STREAMS`` WebSockets to the other service's ``/internal/stream`` and keeps them open; HTTP stays the way
for a request too large for one frame and for a server without the route.

On the wire every frame is binary. A request: its id (4 bytes), the length of its head (2 bytes), the head
(JSON: method, path, and the trace context headers of the caller), then the body. An answer: the id, the
HTTP status (2 bytes), then the body. Id 0 from the server is ``go away``: the process is stopping, send
nothing new on this stream.

The server answers a POST call of ``services.common.contract`` straight from the frame (``answer_calls``): its
``Call`` reads the body and answers it, errors are answered as the app's error handlers answer them
(``web.error_answer``), and the request is counted and timed in the app's HTTP metrics and, with tracing on,
has a server span, as the app's middleware would. Any other request (a GET call, a route of the app's own) is
run through the app as an HTTP request. Either way a call behaves the same on either transport; the app's
stack around each call was a tenth of a delivery node's CPU (docs/performance.md 28).

A stopping server (``StreamServer.go_away``, after the lag of docs/design.md 7.5) tells its streams to go
away and waits for their clients to close them: a client sends nothing new on such a stream, closes it once
every answer it waits for has come, and uses HTTP for that server for ``GO_AWAY_HTTP_S``, which uvicorn's own
shutdown lets finish. Answers are never dropped by a stop, as with HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import aiohttp
import orjson
from opentelemetry import trace
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp, Message, Scope
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.common import telemetry
from services.common.errors import Unavailable
from services.common.observe import count_request
from services.common.web import INTERNAL_ERROR, error_answer, error_body

if TYPE_CHECKING:  # internal.py builds its clients on this module
    from services.common.contract import StreamAnswer
    from services.common.internal import RequireInternal

log = logging.getLogger("courier.stream")

STREAM_PATH = "/internal/stream"
STREAMS = 4
"""WebSockets a client keeps to one server at most: a new one opens when every open one has a call out, as
HTTP's pool opens connections, so a Service's pods share a client's calls as they shared its connections."""
MAX_REQUEST_BYTES = 1 << 20
"""Larger requests go over HTTP (the services take WebSocket frames of up to 4 MiB)."""
GO_AWAY_HTTP_S = 5.0
IN_FLIGHT_PER_STREAM = 256
"""Requests of one stream the server runs at once; the next waits, and so does the stream's reading."""

_REQUEST = struct.Struct(">IH")  # id, length of the head
_ANSWER = struct.Struct(">IH")  # id, status
_GO_AWAY = _ANSWER.pack(0, 0)
_JSON = (b"content-type", b"application/json")


class _NotSent(Exception):
    """The stream had closed before the call was sent."""


class _Stream:
    """One client WebSocket: its calls waiting for answers, by id."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, base_url: str) -> None:
        self.ws = ws
        self.base_url = base_url
        self.waiting: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.going_away = False
        self._ids = itertools.count()
        self._reader = asyncio.create_task(self._read(), name="internal-stream")

    @property
    def usable(self) -> bool:
        return not self.going_away and not self.ws.closed

    async def ask(self, method: str, path: str, headers: Mapping[str, str], body: bytes, timeout_s: float) -> Any:
        if self.ws.closed:
            raise _NotSent  # ended since it was picked (told to go away with nothing out): HTTP takes the call
        call_id = next(self._ids) % 0xFFFFFFFF + 1  # 0 is the server's go-away
        answer: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.waiting[call_id] = answer
        head = orjson.dumps({"m": method, "p": path, "h": headers})
        try:
            async with asyncio.timeout(timeout_s):
                await self.ws.send_bytes(_REQUEST.pack(call_id, len(head)) + head + body)
                return await answer
        except TimeoutError:
            # A server that stopped answering: this stream is not used again (its other calls fail too).
            self.going_away = True
            await self.ws.close()
            raise Unavailable(f"{self.base_url}{path} did not answer within {timeout_s:g}s") from None
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            raise Unavailable(f"{self.base_url} stream lost: {exc.__class__.__name__}") from exc
        finally:
            self.waiting.pop(call_id, None)
            if self.going_away and not self.waiting:
                await self.ws.close()

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type != aiohttp.WSMsgType.BINARY:
                    break
                data: bytes = message.data
                call_id, status = _ANSWER.unpack_from(data)
                if call_id == 0:
                    self.going_away = True
                    if not self.waiting:
                        break
                    continue
                answer = self.waiting.get(call_id)
                if answer is not None and not answer.done():
                    answer.set_result((status, data[_ANSWER.size :]))
        except Exception:  # noqa: BLE001 - whatever ended the stream, its calls are told below
            log.debug("internal stream to %s ended", self.base_url, exc_info=True)
        finally:
            self.going_away = True
            for answer in self.waiting.values():
                if not answer.done():
                    answer.set_exception(Unavailable(f"{self.base_url} stream closed"))
            await self.ws.close()

    async def close(self) -> None:
        self.going_away = True
        await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Streams:
    """A client's WebSockets to one server (``InternalClient`` holds one)."""

    def __init__(
        self,
        base_url: str,
        session: Callable[[], aiohttp.ClientSession],
        *,
        timeout_s: float,
        size: int = STREAMS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base_url = base_url
        self._session = session
        self._timeout_s = timeout_s
        self._size = size
        self._clock = clock
        self._open: list[_Stream] = []
        self._opening = 0
        self._opened = asyncio.Event()
        self._http_until = 0.0

    async def ask(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, bytes] | None:
        """The call's status and answer over a stream; None when it should go over HTTP instead."""
        if len(body) > MAX_REQUEST_BYTES or self._clock() < self._http_until:
            return None
        stream = await self._pick()
        if stream is None:
            return None
        try:
            answer: tuple[int, bytes] = await stream.ask(method, path, headers, body, self._timeout_s)
        except _NotSent:
            self._turn_to_http()
            return None
        if stream.going_away:
            self._turn_to_http()
        return answer

    def _turn_to_http(self) -> None:
        """Calls go over HTTP for ``GO_AWAY_HTTP_S``: the server is stopping, or has no stream to offer."""
        self._http_until = self._clock() + GO_AWAY_HTTP_S

    async def _pick(self) -> _Stream | None:
        """The open stream with the fewest calls out, a new one while every open one has some and there is
        room, or None (HTTP). A call that finds the streams all being opened waits for one of them."""
        while True:
            self._open = [stream for stream in self._open if stream.usable or stream.waiting]
            usable = [stream for stream in self._open if stream.usable]
            least = min(usable, key=lambda stream: len(stream.waiting), default=None)
            room = len(self._open) + self._opening < self._size
            if least is not None and (not least.waiting or not room):
                return least
            if room:
                try:
                    opened = await self._connect()
                except Unavailable:
                    if least is None:
                        raise
                    return least  # the streams open already still carry the call
                return opened or least
            if self._opening == 0 or self._clock() < self._http_until:
                return least
            await self._opened.wait()

    async def _connect(self) -> _Stream | None:
        self._opening += 1
        try:
            ws = await self._session().ws_connect(
                self._base_url + STREAM_PATH, timeout=aiohttp.ClientWSTimeout(ws_close=self._timeout_s), max_msg_size=0
            )
        except aiohttp.WSServerHandshakeError as exc:
            # A server without the route (an earlier release during an upgrade), or one that refuses it: HTTP.
            log.info("%s has no internal stream (%d); calling it over HTTP", self._base_url, exc.status)
            self._turn_to_http()
            return None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Unavailable(f"{self._base_url} unreachable: {exc.__class__.__name__}") from exc
        finally:
            self._opening -= 1
            opened, self._opened = self._opened, asyncio.Event()
            opened.set()
        stream = _Stream(ws, self._base_url)
        self._open.append(stream)
        return stream

    async def close(self) -> None:
        streams, self._open = self._open, []
        for stream in streams:
            await stream.close()


class StreamServer:
    """The ``/internal/stream`` route of a service app, for callers with the internal token."""

    def __init__(self, guard: RequireInternal, *, service: str) -> None:
        self._guard = guard
        self._service = service
        self._headers = [guard.header, _JSON]  # of every request run for a caller the guard admitted
        self._calls: dict[str, StreamAnswer] = {}
        self._streams: set[WebSocket] = set()
        self._going_away = False
        self._ended = asyncio.Event()
        self.answered = 0
        """Requests answered over streams so far."""

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def route(self) -> WebSocketRoute:
        return WebSocketRoute(STREAM_PATH, self._serve, name="internal_stream")

    def answer_calls(self, calls: Mapping[str, StreamAnswer]) -> None:
        """Answer the POST calls ``calls`` (by path, ``contract.stream_answers``) straight from the stream."""
        self._calls = dict(calls)

    async def go_away(self, deadline_s: float) -> None:
        """Ask every stream's client to close it once its calls are answered, and wait for that (at most
        ``deadline_s``); streams opened from now on are told the same at once."""
        self._going_away = True
        for ws in list(self._streams):
            await _send_quietly(ws, _GO_AWAY)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                while self._streams:
                    self._ended.clear()
                    await self._ended.wait()

    async def _serve(self, ws: WebSocket) -> None:
        if not self._guard.admits(ws.headers):
            await ws.close(code=1008)  # before accept: the handshake is refused with 403
            return
        await ws.accept()
        self._streams.add(ws)
        app: ASGIApp = ws.scope["app"]
        slots = asyncio.Semaphore(IN_FLIGHT_PER_STREAM)
        running: set[asyncio.Task[None]] = set()
        try:
            if self._going_away:
                await _send_quietly(ws, _GO_AWAY)
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if data is None:
                    await ws.close(code=1003)
                    break
                await slots.acquire()
                task = asyncio.create_task(self._answer(app, ws, data, slots))
                running.add(task)
                task.add_done_callback(running.discard)
        except WebSocketDisconnect:
            pass
        finally:
            if running:  # answered before go_away counts the stream as ended (a hung call: not for long)
                await asyncio.wait(running, timeout=GO_AWAY_HTTP_S)
            self._streams.discard(ws)
            self._ended.set()

    async def _answer(self, app: ASGIApp, ws: WebSocket, data: bytes, slots: asyncio.Semaphore) -> None:
        try:
            call_id, head_size = _REQUEST.unpack_from(data)
            head = orjson.loads(data[_REQUEST.size : _REQUEST.size + head_size])
            body = data[_REQUEST.size + head_size :]
            call = self._calls.get(head["p"]) if head["m"] == "POST" else None
            if call is None:
                status, answer = await _run(app, ws.scope, self._headers, head, body)
            elif telemetry.is_enabled():
                status, answer = await self._traced(call, head, body)
            else:
                status, answer = await self._call(call, head["p"], body)
            self.answered += 1
            await _send_quietly(ws, _ANSWER.pack(call_id, status) + answer)
        except (struct.error, orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("malformed internal stream request; closing the stream")
            await ws.close(code=1003)
        finally:
            slots.release()

    async def _call(self, call: StreamAnswer, path: str, body: bytes) -> tuple[int, bytes]:
        """``call`` answering ``body``, counted and timed as the app's middleware counts a request."""
        started = time.perf_counter()
        try:
            answer = await call(body)
        except Exception as exc:  # noqa: BLE001 - answered as the app's error handlers answer it
            status, answer = error_answer(exc)
            if status == 500:
                log.error("unhandled error on POST %s", path, exc_info=exc)
        else:
            status, answer = (204, b"") if answer is None else (200, answer)
        count_request(self._service, "POST", path, status, started)
        return status, answer

    async def _traced(self, call: StreamAnswer, head: Mapping[str, Any], body: bytes) -> tuple[int, bytes]:
        """``_call`` in a server span continuing the caller's trace, as the app's instrumentation gives a request."""
        path = str(head["p"])
        carrier = {str(k).lower(): str(v) for k, v in dict(head.get("h") or {}).items()}
        with telemetry.tracer(__name__).start_as_current_span(
            f"POST {path}",
            context=telemetry.extract(carrier),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": path},
        ) as span:
            status, answer = await self._call(call, path, body)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(trace.StatusCode.ERROR)
        return status, answer


async def _send_quietly(ws: WebSocket, data: bytes) -> None:
    """A frame to a stream that may have closed meanwhile (its client then has its answer as a failure)."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, ConnectionError):
        await ws.send_bytes(data)


async def _run(
    app: ASGIApp, ws_scope: Scope, own: list[tuple[bytes, bytes]], head: Mapping[str, Any], body: bytes
) -> tuple[int, bytes]:
    """One request through ``app`` as HTTP, with the headers ``own`` and the caller's: its status and body."""
    method, path = str(head["m"]), str(head["p"])
    raw, _, query = path.partition("?")
    headers = own + [(str(k).lower().encode(), str(v).encode()) for k, v in dict(head.get("h") or {}).items()]
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw),
        "raw_path": raw.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ws_scope.get("client"),
        "server": ws_scope.get("server"),
        "state": dict(ws_scope.get("state") or {}),
    }
    answered = asyncio.Event()
    sent = False
    status = 500
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                answered.set()

    try:
        await app(scope, receive, send)
    except Exception:
        # Starlette's outermost middleware answers an unexpected error (500, logged by the error handler) and
        # raises it again for the server, as uvicorn expects; here the answer it sent is the answer.
        if not chunks:
            log.exception("internal stream request %s %s failed without an answer", method, raw)
            return 500, orjson.dumps(error_body("internal", INTERNAL_ERROR))
    finally:
        answered.set()
    return status, b"".join(chunks)
