"""The WebSocket endpoint ``/v1/ws`` of a delivery node: a thin socket loop around ``Session``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import ORJSONResponse

from services.common import internal, metrics
from services.common.errors import CourierError, RateLimited, Unauthorized
from services.common.tokens import AccessTokens, Principal, bearer
from services.delivery.hub import CLOSE_INTERNAL, CLOSE_TOO_SLOW, SENT_SERIES, WRITE_TIMEOUT, Close, Connection
from services.delivery.ports import FrameLimiter
from services.delivery.protocol import AckWindow, encode, error_frame
from services.delivery.session import RECEIVED_SERIES, Session, SessionDeps

log = logging.getLogger("courier.delivery.ws")

CLOSE_UNAUTHORIZED = 4001
CLOSE_RATE_LIMITED = 4008
CLOSE_IDLE = 1001
# On an upgrade refused because this node is draining: the gateway reads it and splices to another node.
DRAINING_HEADER = "x-courier-draining"


class WebSocketSettings:
    def __init__(
        self,
        *,
        queue_size: int,
        queue_bytes: int,
        write_timeout_s: float,
        idle_timeout_s: float,
        max_frame_bytes: int,
        ack_timeout_s: float,
        max_redeliveries: int,
    ) -> None:
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self.write_timeout_s = write_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.ack_timeout_s = ack_timeout_s
        self.max_redeliveries = max_redeliveries


def _authenticate(websocket: WebSocket, tokens: AccessTokens) -> Principal:
    token = bearer(websocket.headers.get("authorization")) or websocket.query_params.get("access_token")
    if not token:
        raise Unauthorized("missing access token (Authorization: Bearer or ?access_token=)")
    return tokens.verify(token)


def _retry_after(header: str | None) -> float | None:
    """The gateway's ``x-courier-retry-after`` (seconds until its limit lets an upgrade through), or None when it
    gave none that reads as a number of seconds."""
    try:
        seconds = float(header) if header else None
    except ValueError:
        return None
    return round(seconds, 3) if seconds is not None and 0 <= seconds < 86_400 else None


class _Deadline:
    """Calls ``expire`` once what started with ``start`` has gone on for ``limit_s`` without ``stop``. One timer
    per socket, looked at only when it fires, so that a frame costs noting the time: ``asyncio.wait_for`` or
    ``asyncio.timeout`` around every receive or send cost a task or a timer per frame (docs/performance.md 10)."""

    def __init__(self, limit_s: float, expire: Callable[[], None]) -> None:
        self._limit_s = limit_s
        self._expire = expire
        self._loop = asyncio.get_running_loop()
        self._since: float | None = None
        self._timer = self._loop.call_later(limit_s, self._due)

    def start(self) -> None:
        self._since = self._loop.time()

    def stop(self) -> None:
        self._since = None

    def _due(self) -> None:
        since, now = self._since, self._loop.time()
        if since is not None and now - since >= self._limit_s:
            self._expire()
            return
        self._timer = self._loop.call_at((now if since is None else since) + self._limit_s, self._due)

    def cancel(self) -> None:
        self._timer.cancel()


async def _write(websocket: WebSocket, conn: Connection, write_timeout_s: float) -> None:
    """Send what the connection queues, one frame at a time, until it closes.

    The close is never cancelled once started: the server's close handshake has its own timeouts and
    drops a client that does not answer, whereas an abandoned handshake can leave the socket open."""
    writer = asyncio.current_task()
    assert writer is not None
    timed_out = False

    def expire() -> None:
        nonlocal timed_out
        timed_out = True
        writer.cancel()

    deadline = _Deadline(write_timeout_s, expire)
    try:
        while True:
            item = await conn.next_item()
            if isinstance(item, Close):
                with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
                    await websocket.close(item.code, item.reason)
                return
            deadline.start()
            try:
                await websocket.send_text(item.text)
            except asyncio.CancelledError:
                if not timed_out:
                    raise
                timed_out = False
                if writer.uncancel() > 0:  # cancelled for another reason as well
                    raise
                conn.close(CLOSE_TOO_SLOW, WRITE_TIMEOUT)  # the client stopped reading: next is the close frame
                continue
            finally:
                deadline.stop()
            SENT_SERIES[item.kind].inc()
            if item.kind == "message":
                metrics.MESSAGES_PUSHED.inc()
                # Retransmits are counted apart; their ACK-timeout wait is not push latency.
                if item.created_at is not None and not item.redelivered:
                    metrics.SEND_TO_PUSH.observe(max(0.0, time.time() - item.created_at))
    finally:
        deadline.cancel()


def _invalid_frame(conn: Connection, code: str, message: str) -> None:
    """A frame refused before the session saw it: counted as type ``invalid``."""
    RECEIVED_SERIES["invalid", "error"].inc()
    conn.offer(error_frame(None, code, message))


async def _read(
    websocket: WebSocket, session: Session, settings: WebSocketSettings, limiter: FrameLimiter | None, ip: str
) -> None:
    conn = session.conn
    frame_tokens = None if limiter is None else limiter.frames(ip=ip, user_id=conn.user_id)
    # On expiry the writer sends the close frame, and the reader gets the disconnect that ends the close.
    idle = _Deadline(settings.idle_timeout_s, lambda: conn.close(CLOSE_IDLE, "idle timeout"))
    try:
        while conn.closing is None:
            # A turn for the writer and every other socket between frames: frames that arrived together are
            # received without waiting, and a burst of them would fill this socket's queue before it is written.
            await asyncio.sleep(0)
            idle.start()
            message = await websocket.receive()
            idle.stop()
            if message["type"] == "websocket.disconnect":
                return
            if conn.closing is not None:
                break  # closed while this frame was on its way (replaced, too slow): nothing more is handled
            data = message.get("text")
            if data is None:
                _invalid_frame(conn, "invalid_request", "binary frames are not supported; send JSON text")
                continue
            if frame_tokens is not None:
                try:
                    await frame_tokens.check()
                except RateLimited as exc:
                    refusal = {**error_frame(None, exc.code, exc.message), "retry_after": exc.retry_after}
                    conn.close(CLOSE_RATE_LIMITED, f"rate limited: {exc.message}", farewell=refusal)
                    break
                except CourierError:  # the shared buckets are unreachable: limits step aside meanwhile
                    log.warning("frame rate limiter unavailable; letting frames through", exc_info=True)
            if len(data) > settings.max_frame_bytes // 4 and len(data.encode()) > settings.max_frame_bytes:
                _invalid_frame(conn, "payload_too_large", f"frame larger than {settings.max_frame_bytes} bytes")
                continue
            await session.on_text(data)
    finally:
        idle.cancel()
    await _discard_incoming(websocket)


async def _discard_incoming(websocket: WebSocket) -> None:
    """Read and drop what the client still sends on a closing socket until it is gone, so that its
    answer to the close frame gets through at once: unread frames would hold the handshake up until
    it times out, and a client over its rate limit would go on being read for nothing meanwhile."""
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass


async def _finish_closing(websocket: WebSocket, writer: asyncio.Task[None]) -> None:
    """Wait until the writer has closed the socket, or the client has left."""
    discard = asyncio.create_task(_discard_incoming(websocket))
    try:
        await asyncio.wait({writer, discard}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        discard.cancel()


async def _announce(deps: SessionDeps, conn: Connection) -> None:
    """Record the device's route and presence (a failure ends the socket before it is used)."""
    if deps.routes is not None:
        await deps.routes.attach(conn.user_id, conn.device_id, deps.node_name)
    await deps.presence.connected(conn.user_id, conn.device_id)


