"""What a client cannot do through the public edge of real processes: reach an /internal route (dot segments,
encoded slashes, its own x-courier-internal header), or pick the address its IP rate limit is counted under
with X-Forwarded-For. Against ``courier dev``, and against ``courier run gateway`` in front of a stand-in
for the services that records what reaches it (no other infrastructure needed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.server import RunningServer, free_port, run_server, stop
from tests.system.conftest import ROOMY_LIMITS

READY_DEADLINE_S = 60.0
ANSWER_DEADLINE_S = 30.0
INTERNAL_TOKEN = secrets.token_hex(32)
# Five requests per address, then one more every 100 s: however slowly the test runs, the sixth is refused.
TIGHT_IP = {**ROOMY_LIMITS, "COURIER_LIMITS__IP__RATE": "0.01", "COURIER_LIMITS__IP__BURST": "5"}
# Each way of walking from a public conversation route up to the conversation service's internal one.
TRAVERSALS = [
    "/v1/conversations/../../internal/conversations/of/u1",
    "/v1/conversations/%2e%2e/%2e%2e/internal/conversations/of/u1",
    "/v1/conversations/%2E%2e/.%2E/internal/conversations/of/u1",
    "/v1/conversations/%252e%252e/%252e%252e/internal/conversations/of/u1",
    "/v1/conversations/..%2f..%2finternal/conversations/of/u1",
    "/v1/conversations/..%5C..%5Cinternal/conversations/of/u1",
]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> tuple[int, str]:
        return self.status, orjson.loads(self.body)["error"]["code"]


class RawHttp:
    """One kept-alive HTTP/1.1 connection that sends request targets byte for byte (httpx would resolve dots)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def get(self, target: str, headers: Mapping[str, str] | None = None) -> Answer:
        lines = [f"GET {target} HTTP/1.1", "host: courier", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await self._writer.drain()
        return await asyncio.wait_for(self._answer(), ANSWER_DEADLINE_S)

    async def _answer(self) -> Answer:
        head = (await self._reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int((await self._reader.readuntil(b"\r\n")).strip(), 16):
                body += (await self._reader.readexactly(size + 2))[:-2]
            await self._reader.readuntil(b"\r\n")
        else:
            body = await self._reader.readexactly(int(headers.get("content-length", "0")))
        return Answer(status, headers, body)


@contextlib.asynccontextmanager
async def raw_http(base_url: str) -> AsyncIterator[RawHttp]:
    url = httpx.URL(base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        yield RawHttp(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@dataclass
class Services:
    """Stands in for every service (and delivery node) behind a gateway: records what reaches it, and like the
    real ones answers an /internal route to whoever presents the internal token."""

    url: str = ""
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def internal_reached(self, since: int) -> list[str]:
        """The /internal paths asked for after the first ``since`` requests."""
        return [path for path, _ in self.seen[since:] if path.startswith("/internal")]


@contextlib.contextmanager
def services() -> Iterator[Services]:
    record = Services()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            record.seen.append((self.path, headers))
            if self.path.startswith("/internal") and headers.get("x-courier-internal") == INTERNAL_TOKEN:
                self._reply(200, {"conversations": ["everything of u1"]})
            elif self.path.startswith("/internal"):
                self._reply(403, {"error": {"code": "forbidden", "message": "internal route"}})
            else:
                self._reply(200, {"path": self.path})

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="stand-in services", daemon=True)
    thread.start()
    record.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


@contextlib.contextmanager
def run_gateway(upstream: Services, log_path: Path, env: Mapping[str, str]) -> Iterator[str]:
    """``courier run gateway`` (prod mode, its own secrets) in front of ``upstream``; yields its base URL."""
    port = free_port()
    full_env = {
        **os.environ,
        **env,
        "COURIER_MODE": "prod",
        "COURIER_HOST": "127.0.0.1",
        "COURIER_PORT": str(port),
        "COURIER_SECRET": secrets.token_hex(32),
        "COURIER_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "COURIER_JWT__KEYS": json.dumps({"k1": secrets.token_hex(32)}),
        "COURIER_JWT__ACTIVE_KID": "k1",
        "COURIER_REDIS__URL": "",
        "COURIER_RING__NODES": json.dumps({"delivery-0": upstream.url}),
        **{f"COURIER_SERVICES__{name}": upstream.url for name in ("IDENTITY", "CONVERSATION", "MESSAGE", "PRESENCE")},
        "COURIER_SERVICES__FILE": upstream.url,
    }
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", "gateway", "--log-level", "warning"],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_DEADLINE_S
        while not _ready(base_url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"courier run gateway did not become ready:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield base_url
    finally:
        stop(process)


def _ready(base_url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
    return False


@pytest.fixture(scope="module")
def stand_in() -> Iterator[Services]:
    with services() as record:
        yield record


@pytest.fixture(scope="module")
def gateway(stand_in: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_gateway(stand_in, tmp_path_factory.mktemp("gateway") / "gateway.log", ROOMY_LIMITS) as url:
        yield url


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with run_server(Path(tmp_path_factory.mktemp("courier-boundaries")), ROOMY_LIMITS) as running:
        yield running


async def test_no_dot_segment_or_encoded_slash_reaches_an_internal_route_through_the_gateway(
    gateway: str, stand_in: Services
) -> None:
    mark = len(stand_in.seen)
    async with raw_http(gateway) as http:
        answers = [await http.get(target, {"x-courier-internal": INTERNAL_TOKEN}) for target in TRAVERSALS]

    assert stand_in.internal_reached(since=mark) == []
    assert [answer.error() for answer in answers] == [(400, "invalid_request")] * len(TRAVERSALS)


async def test_internal_routes_are_not_found_through_the_gateway_even_with_the_token(
    gateway: str, stand_in: Services
) -> None:
    mark = len(stand_in.seen)
    async with raw_http(gateway) as http:
        answer = await http.get("/internal/conversations/of/u1", {"x-courier-internal": INTERNAL_TOKEN})

    assert stand_in.internal_reached(since=mark) == []
    assert answer.error() == (404, "not_found")


async def test_a_client_cannot_send_the_headers_services_trust_from_the_gateway(
    gateway: str, stand_in: Services
) -> None:
    spoofed = {"x-courier-internal": INTERNAL_TOKEN, "x-courier-reject": "4008", "x-forwarded-for": "1.2.3.4"}
    async with raw_http(gateway) as http:
        # The second request rides the kept-alive connection, past the front's look at the first head.
        answers = [await http.get(f"/v1/conversations/boundary-{i}", spoofed) for i in range(2)]

    assert [answer.status for answer in answers] == [200, 200]
    received = [headers for path, headers in stand_in.seen if path.startswith("/v1/conversations/boundary-")]
    assert len(received) == 2
    for headers in received:
        assert not [name for name in headers if name.startswith("x-courier-")]
        assert headers["x-forwarded-for"] == "127.0.0.1"


async def test_courier_dev_serves_no_internal_route_to_a_client(dev: RunningServer) -> None:
    async with raw_http(dev.base_url) as http:
        direct = await http.get("/internal/conversations/of/u1", {"x-courier-internal": "any-token"})
        walked = [await http.get(target, {"x-courier-internal": "any-token"}) for target in TRAVERSALS]

    assert direct.error() == (404, "not_found")
    assert [answer.error() for answer in walked] == [(400, "invalid_request")] * len(TRAVERSALS)


async def spoofed_burst(base_url: str, count: int) -> list[int]:
    """The statuses of ``count`` requests on one connection from loopback, each claiming another address."""
    statuses = []
    async with raw_http(base_url) as http:
        for i in range(count):
            answer = await http.get("/v1/users/me", {"x-forwarded-for": f"198.51.100.{i}"})
            if answer.status == 429:
                assert answer.error() == (429, "rate_limited")
                assert orjson.loads(answer.body)["error"]["message"] == "ip rate limit exceeded"
            statuses.append(answer.status)
    return statuses


async def test_courier_dev_counts_a_loopback_client_as_loopback_whatever_x_forwarded_for_says(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with run_server(Path(tmp_path_factory.mktemp("courier-xff")), TIGHT_IP) as tight:
        answers = await spoofed_burst(tight.base_url, 8)

    assert answers == [401] * 5 + [429] * 3  # refused once loopback's five are spent


async def test_courier_dev_believes_x_forwarded_for_from_a_configured_proxy(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    env = {**TIGHT_IP, "COURIER_GATEWAY__TRUSTED_PROXIES": '["127.0.0.0/8"]'}
    with run_server(Path(tmp_path_factory.mktemp("courier-proxied")), env) as proxied:
        answers = await spoofed_burst(proxied.base_url, 8)

    assert answers == [401] * 8  # eight clients behind the proxy, one request each


async def test_the_gateway_counts_a_client_by_its_connection_whatever_x_forwarded_for_says(
    stand_in: Services, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with run_gateway(stand_in, tmp_path_factory.mktemp("tight-gateway") / "gateway.log", TIGHT_IP) as url:
        answers = await spoofed_burst(url, 8)

    assert answers == [200] * 5 + [429] * 3  # the stand-in answers /v1/users/me with 200
