"""Service-to-service HTTP: a client that turns error bodies back into our errors, and the check
that guards ``/internal`` routes with the shared internal token."""

import hmac
import io
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import aiohttp
import orjson
from aiohttp.payload import TOO_LARGE_BYTES_BODY
from fastapi import Request
from opentelemetry import trace

from services.common import telemetry
from services.common.errors import Forbidden, Unavailable, from_body
from services.common.stream import STREAMS, Streams

HEADER = "x-courier-internal"
PREFIX = "/internal"
"""Where every service serves its service-to-service routes; the public edge never serves this prefix."""
FORWARDED_FOR = "x-forwarded-for"
_JSON = {"content-type": "application/json"}


def vouched_client(headers: Mapping[str, str], token: str) -> str | None:
    """The client address a Courier gateway forwarded with this request, believed only when the request
    also carries the internal token (the gateway's front strips both headers from what clients send)."""
    client = headers.get(FORWARDED_FOR, "").split(",")[0].strip()
    presented = headers.get(HEADER, "").encode()
    if not client or not hmac.compare_digest(presented, token.encode()):
        return None
    return client


class InternalClient:
    """Calls another Courier service. Connection failures and timeouts are ``Unavailable``; error
    answers are re-raised as the same ``CourierError`` the other service raised.

    On aiohttp: these calls are the hot path between processes (a send, a batch of pushes), and its
    client costs about a third of httpx's CPU per request. The session is opened on the first call,
    inside the running loop it belongs to. Calls go over up to ``streams`` long-lived WebSockets
    (``services.common.stream``), which cost the caller a third of an HTTP request; 0 keeps them on HTTP.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 10.0,
        max_connections: int = 200,
        streams: int = STREAMS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {HEADER: token}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._streams = None if streams == 0 else Streams(self.base_url, self._http, timeout_s=timeout_s, size=streams)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._max_connections),
            )
        return self._session

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """``body`` sent as JSON; the answer's JSON, or None for an answer without a body."""
        raw = await self.send(method, path, None if body is None else orjson.dumps(body))
        try:
            return orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            raise Unavailable(f"{self.base_url}{path} answered without JSON") from exc

    async def send(self, method: str, path: str, content: bytes | None) -> bytes:
        """``content`` (JSON) sent; the answer's body (empty for 204), or its error raised again. Over one of
        the client's streams (``services.common.stream``), or HTTP when a stream cannot take it."""
        answered = None
        if self._streams is not None:
            with self._span(method, path):
                answered = await self._streams.ask(method, path, telemetry.inject(), content or b"")
        if answered is None:
            answered = await self._over_http(method, path, content)
        status, raw = answered
        if status == 204:
            return b""
        if status >= 400:
            try:
                data = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError as exc:
                raise Unavailable(f"{self.base_url}{path} answered {status} without JSON") from exc
            raise from_body(status, data)
        return raw

    def _span(self, method: str, path: str) -> AbstractContextManager[Any]:
        """A client span for a call on a stream, as aiohttp's instrumentation makes one for an HTTP request (its
        context is the one the call carries); no span while tracing is off."""
        if not telemetry.is_enabled():
            return nullcontext()
        attributes = {"http.request.method": method, "url.full": self.base_url + path, "courier.transport": "stream"}
        return telemetry.tracer(__name__).start_as_current_span(
            f"{method} {path}", kind=trace.SpanKind.CLIENT, attributes=attributes
        )

    async def _over_http(self, method: str, path: str, content: bytes | None) -> tuple[int, bytes]:
        headers = _JSON if content is not None else None
        # aiohttp warns that a body this large given as bytes is copied on the loop; as a file it is written in parts.
        data = io.BytesIO(content) if content is not None and len(content) > TOO_LARGE_BYTES_BODY else content
        try:
            async with self._http().request(method, self.base_url + path, data=data, headers=headers) as answer:
                return answer.status, await answer.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"{self.base_url} unreachable: {exc.__class__.__name__}") from exc

    async def close(self) -> None:
        if self._streams is not None:
            await self._streams.close()
        if self._session is not None:
            await self._session.close()


class RequireInternal:
    """FastAPI dependency for ``/internal`` routes: the caller must present the internal token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    @property
    def header(self) -> tuple[bytes, bytes]:
        """The header a caller presents, for the requests the internal stream makes on its callers' behalf."""
        return HEADER.encode(), self._token

    def admits(self, headers: Mapping[str, str]) -> bool:
        """Whether ``headers`` (a request's, a WebSocket handshake's) present the internal token."""
        return hmac.compare_digest(headers.get(HEADER, "").encode(), self._token)

    async def __call__(self, request: Request) -> None:
        if not self.admits(request.headers):
            raise Forbidden("internal route")
