"""A session that ends (logout, a new login of the device) loses its access token on every service and its
socket within seconds, in ``courier dev`` and in the distributed stack."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import jwt
import websockets

from services.common.settings import DEV_SECRET
from services.delivery.revocation import CLOSE_REVOKED
from tests.support.client import DEADLINE_S, Api, Device, User
from tests.support.server import RunningServer


def paths(user: User, conversation_id: str) -> list[str]:
    """One authenticated read per process that verifies tokens in the distributed mode."""
    return [
        "/v1/users/me",  # identity
        "/v1/conversations",  # conversation
        f"/v1/conversations/{conversation_id}/messages",  # message
        f"/v1/presence?user_ids={user.user_id}",  # presence
        "/v1/files/01a2199d4f334705ed0b422ce5/info",  # file (refused before it is looked up)
        "/v1/rtc/ice-servers",  # the gateway itself
    ]


async def refused_everywhere(api: Api, user: User, conversation_id: str) -> None:
    """Wait until every service answers the user's token with 401 (in the error shape), then stays so."""

    async def refused(path: str) -> bool:
        answer = await api.http.get(path, headers=user.headers)
        if answer.status_code != 401:
            return False
        assert answer.json()["error"] == {"code": "unauthorized", "message": "access token revoked; log in again"}
        return True

    async def all_refused() -> None:
        while not all([await refused(path) for path in paths(user, conversation_id)]):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(all_refused(), DEADLINE_S)


async def served_everywhere(api: Api, user: User, conversation_id: str) -> None:
    for path in paths(user, conversation_id):
        answer = await api.http.get(path, headers=user.headers)
        assert answer.status_code in (200, 404), (path, answer.text)  # the made-up file id is 404


async def attached(device: Device) -> None:
    assert (await device.request({"type": "ping"}, answer="pong"))["type"] == "pong"


async def test_logout_ends_the_devices_token_everywhere_and_closes_its_socket_with_4003(
    server: RunningServer, api: Api
) -> None:
    phone_user = await api.register("logout", device_id="phone")
    laptop_user = await api.device(phone_user, "laptop")
    conversation_id = await api.group(phone_user, title="revocation")
    await served_everywhere(api, phone_user, conversation_id)
    phone, laptop = await Device.connect(server.ws_url, phone_user), await Device.connect(server.ws_url, laptop_user)
    try:
        await attached(phone)
        await attached(laptop)

        answer = await api.http.post("/v1/auth/logout", headers=phone_user.headers)
        assert answer.status_code == 204

        await asyncio.wait_for(phone.closed.wait(), DEADLINE_S)
        assert phone.close_code == 4003
        await refused_everywhere(api, phone_user, conversation_id)
        await served_everywhere(api, laptop_user, conversation_id)
        await attached(laptop)  # the user's other device carries on
    finally:
        await phone.close()
        await laptop.close()


async def test_a_new_login_of_the_device_closes_the_old_socket_and_refuses_the_old_token(
    server: RunningServer, api: Api
) -> None:
    old_user = await api.register("relogin", device_id="tablet")
    conversation_id = await api.group(old_user, title="relogin")
    old = await Device.connect(server.ws_url, old_user)
    try:
        await attached(old)

        new_user = await api.device(old_user, "tablet")

        await asyncio.wait_for(old.closed.wait(), DEADLINE_S)
        assert old.close_code == 4003
        await refused_everywhere(api, old_user, conversation_id)
        await served_everywhere(api, new_user, conversation_id)
    finally:
        await old.close()


async def refused_upgrade(server: RunningServer, user: User) -> tuple[dict[str, Any], int | None]:
    """Open sockets with the user's token until one is refused (distributed: until the node has heard of
    the revocation too); the error frame and the close code of that one."""

    async def attempt() -> tuple[dict[str, Any], int | None] | None:
        device = await Device.connect(server.ws_url, user)
        try:
            with contextlib.suppress(websockets.ConnectionClosed):
                await device.send({"type": "ping", "id": "p"})
            try:
                frame = await device.wait_for(lambda f: f["type"] in ("error", "pong"))
            except AssertionError:
                if device.close_code == CLOSE_REVOKED:
                    return None  # opened before this node heard of the revocation, then closed for it
                raise
            if frame["type"] == "pong":
                return None
            await asyncio.wait_for(device.closed.wait(), DEADLINE_S)
            return frame, device.close_code
        finally:
            await device.close()

    async def attempts() -> tuple[dict[str, Any], int | None]:
        while (refused := await attempt()) is None:
            await asyncio.sleep(0.05)
        return refused

    return await asyncio.wait_for(attempts(), DEADLINE_S)


async def test_a_revoked_token_cannot_open_a_socket(server: RunningServer, api: Api) -> None:
    user = await api.register("noreopen", device_id="phone")
    assert (await api.http.post("/v1/auth/logout", headers=user.headers)).status_code == 204

    error, code = await refused_upgrade(server, user)

    assert (error["code"], error["message"]) == ("unauthorized", "access token revoked; log in again")
    assert code == 4001


async def test_a_token_forged_with_the_published_dev_secret_is_refused(server: RunningServer) -> None:
    now = int(time.time())
    claims = {"iss": "courier", "sub": "someone", "did": "d", "sid": "s", "iat": now, "exp": now + 600}
    forged = jwt.encode(claims, DEV_SECRET, algorithm="HS256", headers={"kid": "dev"})
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        answer = await http.get("/v1/conversations", headers={"Authorization": f"Bearer {forged}"})
    assert answer.status_code == 401
