"""An ASGI app served by uvicorn on a free loopback port inside the test's own event loop, for
tests of our HTTP clients against our real routes (real sockets, real HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import uvicorn
from fastapi import APIRouter, FastAPI, Request, Response

from services.common.contract import StreamAnswer, stream_answers
from services.common.internal import InternalClient, RequireInternal
from services.common.stream import STREAMS, StreamServer
from services.common.web import install_error_handlers

START_DEADLINE_S = 30.0


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 until the block ends; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # log_config=None: leave the logging the tests set up as it is.
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off", ws="websockets-sansio"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(START_DEADLINE_S):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, START_DEADLINE_S)
        sock.close()


TOKEN = "internal-token"
GUARD = RequireInternal(TOKEN)


@dataclass
class Internal:
    """An internal router being served: its URL, a client that presents the token, the path of every
    request it received, in order, and its ``/internal/stream`` route."""

    url: str
    client: InternalClient
    streams: StreamServer
    paths: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def internal_service(
    router: APIRouter,
    *,
    hold: Callable[[], Awaitable[object]] | None = None,
    streams: int = STREAMS,
    serve_stream: bool = True,
) -> AsyncIterator[Internal]:
    """``router`` (built with ``GUARD``) in an app with Courier's error handlers and, unless ``serve_stream`` is
    False, the internal stream route, served on loopback; its client keeps ``streams`` streams (0: HTTP only).
    ``hold``, when given, is awaited by every request after it is counted and before it is handled, whether the
    app or the stream (its POST calls) answers it."""
    paths: list[str] = []
    stream_server = StreamServer(GUARD, service="test")
    api = FastAPI()
    install_error_handlers(api)
    api.include_router(router)

    def remembered(path: str, answer: StreamAnswer) -> StreamAnswer:
        """A call the stream answers without the app (so without the middleware below), remembered the same."""

        async def answer_remembered(body: bytes) -> bytes | None:
            paths.append(path)
            if hold is not None:
                await hold()
            return await answer(body)

        return answer_remembered

    stream_server.answer_calls({path: remembered(path, one) for path, one in stream_answers(api.routes).items()})
    if serve_stream:
        api.router.routes.append(stream_server.route())

    @api.middleware("http")
    async def remember(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        paths.append(request.url.path)
        if hold is not None:
            await hold()
        return await call_next(request)

    async with serving(api) as url:
        client = InternalClient(url, TOKEN, streams=streams)
        try:
            yield Internal(url, client, stream_server, paths)
        finally:
            await client.close()
