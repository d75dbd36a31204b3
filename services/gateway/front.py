"""The gateway's listening socket: WebSocket upgrades are spliced byte for byte to a delivery node.

Every connection's request head is read; an upgrade on ``/v1/ws`` is authenticated, rate limited
and forwarded, unchanged but for trusted headers, to the node that owns the user on the ring, then
both directions are copied as bytes (no frame parsing). Every other connection is spliced the same
way to the gateway's own HTTP application (routing, limits, proxying to the services).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import orjson

from services.common.errors import CourierError, RateLimited, Unauthorized
from services.common.metrics import GATEWAY_SPLICES, GATEWAY_UPSTREAM_ERRORS
from services.common.ring import RingSource
from services.common.tokens import AccessTokens, bearer
from services.gateway.edge import Limiter

log = logging.getLogger("courier.gateway.front")

WS_PATH = "/v1/ws"
HEAD_LIMIT = 64 * 1024
HEAD_TIMEOUT_S = 30.0
TRUSTED_HEADERS = (b"x-forwarded-for", b"x-courier-reject")
REJECT_HEADER = "X-Courier-Reject"
# The upstream label of GATEWAY_UPSTREAM_ERRORS for each kind of splice.
UPSTREAM_OF = {"websocket": "delivery", "http": "gateway-http"}


@dataclass(frozen=True)
class RequestHead:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    raw_lines: list[bytes]

    @classmethod
    def parse(cls, head: bytes) -> RequestHead:
        lines = head.split(b"\r\n")
        method, target, _version = lines[0].decode("latin-1").split(" ", 2)
        path, _, query = target.partition("?")
        headers: dict[str, str] = {}
        kept = [lines[0]]
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(b":")
            if name.strip().lower() in TRUSTED_HEADERS:
                continue  # only the gateway sets these
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
            kept.append(line)
        return cls(method, path, query, headers, kept)

    def is_websocket(self) -> bool:
        return self.path == WS_PATH and self.headers.get("upgrade", "").lower() == "websocket"

    def forwarded(self, extra: dict[str, str]) -> bytes:
        lines = [*self.raw_lines, *(f"{k}: {v}".encode("latin-1") for k, v in extra.items())]
        return b"\r\n".join(lines) + b"\r\n\r\n"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _error(writer: asyncio.StreamWriter, status: int, reason: str, code: str, message: str) -> None:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()


class Front:
    def __init__(
        self,
        *,
        ring: RingSource,
        tokens: AccessTokens,
        limiter: Limiter,
        http_upstream: tuple[str, int],
        on_splice: Callable[[str], None] | None = None,
    ) -> None:
        self._ring = ring
        self._tokens = tokens
        self._limiter = limiter
        self._http_upstream = http_upstream
        self._on_splice = on_splice or (lambda _kind: None)
        self.open_websockets = 0
        # Local port of each upstream connection to the HTTP app -> the client's address. The app
        # runs in this process and looks the client up here, so no header a client could forge (on
        # a kept-alive connection, after the first request) decides its address.
        self.clients: dict[int, str] = {}
        for upstream in UPSTREAM_OF.values():
            GATEWAY_UPSTREAM_ERRORS.labels(upstream)

    def client_ip(self, scope_client: tuple[str, int] | None) -> str | None:
        """The real client address of a request the HTTP app received through this front."""
        return None if scope_client is None else self.clients.get(scope_client[1])

    def _user_of(self, head: RequestHead) -> str | None:
        token = bearer(head.headers.get("authorization"))
        if token is None:
            values = parse_qs(head.query).get("access_token")
            token = values[0] if values else None
        if not token:
            return None
        try:
            return self._tokens.verify(token).user_id
        except Unauthorized:
            return None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = peer[0] if peer else "unknown"
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            head = RequestHead.parse(raw)
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
            ConnectionError,
            OSError,
        ):
            writer.close()
            return
        extra = {"X-Forwarded-For": ip}
        if head.is_websocket():
            user_id = self._user_of(head)
            try:
                await self._limiter.check(ip=ip, user_id=user_id)
            except RateLimited:
                extra[REJECT_HEADER] = "4008"
            except CourierError:  # the shared buckets are unreachable: let the upgrade through
                log.warning("rate limiter unavailable; letting a WebSocket upgrade through", exc_info=True)
            ring = self._ring.ring
            if not ring.members:
                GATEWAY_UPSTREAM_ERRORS.labels(UPSTREAM_OF["websocket"]).inc()
                await _error(writer, 503, "Service Unavailable", "unavailable", "no delivery node is ready")
                writer.close()
                return
            # An unauthenticated upgrade still goes to a node, which answers with close code 4001.
            url = urlsplit(self._ring.url_for(ring.node_for(user_id or ip)))
            upstream = (url.hostname or "127.0.0.1", url.port or 80)
            kind = "websocket"
        else:
            upstream = self._http_upstream
            kind = "http"
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
        except OSError:
            GATEWAY_UPSTREAM_ERRORS.labels(UPSTREAM_OF[kind]).inc()
            await _error(writer, 503, "Service Unavailable", "unavailable", f"{kind} upstream unreachable")
            writer.close()
            return
        self._on_splice(kind)
        local = up_writer.get_extra_info("sockname")
        if kind == "http" and local:
            self.clients[local[1]] = ip
        up_writer.write(head.forwarded(extra))
        if kind == "websocket":
            self.open_websockets += 1
            GATEWAY_SPLICES.inc()
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            if kind == "websocket":
                self.open_websockets -= 1
                GATEWAY_SPLICES.dec()
            elif local:
                self.clients.pop(local[1], None)
            for w in (writer, up_writer):
                with contextlib.suppress(OSError, RuntimeError):
                    w.close()

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port, limit=HEAD_LIMIT, backlog=4096)
