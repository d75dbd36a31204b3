"""Service-to-service HTTP: a client that turns error bodies back into our errors, and the check
that guards ``/internal`` routes with the shared internal token."""

import hmac
from typing import Any

import httpx
import orjson
from fastapi import Request

from services.common.errors import Forbidden, Unavailable, from_body

HEADER = "x-courier-internal"


class InternalClient:
    """Calls another Courier service. Connection failures are ``Unavailable``; error answers are
    re-raised as the same ``CourierError`` the other service raised."""

    def __init__(
        self, base_url: str, token: str, *, timeout_s: float = 10.0, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout_s, limits=limits, transport=transport, headers={HEADER: token}
        )
        self.base_url = base_url

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        content = None if body is None else orjson.dumps(body)
        headers = {"content-type": "application/json"} if content is not None else None
        try:
            answer = await self._http.request(method, path, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise Unavailable(f"{self.base_url} unreachable: {exc.__class__.__name__}") from exc
        if answer.status_code == 204:
            return None
        try:
            data = orjson.loads(answer.content) if answer.content else None
        except orjson.JSONDecodeError as exc:
            raise Unavailable(f"{self.base_url}{path} answered {answer.status_code} without JSON") from exc
        if answer.status_code >= 400:
            raise from_body(answer.status_code, data)
        return data

    async def close(self) -> None:
        await self._http.aclose()


class RequireInternal:
    """FastAPI dependency for ``/internal`` routes: the caller must present the internal token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def __call__(self, request: Request) -> None:
        presented = request.headers.get(HEADER, "").encode()
        if not hmac.compare_digest(presented, self._token):
            raise Forbidden("internal route")
