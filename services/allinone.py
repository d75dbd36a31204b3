"""``courier dev``: every role composed in one process (``services.compose``) on the embedded adapters,
SQLite under ``data_dir``, the in-process cache and event log and the local-disk object store, inside the
gateway's edge (limits, the web page, rtc). The use-case code is the one of the distributed mode.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from fastapi.staticfiles import StaticFiles

from services.common import telemetry
from services.common.hardening import harden
from services.common.observe import observe
from services.common.settings import Settings
from services.common.web import install_error_handlers, install_ops_routes
from services.compose import ROLES, Process
from services.gateway.edge import EdgeMiddleware
from services.rtc.main import build_rtc

STATIC_DIR = Path(__file__).parent / "gateway" / "static"


def create_app(settings: Settings) -> FastAPI:
    settings = harden(settings)
    telemetry.configure("all")
    system = Process(settings, ROLES)

    app = FastAPI(
        title="Courier",
        version="1",
        lifespan=system.lifespan,
        default_response_class=ORJSONResponse,
        description="Instant messaging over HTTP and WebSocket; see docs/protocol.md.",
    )
    install_error_handlers(app)
    for router in [*system.routers, build_rtc(settings, auth=system.wiring.auth)]:
        app.include_router(router)
    install_ops_routes(app, system.ready)

    if STATIC_DIR.is_dir():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="web")
    app.add_middleware(
        EdgeMiddleware,
        limiter=system.wiring.limiter,
        tokens=system.wiring.tokens,
        max_body_bytes=settings.limits.max_body_bytes,
        own_body_limit_prefixes=("/v1/files/blobs/",),
    )
    observe(app, "all")  # outside the edge, so its 429s and 413s are counted too
    telemetry.instrument_app(app)
    return app
