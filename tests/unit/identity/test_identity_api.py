"""The identity router over HTTP (httpx ASGITransport), wired by build_identity on both storages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI
from identity_support import cheap_hasher

from services.common.db import create_all, create_engine, sessionmaker
from services.common.revocation import MemoryRevocations
from services.common.settings import JwtSettings, Settings
from services.common.tokens import AccessTokens
from services.common.web import Authenticate, install_error_handlers
from services.identity.main import Identity, build_identity

PASSWORD = "correct horse battery"


@pytest.fixture(params=["memory", "sql"])
async def identity(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Identity]:
    settings = Settings(mode="dev", jwt=JwtSettings(keys={"k": "api-test-secret-0123456789abcdef"}, active_kid="k"))
    tokens = AccessTokens(settings.jwt)
    auth = Authenticate(tokens)
    revocations = MemoryRevocations(tokens.revoked, ttl_s=tokens.ttl_s)
    if request.param == "memory":
        yield build_identity(
            settings, sessions=None, tokens=tokens, auth=auth, revocations=revocations, hasher=cheap_hasher()
        )
        return
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'api.db'}")
    await create_all(engine)
    try:
        yield build_identity(
            settings,
            sessions=sessionmaker(engine),
            tokens=tokens,
            auth=auth,
            revocations=revocations,
            hasher=cheap_hasher(),
        )
    finally:
        await engine.dispose()


@pytest.fixture
async def client(identity: Identity) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(identity.router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


def unique_name(stem: str = "api") -> str:
    return f"{stem}{uuid4().hex[:10]}"


async def signup(client: httpx.AsyncClient, username: str, **extra: str) -> dict[str, str]:
    response = await client.post("/v1/auth/register", json={"username": username, "password": PASSWORD, **extra})
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body


async def login(client: httpx.AsyncClient, username: str, **extra: str) -> dict[str, str]:
    response = await client.post("/v1/auth/login", json={"username": username, "password": PASSWORD, **extra})
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


def bearer(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def test_register_answers_201_with_the_wire_user(client: httpx.AsyncClient) -> None:
    name = unique_name()
    body = await signup(client, name, display_name="Alice")
    assert body == {"user_id": body["user_id"], "username": name, "display_name": "Alice"}


async def test_register_of_a_taken_username_answers_409_conflict(client: httpx.AsyncClient) -> None:
    name = unique_name()
    await signup(client, name)
    response = await client.post("/v1/auth/register", json={"username": name.upper(), "password": PASSWORD})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"username": "ab", "password": PASSWORD}, 400, "3-32 characters"),
        ({"username": "alice-ok", "password": "short"}, 400, "8-128 characters"),
        ({"username": "alice-ok", "password": "alice-ok"}, 400, "must not be the username"),
        ({"username": "alice-ok", "password": PASSWORD, "display_name": "x" * 65}, 400, "display_name"),
        ({"username": "alice-ok"}, 422, "password"),
        ({"username": 5, "password": PASSWORD}, 422, "username"),
    ],
)
async def test_invalid_registration_answers_invalid_request_naming_the_rule(
    client: httpx.AsyncClient, body: dict[str, object], status: int, words: str
) -> None:
    response = await client.post("/v1/auth/register", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert words in error["message"]


async def test_malformed_json_answers_invalid_request(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/auth/login", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


async def test_login_answers_tokens_and_the_device(client: httpx.AsyncClient) -> None:
    user = await signup(client, unique_name())
    tokens = await login(client, user["username"], device_id="web-1", device_name="Firefox")
    assert set(tokens) == {"access_token", "refresh_token", "expires_in", "user_id", "device_id"}
    assert tokens["user_id"] == user["user_id"]
    assert tokens["device_id"] == "web-1"
    assert tokens["expires_in"] == 900


async def test_bad_credentials_answer_401_without_telling_which_part_was_wrong(client: httpx.AsyncClient) -> None:
    user = await signup(client, unique_name())
    wrong = await client.post("/v1/auth/login", json={"username": user["username"], "password": "nope-nope"})
    unknown = await client.post("/v1/auth/login", json={"username": unique_name("x"), "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["code"] == "unauthorized"


async def test_refresh_rotates_and_reuse_revokes_the_session(client: httpx.AsyncClient) -> None:
    user = await signup(client, unique_name())
    first = await login(client, user["username"])
    response = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert response.status_code == 200
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert (second["user_id"], second["device_id"]) == (first["user_id"], first["device_id"])
    reused = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401
    current = await client.post("/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert current.status_code == 401


async def test_logout_answers_204_and_revokes_the_refresh_token(client: httpx.AsyncClient) -> None:
    user = await signup(client, unique_name())
    tokens = await login(client, user["username"])
    response = await client.post("/v1/auth/logout", headers=bearer(tokens))
    assert response.status_code == 204
    assert response.content == b""
    after = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert after.status_code == 401


async def test_after_logout_the_access_token_answers_401_unauthorized(client: httpx.AsyncClient) -> None:
    user = await signup(client, unique_name())
    tokens = await login(client, user["username"])
    assert (await client.get("/v1/users/me", headers=bearer(tokens))).status_code == 200
    assert (await client.post("/v1/auth/logout", headers=bearer(tokens))).status_code == 204

    after = await client.get("/v1/users/me", headers=bearer(tokens))

    assert after.status_code == 401
    assert after.headers["www-authenticate"] == "Bearer"
    assert after.json() == {"error": {"code": "unauthorized", "message": "access token revoked; log in again"}}


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/auth/logout"), ("GET", "/v1/users/me"), ("GET", "/v1/users/x"), ("GET", "/v1/users")],
)
async def test_routes_needing_a_bearer_answer_401_without_one(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


async def test_users_me_and_by_id_answer_the_wire_user(client: httpx.AsyncClient) -> None:
    user = await signup(client, unique_name(), display_name="Me")
    other = await signup(client, unique_name())
    tokens = await login(client, user["username"])
    me = await client.get("/v1/users/me", headers=bearer(tokens))
    assert me.status_code == 200
    assert me.json() == user
    by_id = await client.get(f"/v1/users/{other['user_id']}", headers=bearer(tokens))
    assert by_id.json() == other
    missing = await client.get("/v1/users/nobody", headers=bearer(tokens))
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_user_search_answers_matches_ordered_by_username(client: httpx.AsyncClient) -> None:
    stem = unique_name("srch")
    for suffix in ("b", "a", "c"):
        await signup(client, f"{stem}{suffix}")
    tokens = await login(client, f"{stem}a")
    response = await client.get("/v1/users", params={"prefix": stem.upper(), "limit": 2}, headers=bearer(tokens))
    assert response.status_code == 200
    assert [u["username"] for u in response.json()["users"]] == [f"{stem}a", f"{stem}b"]
    everyone = await client.get("/v1/users", params={"prefix": stem}, headers=bearer(tokens))
    assert len(everyone.json()["users"]) == 3


@pytest.mark.parametrize(("limit", "status"), [("0", 400), ("101", 400), ("many", 422)])
async def test_user_search_with_a_bad_limit_answers_invalid_request(
    client: httpx.AsyncClient, limit: str, status: int
) -> None:
    user = await signup(client, unique_name())
    tokens = await login(client, user["username"])
    response = await client.get("/v1/users", params={"limit": limit}, headers=bearer(tokens))
    assert response.status_code == status
    assert response.json()["error"]["code"] == "invalid_request"


async def test_directory_knows_users_registered_through_the_router(
    client: httpx.AsyncClient, identity: Identity
) -> None:
    user = await signup(client, unique_name())
    assert await identity.directory.missing([user["user_id"], "ghost"]) == {"ghost"}
    assert await identity.directory.profiles([user["user_id"]]) == {user["user_id"]: user}
