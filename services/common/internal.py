"""Service-to-service HTTP: a client that turns error bodies back into our errors, and the check
that guards ``/internal`` routes with the shared internal token."""

import hmac
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from fastapi import Request

from services.common.errors import Forbidden, Unavailable, from_body

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
    inside the running loop it belongs to.
    """

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 10.0, max_connections: int = 200) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {HEADER: token}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

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
        """``content`` (JSON) sent; the answer's body (empty for 204), or its error raised again."""
        headers = _JSON if content is not None else None
        try:
            async with self._http().request(method, self.base_url + path, data=content, headers=headers) as answer:
                status, raw = answer.status, await answer.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"{self.base_url} unreachable: {exc.__class__.__name__}") from exc
        if status == 204:
            return b""
        if status >= 400:
            try:
                data = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError as exc:
                raise Unavailable(f"{self.base_url}{path} answered {status} without JSON") from exc
            raise from_body(status, data)
        return raw

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class RequireInternal:
    """FastAPI dependency for ``/internal`` routes: the caller must present the internal token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def __call__(self, request: Request) -> None:
        presented = request.headers.get(HEADER, "").encode()
        if not hmac.compare_digest(presented, self._token):
            raise Forbidden("internal route")
