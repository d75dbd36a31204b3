"""What the public edge lets through to routes and services: no path that a later hop would resolve to another
route (dot segments, encoded slashes, however encoded), no /internal route, and no header the services trust
from the gateway or from each other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import orjson
import pytest
from fastapi import FastAPI, Request
from starlette.requests import Request as StarletteRequest

from services.common.errors import Unavailable
from services.common.settings import ServiceUrls
from services.gateway.edge import EdgeMiddleware, unsafe_path
from services.gateway.proxy import Proxy
from tests.support import gateway
from tests.support.loopback import serving
from tests.support.waiting import wait_for

TRAVERSALS = [
    "/v1/conversations/../../internal/conversations/of/u1",
    "/v1/conversations/%2e%2e/%2e%2e/internal/conversations/of/u1",
    "/v1/conversations/%2E%2e/%2e%2E/internal/conversations/of/u1",
    "/v1/conversations/.%2e/..%2E/internal/conversations/of/u1",
    "/v1/conversations/%252e%252e/%252E%252E/internal/conversations/of/u1",
    "/v1/conversations/./c1/messages",
    "/v1/conversations/%2e/c1/messages",
    "/v1/conversations/c1/messages/..",
]
ENCODED_SLASHES = [
    "/v1/conversations/..%2f..%2finternal/conversations/of/u1",
    "/v1/conversations/c1%2Fmessages",
    "/v1/conversations/c1%5cmessages",
    "/v1/conversations/c1%5Cmessages",
    "/v1/conversations/c1\\messages",
    "/v1/conversations/c1%252fmessages",
]
ORDINARY = [
    "/v1/conversations/01j9zq4c/messages",
    "/v1/users/me",
    "/v1/files/01j9zq4c/info",
    "/v1/users/a..b",
    "/v1/users/.well",
    "/v1/users/100%25",
    "/v1/users/caf%C3%A9",
    "/",
    "/index.html",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_dot_segments_are_unsafe_however_they_are_encoded(path: str) -> None:
    assert unsafe_path(path) == "the path contains a dot segment"


@pytest.mark.parametrize("path", ENCODED_SLASHES)
def test_encoded_slashes_and_backslashes_are_unsafe(path: str) -> None:
    assert unsafe_path(path) == "the path contains an encoded slash or a backslash"


@pytest.mark.parametrize("path", ORDINARY)
def test_ordinary_paths_are_safe(path: str) -> None:
    assert unsafe_path(path) is None


class Routes:
    """The app behind the edge: answers 200 and remembers every path it was asked for."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"routed"})


async def through_edge(
    raw_path: str, *, kind: str = "http", query: bytes = b"", limiter: Any = None
) -> tuple[list[dict[str, Any]], Routes]:
    """One request with ``raw_path`` as the client wrote it, decoded as uvicorn decodes it, through the edge."""
    routes = Routes()
    edge = EdgeMiddleware(routes, limiter=limiter or gateway.AllowAll(), tokens=gateway.TOKENS, max_body_bytes=1024)
    scope: dict[str, Any] = {
        "type": kind,
        "method": "GET",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("latin-1"),
        "query_string": query,
        "headers": [(b"x-courier-internal", b"the-real-token")],
        "client": ("192.0.2.1", 40000),
        "extensions": {"websocket.http.response": {}} if kind == "websocket" else {},
    }
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "websocket.connect"} if kind == "websocket" else {"type": "http.request", "body": b""}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await edge(scope, receive, send)
    return sent, routes


