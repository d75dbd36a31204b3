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
import random
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import orjson

from services.common import internal
from services.common.errors import CourierError, RateLimited, Unauthorized
from services.common.metrics import GATEWAY_SPLICES, GATEWAY_UPSTREAM_ERRORS
from services.common.ring import RingSource
from services.common.tokens import AccessTokens, bearer
from services.gateway.edge import Limiter, gateway_only

log = logging.getLogger("courier.gateway.front")

WS_PATH = "/v1/ws"
HEAD_LIMIT = 64 * 1024
HEAD_TIMEOUT_S = 30.0
REJECT_HEADER = "X-Courier-Reject"
# With REJECT_HEADER: the seconds until the limit that refused the upgrade lets one through, for the client.
RETRY_AFTER_HEADER = "X-Courier-Retry-After"
# The upstream label of GATEWAY_UPSTREAM_ERRORS for each kind of splice.
UPSTREAM_OF = {"websocket": "delivery", "http": "gateway-http"}
# A delivery node that refused an upgrade because it is shutting down says so in this response header.
DRAINING_HEADER = b"x-courier-draining"
# How long a node that refused (draining) or could not be reached gets no new sockets: the ring usually stops
# naming it within this time; a node that comes back is used again after it.
AVOID_S = 30.0
UPSTREAM_HEAD_TIMEOUT_S = 10.0
FILES_RESERVED = 256
"""Open files kept from the connections: the process's own (its logs, Redis, the HTTP app's clients) and the one a
connection refused for want of files is accepted on."""


class Refused(Exception):
    """The delivery node did not take the upgrade (draining, unreachable): try the next one on the ring."""


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
            raw_name, _, value = line.partition(b":")
            name = raw_name.strip().lower().decode("latin-1")
            if gateway_only(name):
                continue  # only the gateway sets these
            headers[name] = value.strip().decode("latin-1")
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


class FileBudget:
    """The open files this process's connections may hold. A spliced WebSocket holds two (the client's socket
    and the delivery node's), an HTTP connection three (the client's, and both ends of its splice to the HTTP
    app, which runs in this process). Past the budget a connection is answered 503 at once: left to the soft
    limit, ``accept`` fails with EMFILE, which asyncio logs for every connection waiting, thousands a second,
    while nobody gets an answer."""

    def __init__(self, limit: int | None = None) -> None:
        if limit is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            limit = 1 << 62 if soft == resource.RLIM_INFINITY else max(soft - FILES_RESERVED, 0)
        self.limit = limit
        self.used = 0

    @contextlib.contextmanager
    def hold(self, files: int) -> Iterator[bool]:
        """Whether ``files`` more fit; if they did, they are held until the block ends."""
        room = self.used + files <= self.limit
        if room:
            self.used += files
        try:
            yield room
        finally:
            if room:
                self.used -= files


