"""GET /v1/presence through the router that build_presence returns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI
from presence_support import FakeClock, RecordingPusher, uid

from services.common.settings import JwtSettings, Settings
from services.common.tokens import AccessTokens, Principal
from services.common.web import Authenticate, install_error_handlers
from services.presence.main import Presence, build_presence

Headers = Callable[[], dict[str, str]]


@pytest.fixture
def tokens() -> AccessTokens:
    return AccessTokens(JwtSettings(keys={"k1": "presence-test-secret-of-32-bytes-!!"}, active_kid="k1"))


@pytest.fixture
def auth_headers(tokens: AccessTokens) -> Headers:
    return lambda: {"Authorization": f"Bearer {tokens.issue(Principal(uid('caller'), 'd1'), session_id=uid('s'))}"}


@pytest.fixture
def presence(tokens: AccessTokens, pusher: RecordingPusher, clock: FakeClock) -> Presence:
    return build_presence(Settings(presence_ttl_s=30), auth=Authenticate(tokens), pusher=pusher, clock=clock)


@pytest.fixture
async def client(presence: Presence) -> AsyncIterator[httpx.AsyncClient]:
    application = FastAPI()
    install_error_handlers(application)
    application.include_router(presence.router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://test") as client:
        yield client


async def test_presence_lists_the_users_asked_in_order(
    client: httpx.AsyncClient, presence: Presence, clock: FakeClock, auth_headers: Headers
) -> None:
    online, offline, never = uid("online"), uid("offline"), uid("never")
    await presence.tracker.connected(online, "d1")
    await presence.tracker.connected(offline, "d1")
    clock.advance(31)  # past the 30 s TTL set in the settings
    await presence.tracker.heartbeat(online, "d1")

    response = await client.get(
        "/v1/presence", params={"user_ids": f"{never},{online}, {offline},{online}"}, headers=auth_headers()
    )

    assert response.status_code == 200
    assert response.json() == {
        "presence": [
            {"user_id": never, "online": False, "last_seen": None},
            {"user_id": online, "online": True, "last_seen": "2026-09-21T14:13:51.000Z"},
            {"user_id": offline, "online": False, "last_seen": "2026-09-21T14:13:20.000Z"},
        ]
    }


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"user_ids": ""},
        {"user_ids": " , "},
        {"user_ids": ",".join(f"u{i}" for i in range(201))},
        {"user_ids": "x" * 65},
    ],
)
async def test_bad_user_ids_are_invalid_request(
    client: httpx.AsyncClient, auth_headers: Headers, params: dict[str, str]
) -> None:
    response = await client.get("/v1/presence", params=params, headers=auth_headers())

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert "user" in response.json()["error"]["message"]


async def test_presence_needs_a_bearer_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/presence", params={"user_ids": "a"})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
