"""The public edge as ASGI middleware: path checks, rate limits, body size limit and one early token check.

A path with a dot segment or an encoded slash, however it is percent-encoded, gets 400 before any
route (or a proxy that would normalise it) sees it, and ``/internal`` is never served here: 404.
HTTP requests over a limit get 429 with ``Retry-After``; a WebSocket upgrade over a limit is
accepted and closed with 4008 (browsers cannot read a refused handshake). Bodies larger than the
limit get 413, whether announced by ``Content-Length`` or streamed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote

import orjson

from services.common import internal
from services.common.errors import (
    CourierError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
)
from services.common.tokens import AccessTokens, bearer
from services.common.web import courier_error_response

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLOSE_RATE_LIMITED = 4008
log = logging.getLogger("courier.gateway.edge")
UNLIMITED_PATHS = ("/healthz", "/readyz", "/metrics")
# Headers only the gateway sets, dropped from what a client sends: who the client is (services trust the
# gateway's X-Forwarded-For), and x-courier-* (the internal token, the gateway's verdicts on an upgrade),
# which the services trust from each other.
_GATEWAY_ONLY = frozenset({"forwarded", "x-real-ip"})
_GATEWAY_ONLY_PREFIXES = ("x-forwarded-", "x-courier-")
# Enough for any path a client has a reason to send; a path still changing after this many rounds of
# percent-decoding is refused rather than decoded further.
_DECODE_ROUNDS = 4


def unsafe_path(raw_path: str) -> str | None:
    """Why a request path must not be routed, or None. ``raw_path`` is the path as the client sent it.

    Each round of percent-decoding is checked, so ``%2e%2E``, ``%252e`` and ``.`` are the same dot: a
    dot segment would let a proxy or client library that normalises the path (httpx does) reach
    another route than the one matched, and an encoded slash or backslash would split one segment in
    two behind a server that decodes once more.
    """
    path = raw_path
    for _ in range(_DECODE_ROUNDS):
        lowered = path.lower()
        if "%2f" in lowered or "%5c" in lowered or "\\" in path:
            return "the path contains an encoded slash or a backslash"
        if any(segment in (".", "..") for segment in path.split("/")):
            return "the path contains a dot segment"
        decoded = unquote(path)
        if decoded == path:
            return None
        path = decoded
    return "the path is percent-encoded too many times"


def gateway_only(name: str) -> bool:
    """Whether a request header (lower case) is one a client may not send on to the services."""
    return name in _GATEWAY_ONLY or name.startswith(_GATEWAY_ONLY_PREFIXES)


def raw_path(scope: Mapping[str, Any]) -> str:
    """The request's path as the client sent it, still percent-encoded, without the query."""
    raw = scope.get("raw_path")
    if not raw:
        return str(scope["path"])
    # Some servers and test transports put the query string into raw_path too. Bytes beyond ASCII are
    # percent-encoded, as the client should have sent them.
    path = bytes(raw).split(b"?", 1)[0]
    if path.isascii():
        return path.decode("ascii")
    return "".join(chr(byte) if byte < 0x80 else f"%{byte:02X}" for byte in path)


class Limiter(Protocol):
    async def check(self, *, ip: str, user_id: str | None) -> None: ...


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: Limiter,
        tokens: AccessTokens,
        max_body_bytes: int,
        own_body_limit_prefixes: Sequence[str] = (),
        client_ip: Callable[[tuple[str, int] | None], str | None] | None = None,
    ) -> None:
        self.app = app
        self.client_ip = client_ip
        self.limiter = limiter
        self.tokens = tokens
        self.max_body_bytes = max_body_bytes
        self.own_body_limit_prefixes = tuple(own_body_limit_prefixes)

    def _caller(self, scope: Scope) -> str | None:
        """The user id of a valid bearer token, remembered for the route's own auth check."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        token = bearer(headers.get("authorization"))
        if token is None and scope["type"] == "websocket":
            values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("access_token")
            token = values[0] if values else None
        if not token:
            return None
        try:
            principal = self.tokens.verify(token)
        except Unauthorized:
            return None
        scope.setdefault("state", {})["principal"] = principal
        return principal.user_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = _refuse_path(scope)
        if refusal is not None:
            await _refuse(scope, receive, send, refusal)
            return
        if scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        real = self.client_ip(client) if self.client_ip is not None else None
        if real is not None and client is not None:
            scope["client"] = (real, client[1])  # routes and logs see the client, not the front
        ip = scope["client"][0] if scope.get("client") else "unknown"
        try:
            await self.limiter.check(ip=ip, user_id=self._caller(scope))
        except RateLimited as exc:
            if scope["type"] == "websocket":
                await _close_websocket(receive, send, exc)
            else:
                await _respond(send, exc)
            return
        except CourierError:
            # The shared buckets are unreachable (Redis down): limits protect the service, they are
            # not the service, so requests go through until the buckets are back.
            log.warning("rate limiter unavailable; letting %s through", scope["path"], exc_info=True)
        if scope["type"] == "http" and not scope["path"].startswith(self.own_body_limit_prefixes):
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                await _respond(send, PayloadTooLarge(f"request body larger than {self.max_body_bytes} bytes"))
                return
            await _limited(self.app, scope, receive, send, self.max_body_bytes)
            return
        await self.app(scope, receive, send)


def _refuse_path(scope: Scope) -> CourierError | None:
    reason = unsafe_path(raw_path(scope))
    if reason is not None:
        return InvalidRequest(reason)
    path = str(scope["path"])
    # Service-to-service routes: served to callers with the internal token, never through the public edge.
    if path == internal.PREFIX or path.startswith(internal.PREFIX + "/"):
        return NotFound(f"no route for {path}")
    return None


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: CourierError) -> None:
    if scope["type"] == "http":
        await _respond(send, exc)
        return
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await _respond(send, exc, prefix="websocket.")
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": exc.message})


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _limited(app: ASGIApp, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    """Run ``app`` on a body it may read up to ``limit`` bytes of; past that the edge answers 413
    and the app sees the client disconnect (its own response, if any, is dropped)."""
    seen = 0
    rejected = False

    async def counted() -> Message:
        nonlocal seen, rejected
        if rejected:
            return {"type": "http.disconnect"}
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                rejected = True
                await _respond(send, PayloadTooLarge(f"request body larger than {limit} bytes"))
                return {"type": "http.disconnect"}
        return message

    async def guarded_send(message: Message) -> None:
        if not rejected:
            await send(message)

    await app(scope, counted, guarded_send)


async def _respond(send: Send, exc: CourierError, *, prefix: str = "") -> None:
    """Answer ``exc`` in the protocol's error shape; ``prefix="websocket."`` refuses an upgrade with it."""
    response = courier_error_response(exc)
    await send(
        {
            "type": f"{prefix}http.response.start",
            "status": response.status_code,
            "headers": [(k.encode(), v.encode()) for k, v in response.headers.items()],
        }
    )
    await send({"type": f"{prefix}http.response.body", "body": bytes(response.body)})


async def _close_websocket(receive: Receive, send: Send, exc: RateLimited) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    frame = {"type": "error", "ref": None, "code": exc.code, "message": exc.message, "retry_after": exc.retry_after}
    await send({"type": "websocket.send", "text": orjson.dumps(frame).decode()})
    await send({"type": "websocket.close", "code": CLOSE_RATE_LIMITED, "reason": "rate limited"})