class Front:
    def __init__(
        self,
        *,
        ring: RingSource,
        tokens: AccessTokens,
        limiter: Limiter,
        http_upstream: tuple[str, int],
        internal_token: str,
        on_splice: Callable[[str], None] | None = None,
    ) -> None:
        self._internal_token = internal_token
        self.files = FileBudget()
        self._ring = ring
        self._tokens = tokens
        self._limiter = limiter
        self._http_upstream = http_upstream
        self._on_splice = on_splice or (lambda _kind: None)
        self._avoid: dict[str, float] = {}  # member -> monotonic time until which it gets no new socket
        self._server: asyncio.Server | None = None
        self._splices: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.open_websockets = 0
        # Local port of each upstream connection to the HTTP app -> the client's address. The app
        # runs in this process and looks the client up here, so no header a client could forge (on
        # a kept-alive connection, after the first request) decides its address.
        self.clients: dict[int, str] = {}
        for upstream in [*UPSTREAM_OF.values(), "files"]:
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
        with self.files.hold(1) as room:  # the client's socket
            if room:
                await self._handle(reader, writer)
                return
        await self._full(writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
        # The upstream's socket, and for HTTP the HTTP app's end of it too.
        with self.files.hold(1 if head.is_websocket() else 2) as room:
            if room:
                await self._forward(reader, writer, head, ip)
                return
        await self._full(writer)

    async def _full(self, writer: asyncio.StreamWriter) -> None:
        GATEWAY_UPSTREAM_ERRORS.labels("files").inc()
        await _error(writer, 503, "Service Unavailable", "unavailable", "the gateway is at its connection limit")
        writer.close()

    async def _forward(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: RequestHead, ip: str
    ) -> None:
        extra = {"X-Forwarded-For": ip}
        if head.is_websocket():
            # The delivery node believes the client's address only with the internal token beside it.
            extra[internal.HEADER] = self._internal_token
            user_id = self._user_of(head)
            try:
                await self._limiter.check(ip=ip, user_id=user_id)
            except RateLimited as exc:
                extra[REJECT_HEADER] = "4008"
                extra[RETRY_AFTER_HEADER] = f"{exc.retry_after:.3f}"
            except CourierError:  # the shared buckets are unreachable: let the upgrade through
                log.warning("rate limiter unavailable; letting a WebSocket upgrade through", exc_info=True)
            if not self._ring.ring.members:
                GATEWAY_UPSTREAM_ERRORS.labels(UPSTREAM_OF["websocket"]).inc()
                await _error(writer, 503, "Service Unavailable", "unavailable", "no delivery node is ready")
                writer.close()
                return
            # An unauthenticated upgrade still goes to a node, which answers with close code 4001.
            upstream = await self._upgrade(user_id or ip, head.forwarded(extra))
            if upstream is None:
                GATEWAY_UPSTREAM_ERRORS.labels(UPSTREAM_OF["websocket"]).inc()
                await _error(writer, 503, "Service Unavailable", "unavailable", "no delivery node took the socket")
                writer.close()
                return
            up_reader, up_writer, answer = upstream
            self._on_splice("websocket")
            writer.write(answer)
            pair = (writer, up_writer)
            self._splices.add(pair)
            self.open_websockets += 1
            GATEWAY_SPLICES.inc()
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                self._splices.discard(pair)
                self.open_websockets -= 1
                GATEWAY_SPLICES.dec()
                _close(writer, up_writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._http_upstream)
        except OSError:
            GATEWAY_UPSTREAM_ERRORS.labels(UPSTREAM_OF["http"]).inc()
            await _error(writer, 503, "Service Unavailable", "unavailable", "http upstream unreachable")
            writer.close()
            return
        self._on_splice("http")
        local = up_writer.get_extra_info("sockname")
        if local:
            self.clients[local[1]] = ip
        up_writer.write(head.forwarded(extra))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            if local:
                self.clients.pop(local[1], None)
            _close(writer, up_writer)

    async def _upgrade(
        self, key: str, request: bytes
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes] | None:
        """Hand the upgrade to the key's node on the ring, or to the next one while nodes refuse it.

        A node that is shutting down answers 503 with the draining header, and one that is gone cannot be reached:
        either is avoided for AVOID_S, and the upgrade goes where the ring without it points (the node that will own
        the key once the ring drops it, so the socket does not move twice). Returns the upstream streams and its
        answer's head (the 101, or the node's own refusal such as a 4xx), or None when no node took it."""
        ring = self._ring.ring
        now = time.monotonic()
        self._avoid = {member: until for member, until in self._avoid.items() if until > now}
        avoid = set(self._avoid) & set(ring.members)
        if avoid == set(ring.members):
            avoid = set()  # every node refused lately: try them again rather than none
        while True:
            try:
                member = ring.node_for(key, avoid=avoid)
            except LookupError:
                return None
            try:
                return await self._offer(member, request)
            except Refused as refused:
                log.info("delivery node %s refused a socket (%s); trying the next on the ring", member, refused)
                self._avoid[member] = time.monotonic() + AVOID_S
                avoid.add(member)

    async def _offer(self, member: str, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        url = urlsplit(self._ring.url_for(member))
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(url.hostname or "127.0.0.1", url.port or 80), UPSTREAM_HEAD_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            raise Refused(f"unreachable: {exc}") from exc
        try:
            up_writer.write(request)
            answer = await asyncio.wait_for(up_reader.readuntil(b"\r\n\r\n"), UPSTREAM_HEAD_TIMEOUT_S)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            _close(up_writer)
            raise Refused(f"no answer: {exc!r}") from exc
        status = answer.split(b" ", 2)[1] if answer.count(b" ") >= 2 else b""
        if status == b"503" and DRAINING_HEADER + b":" in answer.lower():
            _close(up_writer)
            raise Refused("draining")
        return up_reader, up_writer, answer

    async def drain(self, window_s: float, rng: random.Random | None = None) -> int:
        """Before the gateway stops: take no new connection, and close its spliced WebSockets one by one over
        ``window_s`` (a closed socket reconnects through the Service, to another gateway), not all at once."""
        if self._server is not None:
            self._server.close()
        pairs = list(self._splices)
        if not pairs:
            return 0
        rng = rng or random.Random()
        log.info("closing %d spliced sockets over %.1f s", len(pairs), window_s)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for pair, delay in zip(pairs, sorted(rng.uniform(0, window_s) for _ in pairs), strict=True):
            wait = started + delay - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if pair in self._splices:
                _close(*pair)
        return len(pairs)

    async def serve(self, host: str, port: int) -> asyncio.Server:
        self._server = await asyncio.start_server(self.handle, host, port, limit=HEAD_LIMIT, backlog=4096)
        return self._server


def _close(*writers: asyncio.StreamWriter) -> None:
    for w in writers:
        with contextlib.suppress(OSError, RuntimeError):
            w.close()
