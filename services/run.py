"""The processes of the distributed mode, ``courier run <service>``: one role per process (composed by
``services.compose``, the other roles over HTTP with the internal token, delivery nodes on a
consistent-hash ring), and the gateway: a byte-splicing front (``services.gateway.front``) before its
HTTP app.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import ORJSONResponse
from fastapi.staticfiles import StaticFiles

from services.common import shutdown, telemetry
from services.common.contract import stream_answers
from services.common.observe import observe
from services.common.revocation import RedisRevocations
from services.common.settings import Settings
from services.common.stream import StreamServer
from services.common.web import install_error_handlers, install_ops_routes
from services.compose import ROLES, Process, Wiring

log = logging.getLogger("courier.run")

SERVICES = ("gateway", *ROLES)
STATIC_DIR = Path(__file__).parent / "gateway" / "static"
STREAM_GO_AWAY_S = 5.0


def create_service_app(name: str, settings: Settings) -> FastAPI:
    """Role ``name`` alone in a process, the other roles reached over HTTP."""
    telemetry.configure(name)
    process = Process(settings, {name})

    app = FastAPI(
        title=f"Courier {name}", version="1", lifespan=process.lifespan, default_response_class=ORJSONResponse
    )
    streams = StreamServer(process.wiring.guard, service=name)

    async def drain() -> None:
        await process.drain(lambda: shutdown.lag(settings.shutdown.lag_s))
        await streams.go_away(STREAM_GO_AWAY_S)  # its calls answered before uvicorn closes its sockets

    app.state.drain = drain
    app.router.routes.append(streams.route())
    install_error_handlers(app)
    for router in process.routers:
        app.include_router(router)
    streams.answer_calls(stream_answers(app.routes))
    install_ops_routes(app, process.ready)
    observe(app, name)
    telemetry.instrument_app(app)
    return app


def create_gateway_app(
    settings: Settings, wiring: Wiring, limiter: Any, client_ip: Callable[[tuple[str, int] | None], str | None]
) -> FastAPI:
    """The gateway's HTTP side (behind the front): limits, the web page, rtc, proxying."""
    from services.gateway.edge import EdgeMiddleware
    from services.gateway.proxy import Proxy
    from services.rtc.main import build_rtc

    proxy = Proxy(settings.services)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await proxy.close()

    app = FastAPI(
        title="Courier",
        version="1",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
        openapi_url=None,
        description="Instant messaging over HTTP and WebSocket; see docs/protocol.md.",
    )
    install_error_handlers(app)
    app.include_router(build_rtc(settings, auth=wiring.auth))

    app.state.draining = False

    async def ready() -> bool:
        return bool(wiring.ring.ring.members) and not app.state.draining

    install_ops_routes(app, ready)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        from fastapi.openapi.utils import get_openapi

        own = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description)
        return await proxy.openapi(own)

    @app.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def forward(request: Request, path: str) -> Response:
        return await proxy.forward(request)

    if STATIC_DIR.is_dir():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="web")
    app.add_middleware(
        EdgeMiddleware,
        limiter=limiter,
        tokens=wiring.tokens,
        max_body_bytes=settings.limits.max_body_bytes,
        own_body_limit_prefixes=("/v1/files/blobs/",),
        client_ip=client_ip,
    )
    observe(app, "gateway")  # outside the edge, so its 429s and 413s are counted too
    telemetry.instrument_app(app)
    return app


async def serve_gateway(settings: Settings) -> None:
    """The front on ``settings.host:port``; the HTTP app on a private loopback port behind it."""
    from services.gateway.front import Front

    telemetry.configure("gateway")
    wiring = Wiring(settings, roles=())
    limiter = wiring.limiter
    inner = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    inner.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    inner.bind(("127.0.0.1", 0))
    inner_port = inner.getsockname()[1]
    front = Front(
        ring=wiring.ring,
        tokens=wiring.tokens,
        limiter=limiter,
        http_upstream=("127.0.0.1", inner_port),
        internal_token=settings.internal_token,
    )
    app = create_gateway_app(settings, wiring, limiter, front.client_ip)
    # The client's address comes from the front (client_ip), never from a header a client could send.
    # log_config=None: uvicorn's loggers go to the process's (JSON) root handler.
    config = uvicorn.Config(
        app,
        log_level="warning",
        log_config=None,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
        ws="services.common.wsprotocol:BoundedCloseProtocol",
    )

    async def drain() -> None:
        """SIGTERM: not ready, but accepting for the lag; then no new connection and the sockets closed spread out."""
        app.state.draining = True
        await shutdown.lag(settings.shutdown.lag_s)
        await front.drain(settings.shutdown.drain_s)

    server = shutdown.DrainingServer(config, drain)
    revocations = wiring.revocations
    followers = [asyncio.create_task(wiring.ring.run(), name="ring-watch")]
    if isinstance(revocations, RedisRevocations):
        await revocations.start()
        followers.append(asyncio.create_task(revocations.run(), name="revoked-sessions"))
    listener = await front.serve(settings.host, settings.port)
    log.info("gateway on %s:%d (http app on 127.0.0.1:%d)", settings.host, settings.port, inner_port)
    try:
        await server.serve(sockets=[inner])
    finally:
        for follower in followers:
            follower.cancel()
        listener.close()
        for close in reversed(wiring.closers):
            await close()
        telemetry.shutdown()
