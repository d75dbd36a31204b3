"""The gateway's HTTP routing in the distributed mode: each public path to the service owning it,
streamed both ways (uploads and downloads never sit in memory), redirects passed through.

Only the gateway speaks for the client to the services: headers a client could use to pose as the
gateway or as another service (``X-Forwarded-*``, ``x-courier-*``) are dropped, and a path is sent
exactly as the client encoded it, once the edge has refused dot segments and encoded slashes.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from services.common.errors import InvalidRequest, NotFound, Unavailable
from services.common.metrics import GATEWAY_UPSTREAM_ERRORS
from services.common.settings import ServiceUrls
from services.gateway.edge import gateway_only, raw_path, unsafe_path

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
MESSAGE_SUBPATHS = frozenset({"messages", "read"})
UPSTREAMS = ("identity", "conversation", "message", "presence", "file")


def service_for(path: str) -> str | None:
    """The service that owns a public path, or None when no service does."""
    if path.startswith(("/v1/auth/", "/v1/users")):
        return "identity"
    if path.startswith("/v1/conversations"):
        parts = path.split("/")  # "", "v1", "conversations", id, sub...
        return "message" if len(parts) >= 5 and parts[4] in MESSAGE_SUBPATHS else "conversation"
    if path.startswith("/v1/files"):
        return "file"
    if path.startswith("/v1/presence"):
        return "presence"
    return None


class Proxy:
    def __init__(self, urls: ServiceUrls, *, timeout_s: float = 30.0) -> None:
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=200)
        timeout = httpx.Timeout(timeout_s, connect=5.0)
        self._clients = {
            name: httpx.AsyncClient(base_url=getattr(urls, name), timeout=timeout, limits=limits) for name in UPSTREAMS
        }
        for name in UPSTREAMS:
            GATEWAY_UPSTREAM_ERRORS.labels(name)

    async def forward(self, request: Request) -> Response:
        service = service_for(request.url.path)
        if service is None:
            raise NotFound(f"no route for {request.url.path}")
        path = raw_path(request.scope)
        # The edge refused these already; checked again because httpx would resolve "..", and a
        # proxy that can be talked into an /internal route must not depend on its caller.
        if (refusal := unsafe_path(path)) is not None:
            raise InvalidRequest(refusal)
        client = self._clients[service]
        headers = [
            (k, v)
            for k, v in request.headers.raw
            if (name := k.decode("latin-1").lower()) not in HOP_BY_HOP and not gateway_only(name)
        ]
        if request.client is not None:
            headers.append((b"x-forwarded-for", request.client.host.encode()))
        has_body = request.method not in ("GET", "HEAD", "DELETE", "OPTIONS")
        outgoing = client.build_request(
            request.method,
            path,
            params=request.url.query,
            headers=headers,
            content=request.stream() if has_body else None,
        )
        try:
            answer = await client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            GATEWAY_UPSTREAM_ERRORS.labels(service).inc()
            raise Unavailable(f"the {service} service is unavailable; try again") from exc
        response_headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(
            answer.aiter_raw(),
            status_code=answer.status_code,
            headers=response_headers,
            background=BackgroundTask(answer.aclose),
        )

    async def openapi(self, own: dict[str, Any]) -> dict[str, Any]:
        """The gateway's own schema with every service's paths and components merged in."""
        merged: dict[str, Any] = {**own, "paths": dict(own.get("paths", {}))}
        schemas: dict[str, Any] = dict(own.get("components", {}).get("schemas", {}))
        for client in self._clients.values():
            try:
                spec = orjson.loads((await client.get("/openapi.json")).content)
            except (httpx.HTTPError, orjson.JSONDecodeError):
                continue
            merged["paths"].update(spec.get("paths", {}))
            schemas.update(spec.get("components", {}).get("schemas", {}))
        merged["components"] = {**own.get("components", {}), "schemas": schemas}
        return merged

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