def answer(sent: list[dict[str, Any]], prefix: str = "") -> tuple[int, dict[str, Any]]:
    start = next(m for m in sent if m["type"] == f"{prefix}http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == f"{prefix}http.response.body")
    return start["status"], orjson.loads(body)


@pytest.mark.parametrize("path", TRAVERSALS + ENCODED_SLASHES)
async def test_the_edge_answers_400_in_the_error_shape_before_any_route_sees_the_path(path: str) -> None:
    sent, routes = await through_edge(path)

    status, body = answer(sent)
    assert status == 400
    assert body["error"]["code"] == "invalid_request"
    assert routes.paths == []


async def test_a_websocket_upgrade_on_an_unsafe_path_is_refused_with_400() -> None:
    sent, routes = await through_edge("/v1/%2e%2e/internal/ws", kind="websocket")

    status, body = answer(sent, prefix="websocket.")
    assert (status, body["error"]["code"]) == (400, "invalid_request")
    assert routes.paths == []


@pytest.mark.parametrize("path", ["/internal", "/internal/conversations/of/u1", "/%69nternal/presence/connected"])
async def test_internal_routes_are_not_found_at_the_public_edge_even_with_the_internal_header(path: str) -> None:
    sent, routes = await through_edge(path)

    status, body = answer(sent)
    assert (status, body["error"]["code"]) == (404, "not_found")
    assert routes.paths == []


async def test_an_upgrade_whose_query_is_not_utf8_reaches_the_route_unauthenticated() -> None:
    sent, routes = await through_edge("/v1/ws", kind="websocket", query=b"access_token=\xff\xfe")

    assert routes.paths == ["/v1/ws"]  # where the node answers 4001: no valid token
    assert sent[0]["type"] == "websocket.accept"


class Unreachable:
    """The shared buckets' Redis is down."""

    async def check(self, *, ip: str, user_id: str | None) -> None:
        raise Unavailable("redis unreachable")


@pytest.mark.parametrize("kind", ["http", "websocket"])
async def test_requests_go_through_while_the_rate_limit_buckets_are_unreachable(kind: str) -> None:
    sent, routes = await through_edge("/v1/conversations", kind=kind, limiter=Unreachable())

    assert routes.paths == ["/v1/conversations"]
    assert sent[0]["type"] == ("http.response.start" if kind == "http" else "websocket.accept")


async def test_ordinary_paths_reach_the_routes() -> None:
    for path in ORDINARY:
        sent, routes = await through_edge(path)
        assert sent[0]["status"] == 200, path
        assert routes.paths == [unquote(path)]


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A service on loopback that answers every request with what it received."""
    seen: list[dict[str, Any]] = []
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def echo(request: Request, path: str) -> dict[str, Any]:
        received = {"raw_path": request.scope["raw_path"].decode(), "headers": dict(request.headers)}
        seen.append(received)
        return received

    async with serving(app) as url:
        yield url, seen


def gateway_request(raw_path: str, headers: list[tuple[bytes, bytes]]) -> StarletteRequest:
    return StarletteRequest(
        {
            "type": "http",
            "method": "GET",
            "path": unquote(raw_path),
            "raw_path": raw_path.encode(),
            "query_string": b"limit=5",
            "headers": headers,
            "client": ("203.0.113.9", 5000),
            "server": ("gateway", 80),
            "scheme": "http",
            "root_path": "",
        }
    )


async def forward(proxy: Proxy, request: StarletteRequest) -> None:
    response = await proxy.forward(request)
    assert response.background is not None
    await response.background()  # closes the upstream answer, as Starlette does once it is sent


async def test_the_proxy_drops_every_header_the_services_trust_from_the_gateway(
    upstream: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = upstream
    proxy = Proxy(ServiceUrls(conversation=url))
    client_headers = [
        (b"x-courier-internal", b"the-real-token"),
        (b"X-Courier-Reject", b"4008"),
        (b"x-courier-anything", b"1"),
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"x-forwarded-proto", b"https"),
        (b"forwarded", b"for=1.2.3.4"),
        (b"x-real-ip", b"1.2.3.4"),
        (b"authorization", b"Bearer abc"),
    ]
    try:
        await forward(proxy, gateway_request("/v1/conversations/c1", client_headers))
    finally:
        await proxy.close()

    headers = seen[0]["headers"]
    assert not [name for name in headers if name.startswith(("x-courier-", "x-forwarded-proto"))]
    assert "forwarded" not in headers and "x-real-ip" not in headers
    assert headers["x-forwarded-for"] == "203.0.113.9"  # the gateway's word for who the client is
    assert headers["authorization"] == "Bearer abc"


async def test_the_proxy_sends_the_path_as_the_client_encoded_it(upstream: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = upstream
    proxy = Proxy(ServiceUrls(conversation=url))
    try:
        await forward(proxy, gateway_request("/v1/conversations/c%3F1%23x/members/caf%C3%A9", []))
    finally:
        await proxy.close()

    assert seen[0]["raw_path"] == "/v1/conversations/c%3F1%23x/members/caf%C3%A9"


async def forwarded_upgrade(request: bytes, limiter: gateway.AllowAll | gateway.RefuseAll | None = None) -> bytes:
    """The head a delivery node gets when a client sends the front ``request``, lowercased."""
    heads: list[bytes] = []

    async def node(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    delivery = await asyncio.start_server(node, "127.0.0.1", 0)
    front = gateway.front({"delivery-0": f"http://127.0.0.1:{delivery.sockets[0].getsockname()[1]}"}, limiter)
    server = await front.serve("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(request)
        await writer.drain()
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)).startswith(b"HTTP/1.1 403")
        writer.close()
        await writer.wait_closed()
        await wait_for(lambda: front.open_websockets == 0, "the splice to end")
    finally:
        await front.drain(0)  # closes its listening socket
        delivery.close()
        await delivery.wait_closed()
    return heads[0].lower()


async def test_the_front_drops_internal_headers_from_an_upgrade() -> None:
    forwarded = await forwarded_upgrade(
        b"GET /v1/ws HTTP/1.1\r\nhost: t\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
        b"x-courier-internal: the-real-token\r\nX-Courier-Reject: 1000\r\nX-Courier-Retry-After: 9\r\n"
        b"x-forwarded-for: 1.2.3.4\r\n\r\n"
    )

    assert b"the-real-token" not in forwarded
    # The front's own internal token, vouching for the address it forwards.
    assert f"x-courier-internal: {gateway.INTERNAL_TOKEN}".encode() in forwarded
    assert b"x-courier-reject" not in forwarded
    assert b"x-courier-retry-after" not in forwarded
    assert b"1.2.3.4" not in forwarded
    assert b"x-forwarded-for: 127.0.0.1" in forwarded


async def test_an_upgrade_over_the_rate_limit_reaches_the_node_marked_refused_with_the_wait() -> None:
    # The node accepts it and closes it with 4008 after an error frame (browsers cannot read a refused handshake),
    # telling the client how long to wait before it tries again.
    forwarded = await forwarded_upgrade(
        b"GET /v1/ws HTTP/1.1\r\nhost: t\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        gateway.RefuseAll(retry_after=0.4217),
    )

    assert b"\r\nx-courier-reject: 4008\r\n" in forwarded
    assert b"\r\nx-courier-retry-after: 0.422\r\n" in forwarded
