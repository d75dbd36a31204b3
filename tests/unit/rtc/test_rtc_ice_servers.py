"""ICE servers for calls: STUN entry, TURN REST API credentials, and the HTTP route."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI

from services.common.settings import JwtSettings, RtcSettings, Settings
from services.common.tokens import AccessTokens, Principal
from services.common.web import Authenticate, install_error_handlers
from services.rtc.api import create_router
from services.rtc.domain import IceServer, ice_servers, turn_credentials
from services.rtc.main import build_rtc

SECRET = "turn-shared-secret"
NOW = 1_767_225_600.75  # 2026-01-01T00:00:00.75Z
JWT = JwtSettings(keys={"k": "rtc-test-secret-0123456789abcdef"}, active_kid="k")


def expected_credential(secret: str, username: str) -> str:
    """What coturn computes for use-auth-secret: base64 of HMAC-SHA1 over the username."""
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def test_turn_credentials_follow_the_turn_rest_api_scheme() -> None:
    username, credential = turn_credentials(SECRET, "user-1", expires_at=1_700_000_000)
    assert username == "1700000000:user-1"
    assert credential == expected_credential(SECRET, "1700000000:user-1")


def test_stun_and_turn_entries_with_expiry_a_ttl_from_now() -> None:
    servers = ice_servers(
        stun_urls=["stun:stun.example.org:3478"],
        turn_urls=["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"],
        turn_secret=SECRET,
        ttl_s=3600,
        user_id="u1",
        now=NOW,
    )
    username = f"{int(NOW) + 3600}:u1"
    assert servers == [
        IceServer(urls=("stun:stun.example.org:3478",)),
        IceServer(
            urls=("turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"),
            username=username,
            credential=expected_credential(SECRET, username),
        ),
    ]


@pytest.mark.parametrize(("turn_urls", "secret"), [([], SECRET), (["turn:t.example.org"], "")])
def test_no_turn_entry_without_urls_or_secret(turn_urls: list[str], secret: str) -> None:
    servers = ice_servers(
        stun_urls=["stun:s.example.org"], turn_urls=turn_urls, turn_secret=secret, ttl_s=60, user_id="u", now=NOW
    )
    assert servers == [IceServer(urls=("stun:s.example.org",))]


def test_nothing_configured_gives_no_servers() -> None:
    assert ice_servers(stun_urls=[], turn_urls=[], turn_secret="", ttl_s=60, user_id="u", now=NOW) == []


@pytest.fixture
def tokens() -> AccessTokens:
    return AccessTokens(JWT)


def make_client(app: FastAPI) -> httpx.AsyncClient:
    install_error_handlers(app)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
async def client(tokens: AccessTokens) -> AsyncIterator[httpx.AsyncClient]:
    rtc = RtcSettings(
        stun_urls=["stun:stun.example.org:3478"],
        turn_urls=["turn:turn.example.org:3478"],
        turn_secret=SECRET,
        turn_ttl_s=600,
    )
    app = FastAPI()
    app.include_router(create_router(rtc, auth=Authenticate(tokens), clock=lambda: NOW))
    async with make_client(app) as client:
        yield client


async def test_route_answers_stun_and_turn_for_the_caller(client: httpx.AsyncClient, tokens: AccessTokens) -> None:
    user_id = f"user{uuid4().hex[:8]}"
    token = tokens.issue(Principal(user_id, "d1"), session_id="s1")
    response = await client.get("/v1/rtc/ice-servers", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    username = f"{int(NOW) + 600}:{user_id}"
    assert response.json() == {
        "ice_servers": [
            {"urls": ["stun:stun.example.org:3478"]},
            {
                "urls": ["turn:turn.example.org:3478"],
                "username": username,
                "credential": expected_credential(SECRET, username),
            },
        ],
        "ttl": 600,
    }


async def test_route_needs_a_bearer(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/rtc/ice-servers")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


async def test_build_rtc_without_turn_answers_only_stun(tokens: AccessTokens) -> None:
    settings = Settings(mode="dev", jwt=JWT, rtc=RtcSettings(stun_urls=["stun:s.example.org"]))
    app = FastAPI()
    app.include_router(build_rtc(settings, auth=Authenticate(tokens)))
    token = tokens.issue(Principal("u-build", "d"), session_id="s")
    async with make_client(app) as client:
        response = await client.get("/v1/rtc/ice-servers", headers={"Authorization": f"Bearer {token}"})
    assert response.json() == {"ice_servers": [{"urls": ["stun:s.example.org"]}], "ttl": 86400}
