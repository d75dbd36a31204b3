"""``python -m bench.internal_call``: the CPU one internal call costs the serving app, in this process.

An internal call (``services.common.contract``) is served by an ASGI app like the services' own: the error
handlers, the HTTP metrics middleware, and the call's route from ``contract.serve``. This drives that app directly
with one small JSON POST at a time, no socket and no HTTP parsing, so what it measures is the routing, the token
check, the request's validation and the answer. For reference it also serves the same call as a FastAPI route with
the token checked as a router dependency, which is how the calls were served before (docs/performance.md 19).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from pydantic import BaseModel

from services.common.contract import call, serve
from services.common.internal import HEADER, RequireInternal
from services.common.observe import observe
from services.common.web import install_error_handlers

TOKEN = "bench-internal-token"
BODY = b'{"conversation_id":"c1","sender_id":"u1","client_msg_id":"m1","text":"hello there"}'


class Send(BaseModel):
    conversation_id: str
    sender_id: str
    client_msg_id: str
    text: str


class Sent(BaseModel):
    seq: int


class Port:
    async def send(self, request: Send) -> Sent:
        return Sent(seq=1)


@call("POST", "/internal/bench/send", Send, Sent)
async def send(port: Port, request: Send) -> Sent:
    return await port.send(request)


def served_by_contract() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(serve(Port(), RequireInternal(TOKEN), [send]))
    observe(app, "bench")
    return app


def served_by_fastapi() -> FastAPI:
    """The call as a FastAPI route behind the guard as a dependency."""
    app = FastAPI()
    install_error_handlers(app)
    router = APIRouter(dependencies=[Depends(RequireInternal(TOKEN))])
    port = Port()

    async def endpoint(request: Request) -> Response:
        answer = await port.send(Send.model_validate_json(await request.body()))
        return Response(answer.model_dump_json(), media_type="application/json")

    router.add_api_route("/internal/bench/send", endpoint, methods=["POST"])
    app.include_router(router)
    observe(app, "bench")
    return app


async def one(app: Any) -> None:
    path = "/internal/bench/send"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (HEADER.encode(), TOKEN.encode()),
            (b"content-length", str(len(BODY)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 9003),
        "state": {},
    }
    messages = [{"type": "http.request", "body": BODY, "more_body": False}]
    status = 0

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # never: the body was read whole
        raise AssertionError

    async def respond(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, respond)
    if status != 200:
        raise SystemExit(f"the call answered {status}")


async def measure(app: Any, calls: int) -> float:
    """Microseconds of this process's CPU per call."""
    started = time.process_time()
    for _ in range(calls):
        await one(app)
    return 1e6 * (time.process_time() - started) / calls


async def run(calls: int, repeat: int) -> None:
    apps = {"contract.serve": served_by_contract(), "FastAPI route + dependency": served_by_fastapi()}
    for app in apps.values():
        await measure(app, 300)  # warm up
    print(f"{'served as':28s} CPU us/call")
    for _ in range(repeat):
        for name, app in apps.items():
            print(f"{name:28s} {await measure(app, calls):11.1f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.internal_call", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per app and round (default 5000)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds over the apps (default 2)")
    args = parser.parse_args(argv)
    asyncio.run(run(args.calls, args.repeat))


if __name__ == "__main__":
    main()