async def _forget(deps: SessionDeps, conn: Connection) -> None:
    """Undo ``_announce``; an outage here must not hide how the socket ended."""
    try:
        if deps.routes is not None:
            await deps.routes.detach(conn.user_id, conn.device_id, deps.node_name)
        await deps.presence.disconnected(conn.user_id, conn.device_id)
        if not deps.hub.devices(conn.user_id):
            await deps.presence.unsubscribe_all(conn.user_id)
    except CourierError:
        log.warning(
            "could not record that %s/%s left; its route and presence expire",
            conn.user_id,
            conn.device_id,
            exc_info=True,
        )


def build_router(
    deps: SessionDeps,
    *,
    tokens: AccessTokens,
    settings: WebSocketSettings,
    limiter: FrameLimiter | None = None,
    internal_token: str | None = None,
) -> APIRouter:
    """``internal_token``: a delivery node behind Courier's gateway counts frames by the client address the
    gateway vouches for (its own connections all come from the gateway's address)."""
    router = APIRouter()

    @router.websocket("/v1/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        if deps.hub.draining:
            body = {"error": {"code": "unavailable", "message": "this delivery node is shutting down; reconnect"}}
            refusal = ORJSONResponse(body, status_code=503, headers={DRAINING_HEADER: deps.node_name or "local"})
            await websocket.send_denial_response(refusal)
            metrics.WS_CLOSES.labels("shutdown").inc()
            return
        await websocket.accept()
        if websocket.headers.get("x-courier-reject") == str(CLOSE_RATE_LIMITED):  # set by the gateway
            limited = error_frame(None, "rate_limited", "too many connections; back off")
            retry_after = _retry_after(websocket.headers.get("x-courier-retry-after"))
            if retry_after is not None:
                limited["retry_after"] = retry_after
            await websocket.send_text(encode(limited))
            await websocket.close(CLOSE_RATE_LIMITED, "rate limited")
            metrics.WS_CLOSES.labels("rate_limited").inc()
            return
        try:
            principal = _authenticate(websocket, tokens)
        except Unauthorized as exc:
            await websocket.send_text(encode(error_frame(None, exc.code, exc.message)))
            await websocket.close(CLOSE_UNAUTHORIZED, "unauthorized")
            metrics.WS_CLOSES.labels("unauthorized").inc()
            return
        vouched = internal.vouched_client(websocket.headers, internal_token) if internal_token else None
        ip = vouched or (websocket.client.host if websocket.client else "unknown")
        conn = Connection(
            principal.user_id,
            principal.device_id,
            session_id=principal.session_id,
            queue_size=settings.queue_size,
            window=AckWindow(timeout_s=settings.ack_timeout_s, max_redeliveries=settings.max_redeliveries),
            max_bytes=settings.queue_bytes,
            budget=deps.hub.send_budget,
        )
        session = Session(conn, deps)
        deps.hub.attach(conn)
        open_sockets = metrics.WS_CONNECTIONS.labels(deps.node_name or "local")
        open_sockets.inc()
        reader: asyncio.Task[None] | None = None
        writer = asyncio.create_task(_write(websocket, conn, settings.write_timeout_s))
        try:
            await deps.hub.restore(conn)  # frames the device left unacked on its previous socket, any node
            await _announce(deps, conn)
            # The reader ends when the client leaves (it reads on while the socket closes), the writer once
            # the socket is closed; either way the socket is over.
            reader = asyncio.create_task(_read(websocket, session, settings, limiter, ip))
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done and reader.exception() is not None:
                log.error("socket of %s/%s failed", conn.user_id, conn.device_id, exc_info=reader.exception())
                conn.close(CLOSE_INTERNAL, "internal error; reconnect and sync")
                await _finish_closing(websocket, writer)
        except Exception:
            log.exception("socket of %s/%s could not start", conn.user_id, conn.device_id)
            conn.close(CLOSE_INTERNAL, "internal error; reconnect and sync")
            await _finish_closing(websocket, writer)
        finally:
            for task in (reader, writer):
                if task is not None:
                    task.cancel()
            session.stop()
            conn.end()
            open_sockets.dec()
            if deps.hub.detach(conn):
                # What it left unacked follows the device to its next socket, on any node.
                await deps.hub.write_behind_device(conn.user_id, conn.device_id)
                await _forget(deps, conn)

    return router
