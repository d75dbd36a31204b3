"""A WebSocket frame fuzzer against a real ``courier dev``: every client frame type, valid and mutated
(wrong types, huge and negative numbers, booleans for numbers, lone surrogates, control and bidi
characters, missing and extra fields, deep nesting), plus frames that are not JSON objects at all.

What a client must be able to count on: a bad frame is answered with an ``error`` frame that is never
``internal``, the socket stays open and keeps answering in order, and the server neither logs a crash
nor grows without bound. The run is seeded (``COURIER_FUZZ_SEED``) and bounded (``COURIER_FUZZ_FRAMES``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.support.client import Api, Device, User
from tests.support.server import RunningServer, run_server
from tests.support.waiting import wait_for
from tests.system.conftest import SYSTEM_ENV

SEED = int(os.environ.get("COURIER_FUZZ_SEED", "20261202"))
FRAMES = int(os.environ.get("COURIER_FUZZ_FRAMES", "3000"))
CHECK_EVERY = 50
RSS_GROWTH_LIMIT_MIB = 300

NASTY: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**31,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    1.5,
    1e308,
    "",
    " ",
    "\ud800",
    "a\udfffb",
    "\x00",
    "\u202e",
    "abc\n",
    "x" * 65,
    "x" * 20_000,
    "🚀" * 4_000,
    [],
    [1, "a", None],
    {},
    {"type": "text"},
    {"type": "text", "text": "\ud800"},
    {"nested": [[[[[[[[[[[[[[[[[[[[{}]]]]]]]]]]]]]]]]]]]]},
]
NOT_OBJECTS = [
    "",
    "not json",
    "[]",
    "[1, 2]",
    "null",
    "42",
    '"ping"',
    '{"type": ',
    '{"type": "ping"}{"type": "ping"}',
    '"\\ud800"',
    '{"type": "\\ud800"}',
    "[" * 10_000 + "]" * 10_000,
    '{"a":' * 5_000 + "1" + "}" * 5_000,
]


@dataclass
class Target:
    server: RunningServer
    alice: User
    bob: User
    conversation_id: str


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def templates(target: Target) -> dict[str, dict[str, Any]]:
    """One valid frame of each client type."""
    cid, bob = target.conversation_id, target.bob.user_id
    return {
        "send": {
            "type": "send",
            "conversation_id": cid,
            "client_msg_id": "fuzz",
            "content": {"type": "text", "text": "hi"},
        },
        "ack": {"type": "ack", "conversation_id": cid, "seq": 1},
        "sync": {"type": "sync", "cursors": {cid: 0}, "limit": 10},
        "read": {"type": "read", "conversation_id": cid, "seq": 1},
        "typing": {"type": "typing", "conversation_id": cid, "state": "start"},
        "presence_subscribe": {"type": "presence_subscribe", "user_ids": [bob]},
        "call": {"type": "call", "call_id": "c1", "conversation_id": cid, "action": "invite", "to": bob},
        "ping": {"type": "ping"},
    }


def mutate(frame: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One to three mutations of a valid frame; ``type`` is mutated rarely, so the parsers behind it get most."""
    out: dict[str, Any] = json.loads(json.dumps(frame))
    for _ in range(rng.randint(1, 3)):
        keys = [k for k in out if k != "type" or rng.random() < 0.1]
        choice = rng.random()
        if keys and choice < 0.55:
            out[rng.choice(keys)] = nasty(rng)
        elif keys and choice < 0.7:
            out.pop(rng.choice(keys))
        elif choice < 0.8:
            out[rng.choice(["extra", "id", "seq", "limit", "cursors", "content"])] = nasty(rng)
        elif isinstance(out.get("content"), dict):
            out["content"][rng.choice(["text", "type", "caption", "file_id", "mentions"])] = nasty(rng)
        elif isinstance(out.get("cursors"), dict):
            out["cursors"][rng.choice(["", "x" * 70, "\ud800", target_key(out)])] = nasty(rng)
        else:
            out["id"] = nasty(rng)
    return out


def nasty(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(NASTY))


def target_key(frame: dict[str, Any]) -> str:
    cursors = frame.get("cursors")
    return next(iter(cursors)) if isinstance(cursors, dict) and cursors else "c"


