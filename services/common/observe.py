"""HTTP rate, errors and duration of every request, labelled by the matched route's template (never the raw
path, which carries ids), as pure ASGI middleware; and the build info of the process."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from services.common.metrics import BUILD, HTTP_DURATION, HTTP_REQUESTS

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNMATCHED = "unmatched"
STATIC = "static"


def route_template(scope: Scope) -> str:
    """The template of the route that handled the request, from what the router left in the scope."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    endpoint = scope.get("endpoint")
    if endpoint is None:
        return UNMATCHED
    if isinstance(endpoint, StaticFiles):
        return STATIC
    # A plain Starlette route or a mount: find it among the app's routes by its endpoint.
    app = scope.get("app")
    for candidate in getattr(app, "routes", ()):
        if isinstance(candidate, Mount) and candidate.app is endpoint:
            return STATIC if isinstance(endpoint, StaticFiles) else candidate.path + "/*"
        if getattr(candidate, "endpoint", None) is endpoint:
            return str(getattr(candidate, "path", UNMATCHED))
    return UNMATCHED


class ObserveMiddleware:
    """Counts and times each HTTP request once its response is over (or failed), by method, route template and
    status. WebSocket and lifespan traffic passes through untouched."""

    def __init__(self, app: ASGIApp, *, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started is what the client will see as a 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            count_request(self.service, str(scope.get("method", "GET")), route_template(scope), status, started)


def count_request(service: str, method: str, route: str, status: int, started: float) -> None:
    """One request answered with ``status``, begun at ``started`` (``time.perf_counter``), in the HTTP rate and
    duration series: by this middleware, and by an internal stream for the calls it answers without the app."""
    HTTP_REQUESTS.labels(service, method, route, str(status)).inc()
    HTTP_DURATION.labels(service, method, route).observe(time.perf_counter() - started)


def set_build_info(service: str) -> None:
    """``courier_build{version,service}`` for this process."""
    try:
        version = metadata.version("courier")
    except metadata.PackageNotFoundError:
        version = "unknown"
    BUILD.info({"version": version, "service": service})


def observe(app: Any, service: str) -> None:
    """Install the HTTP metrics middleware on ``app`` (outermost of those added so far) and set the build info."""
    app.add_middleware(ObserveMiddleware, service=service)
    set_build_info(service)
