"""Courier's protocol smoke test: register two users, log in, send a message over the WebSocket, see it arrive.

Run by the chart's `helm test` hook inside the Courier image (only its Python and the courier package's
dependencies: httpx, websockets) and by tests/e2e against a port-forwarded gateway. Exit 0 on success, 1 with
the failed step on stderr.

    COURIER_SMOKE_URL=http://chat-gateway:8080 python smoke.py
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from typing import Any

import httpx
import websockets

URL_ENV = "COURIER_SMOKE_URL"
# The gateway may still be warming up (the ring published, services ready) when the hook Pod starts.
READY_DEADLINE_S = float(os.environ.get("COURIER_SMOKE_READY_DEADLINE_S", "180"))
FRAME_DEADLINE_S = float(os.environ.get("COURIER_SMOKE_FRAME_DEADLINE_S", "30"))
PASSWORD = "smoke-test-" + secrets.token_hex(8)


class SmokeFailed(Exception):
    """One step of the smoke test did not do what the protocol says."""


def step(message: str) -> None:
    print(f"smoke: {message}", flush=True)


async def wait_ready(http: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    last = ""
    while time.monotonic() < deadline:
        try:
            answer = await http.get("/readyz")
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        await asyncio.sleep(1)
    raise SmokeFailed(f"gateway not ready after {READY_DEADLINE_S:.0f}s: {last}")


def expect(answer: httpx.Response, *statuses: int) -> dict[str, Any]:
    if answer.status_code not in statuses:
        raise SmokeFailed(
            f"{answer.request.method} {answer.request.url.path}: {answer.status_code} {answer.text[:300]}"
        )
    body: dict[str, Any] = answer.json()
    return body


async def account(http: httpx.AsyncClient, prefix: str) -> dict[str, Any]:
    """Register a fresh user and log one device in; return the login answer."""
    username = f"{prefix}{secrets.token_hex(5)}"
    expect(await http.post("/v1/auth/register", json={"username": username, "password": PASSWORD}), 201)
    login = {"username": username, "password": PASSWORD, "device_name": "courier-smoke"}
    return expect(await http.post("/v1/auth/login", json=login), 200)


async def next_frame(ws: Any, wanted: str, match: dict[str, Any]) -> dict[str, Any]:
    """The first frame of type `wanted` whose fields equal `match`; an error frame for it fails the test."""

    async def scan() -> dict[str, Any]:
        async for raw in ws:
            frame: dict[str, Any] = json.loads(raw)
            if frame.get("type") == "error":
                raise SmokeFailed(f"error frame while waiting for {wanted}: {frame}")
            if frame.get("type") == wanted and all(frame.get(k) == v for k, v in match.items()):
                return frame
        raise SmokeFailed(f"socket closed ({ws.close_code}) before a {wanted} frame")

    try:
        return await asyncio.wait_for(scan(), FRAME_DEADLINE_S)
    except TimeoutError as exc:
        raise SmokeFailed(f"no {wanted} frame matching {match} within {FRAME_DEADLINE_S:.0f}s") from exc


async def smoke(base_url: str) -> dict[str, Any]:
    ws_base = base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1).rstrip("/")
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        await wait_ready(http)
        step(f"gateway {base_url} is ready")
        alice = await account(http, "smokea")
        bob = await account(http, "smokeb")
        step(f"registered and logged in {alice['user_id']} and {bob['user_id']}")
        headers = {"Authorization": f"Bearer {alice['access_token']}"}
        direct = {"type": "direct", "peer_id": bob["user_id"]}
        conversation = expect(await http.post("/v1/conversations", json=direct, headers=headers), 200, 201)
        cid = conversation["conversation_id"]
        step(f"direct conversation {cid}")

    async with (
        websockets.connect(f"{ws_base}/v1/ws?access_token={bob['access_token']}") as bob_ws,
        websockets.connect(f"{ws_base}/v1/ws?access_token={alice['access_token']}") as alice_ws,
    ):
        # A ping round trip on each socket proves both sessions are registered before the send.
        for ws, ref in ((bob_ws, "p-bob"), (alice_ws, "p-alice")):
            await ws.send(json.dumps({"type": "ping", "id": ref}))
            await next_frame(ws, "pong", {"ref": ref})
        send = {
            "type": "send",
            "id": "s1",
            "conversation_id": cid,
            "client_msg_id": f"smoke-{secrets.token_hex(6)}",
            "content": {"type": "text", "text": "hello from courier-smoke"},
        }
        await alice_ws.send(json.dumps(send))
        ack = await next_frame(alice_ws, "send_ack", {"ref": "s1"})
        step(f"send_ack seq {ack['seq']} message {ack['message_id']}")
        message = await next_frame(bob_ws, "message", {"conversation_id": cid, "seq": ack["seq"]})
        await bob_ws.send(json.dumps({"type": "ack", "conversation_id": cid, "seq": message["seq"]}))
        step(f"peer received seq {message['seq']} and acked it")
    return {"conversation_id": cid, "seq": ack["seq"], "message_id": ack["message_id"]}


def main() -> int:
    base_url = os.environ.get(URL_ENV, "").rstrip("/")
    if not base_url:
        print(f"smoke: set {URL_ENV} to the gateway's base URL (http://host:port)", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(smoke(base_url))
    except (SmokeFailed, httpx.HTTPError, websockets.WebSocketException, OSError) as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"smoke: OK {json.dumps(result)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