def frames(target: Target, rng: random.Random, count: int) -> Iterator[str]:
    """``count`` raw text frames: valid ones, mutated ones and ones that are not objects."""
    kinds = templates(target)
    for n in range(count):
        roll = rng.random()
        if roll < 0.05:
            yield rng.choice(NOT_OBJECTS)
            continue
        frame = kinds[rng.choice(sorted(kinds))]
        if frame["type"] == "send":
            frame = {**frame, "client_msg_id": f"fuzz-{n}"}
        if roll < 0.2:
            yield json.dumps(frame)
        else:
            yield json.dumps(mutate(frame, rng))  # ensure_ascii: lone surrogates travel as \\ud800 escapes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with run_server(Path(tmp_path_factory.mktemp("courier-fuzz-ws")), SYSTEM_ENV) as running:
        yield running


@pytest.fixture
async def target(server: RunningServer) -> AsyncIterator[Target]:
    api = Api(server.base_url)
    try:
        alice, bob = await api.register("fa"), await api.register("fb")
        yield Target(server, alice, bob, await api.direct(alice, bob))
    finally:
        await api.close()


async def _alive(device: Device, marker: str) -> None:
    """Frames are handled in order: the pong to this ping proves every frame before it was handled."""
    await device.send({"type": "ping", "id": marker})
    await device.wait_for(lambda f: f.get("type") == "pong" and f.get("ref") == marker, timeout=60)


def _internal_errors(device: Device) -> list[dict[str, Any]]:
    return [f for f in device.frames if f.get("type") == "error" and f.get("code") == "internal"]


async def test_fuzzed_frames_get_clear_errors_and_never_break_the_socket(target: Target) -> None:
    rng = random.Random(SEED)
    assert target.server.process is not None
    rss_before = _rss_mib(target.server.process.pid)
    device = await Device.connect(target.server.ws_url, target.alice)
    peer = await Device.connect(target.server.ws_url, target.bob)
    try:
        batch: list[str] = []
        for n, raw in enumerate(frames(target, rng, FRAMES), start=1):
            await device.ws.send(raw)
            batch.append(raw[:300])
            if n % CHECK_EVERY == 0:
                try:
                    await _alive(device, f"alive-{n}")
                except (AssertionError, TimeoutError) as exc:
                    raise AssertionError(f"socket broke on one of frames {n - len(batch) + 1}-{n}: {batch}") from exc
                assert not _internal_errors(device), (_internal_errors(device)[:3], batch)
                batch = []
        await _alive(device, "alive-end")
        await _alive(peer, "peer-alive")
    finally:
        await device.close()
        await peer.close()

    errors = [f for f in device.frames if f.get("type") == "error"]
    assert errors, "the fuzzer sent invalid frames; each must be answered with an error frame"
    assert not _internal_errors(device), _internal_errors(device)[:3]
    assert {f["code"] for f in errors} <= {"invalid_request", "not_found", "forbidden", "conflict", "rate_limited"}
    assert all(isinstance(f.get("message"), str) and f["message"] for f in errors)
    assert target.server.process.poll() is None
    assert "Traceback" not in target.server.log(), target.server.log()[-4000:]
    grown = _rss_mib(target.server.process.pid) - rss_before
    assert grown < RSS_GROWTH_LIMIT_MIB, f"RSS grew by {grown:.0f} MiB"


async def test_a_binary_frame_is_refused_with_an_error_and_the_socket_stays(target: Target) -> None:
    device = await Device.connect(target.server.ws_url, target.alice)
    try:
        await device.ws.send(b'{"type": "ping", "id": "binary"}')
        await device.ws.send(bytes(range(256)))
        await _alive(device, "after-binary")
    finally:
        await device.close()


async def test_frames_over_the_limits_get_payload_too_large_then_1009(target: Target) -> None:
    device = await Device.connect(target.server.ws_url, target.alice)
    try:
        # Over COURIER_LIMITS__MAX_BODY_BYTES (1 MiB): refused with an error frame, the socket stays.
        await device.ws.send(json.dumps({"type": "ping", "id": "x" * (2 << 20)}))
        refused = await device.wait_for(lambda f: f.get("type") == "error", timeout=60)
        assert refused["code"] == "payload_too_large", refused
        await _alive(device, "after-2-mib")
        # Over the server's hard limit (4 MiB): closed with 1009.
        with contextlib.suppress(websockets.ConnectionClosed):  # the close may come while the frame is sent
            await device.ws.send(json.dumps({"type": "ping", "id": "x" * (5 << 20)}))
        await wait_for(device.closed.is_set, "the close of the 5 MiB frame's socket", deadline_s=60)
        assert device.close_code == 1009
    finally:
        await device.close()
    again = await Device.connect(target.server.ws_url, target.alice)
    try:
        await _alive(again, "after-oversize")
    finally:
        await again.close()
    assert httpx.get(f"{target.server.base_url}/readyz", timeout=10).status_code == 200
