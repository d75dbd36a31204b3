"""The gateway edge: rate limits (429 and 4008), body limits, error shape, health and OpenAPI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.client import Api, Device
from tests.support.server import RunningServer, run_server

TIGHT_ENV = {
    "COURIER_LIMITS__GLOBAL__RATE": "100000",
    "COURIER_LIMITS__GLOBAL__BURST": "200000",
    "COURIER_LIMITS__IP__RATE": "100000",
    "COURIER_LIMITS__IP__BURST": "200000",
    "COURIER_LIMITS__USER__RATE": "1",
    "COURIER_LIMITS__USER__BURST": "10",
    "COURIER_LIMITS__MAX_BODY_BYTES": "4096",
}


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with run_server(Path(tmp_path_factory.mktemp("courier-tight")), TIGHT_ENV) as running:
        yield running


async def test_http_burst_beyond_the_user_limit_gets_429_with_retry_after(tight: RunningServer) -> None:
    api = Api(tight.base_url)
    try:
        user = await api.register("burst")
        statuses = []
        for _ in range(25):
            answer = await api.http.get("/v1/users/me", headers=user.headers)
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                assert answer.json()["error"]["code"] == "rate_limited"
                assert int(answer.headers["Retry-After"]) >= 1
                break
        assert 429 in statuses
        assert statuses[0] == 200
    finally:
        await api.close()


async def test_websocket_frame_burst_beyond_the_user_limit_closes_with_4008(tight: RunningServer) -> None:
    api = Api(tight.base_url)
    try:
        user = await api.register("wsburst")
        device = await Device.connect(tight.ws_url, user)
        for _ in range(30):
            if device.closed.is_set():
                break
            try:
                await device.send({"type": "ping", "id": "p"})
            except Exception:  # noqa: BLE001 - the server may close while we are still sending
                break
        await asyncio.wait_for(device.closed.wait(), 30)
        assert device.close_code == 4008
    finally:
        await api.close()


async def test_body_larger_than_the_limit_gets_413(tight: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=tight.base_url) as http:
        answer = await http.post(
            "/v1/auth/register", content=b"{" + b" " * 10_000 + b"}", headers={"content-type": "application/json"}
        )
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "payload_too_large"


async def test_streamed_body_larger_than_the_limit_gets_413(tight: RunningServer) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"username": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    async with httpx.AsyncClient(base_url=tight.base_url) as http:
        answer = await http.post("/v1/auth/register", content=chunks(), headers={"content-type": "application/json"})
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "payload_too_large"


async def test_errors_use_the_protocol_shape_and_never_500(server: RunningServer, api: Api) -> None:
    user = await api.register("shape")
    cases = [
        await api.http.get("/v1/conversations/nope", headers=user.headers),
        await api.http.get("/v1/conversations"),
        await api.http.post("/v1/conversations", json={"type": "triangle"}, headers=user.headers),
        await api.http.post(
            "/v1/conversations", content=b"{not json", headers={**user.headers, "content-type": "application/json"}
        ),
        await api.http.get("/v1/no/such/route", headers=user.headers),
        await api.http.get("/v1/conversations/x/messages?limit=0", headers=user.headers),
    ]
    assert [c.status_code for c in cases] == [404, 401, 422, 422, 404, 422]
    for answer in cases:
        body = answer.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}


async def test_health_readiness_metrics_and_openapi(server: RunningServer, api: Api) -> None:
    assert (await api.http.get("/healthz")).json() == {"status": "ok"}
    assert (await api.http.get("/readyz")).status_code == 200
    metrics = await api.http.get("/metrics")
    assert metrics.status_code == 200 and "# TYPE" in metrics.text
    spec = (await api.http.get("/openapi.json")).json()
    for path in (
        "/v1/auth/register",
        "/v1/conversations/{conversation_id}/messages",
        "/v1/files/uploads",
        "/v1/presence",
        "/v1/rtc/ice-servers",
    ):
        assert path in spec["paths"], path
