"""In ``courier dev``, a session that ends (logout, a new login of the device, refresh-token reuse) loses
its access token and its socket at once, not when the token would have expired."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.unit.allinone.dev_app import Closed, DevApp, dev_settings, running

REVOKED = {"error": {"code": "unauthorized", "message": "access token revoked; log in again"}}


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def assert_refused(dev: DevApp, tokens: dict[str, Any]) -> None:
    answer = await dev.me(tokens["access_token"])
    assert answer.status_code == 401
    assert answer.json() == REVOKED


async def test_after_logout_the_token_gets_401_and_the_socket_closes_with_4003(tmp_path: Path) -> None:
    async with running(dev_settings(tmp_path)) as dev:
        name = await dev.account()
        phone, laptop = await dev.login(name, "phone"), await dev.login(name, "laptop")
        phone_ws, laptop_ws = dev.connect(phone["access_token"]), dev.connect(laptop["access_token"])
        await phone_ws.ping()
        await laptop_ws.ping()

        assert (await dev.http.post("/v1/auth/logout", headers=bearer(phone))).status_code == 204

        assert await phone_ws.closed() == Closed(4003, "session revoked")
        await assert_refused(dev, phone)
        again = dev.connect(phone["access_token"])
        assert await again.receive() == {"type": "error", "ref": None, **REVOKED["error"]}
        assert await again.closed() == Closed(4001, "unauthorized")
        assert (await dev.me(laptop["access_token"])).status_code == 200
        await laptop_ws.ping()  # the user's other device is untouched
        await laptop_ws.end()


async def test_a_new_login_of_the_device_ends_its_previous_token_and_socket(tmp_path: Path) -> None:
    async with running(dev_settings(tmp_path)) as dev:
        name = await dev.account()
        old = await dev.login(name, "tablet")
        old_ws = dev.connect(old["access_token"])
        await old_ws.ping()

        new = await dev.login(name, "tablet")  # someone logged in on this device again (no socket yet)

        assert await old_ws.closed() == Closed(4003, "session revoked")
        await assert_refused(dev, old)
        assert (await dev.me(new["access_token"])).status_code == 200


async def test_refresh_token_reuse_ends_the_sessions_tokens_and_socket(tmp_path: Path) -> None:
    async with running(dev_settings(tmp_path)) as dev:
        name = await dev.account()
        first = await dev.login(name)
        rotated = await dev.http.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        second = rotated.json()
        ws = dev.connect(second["access_token"])
        await ws.ping()

        reused = await dev.http.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})

        assert reused.status_code == 401
        assert await ws.closed() == Closed(4003, "session revoked")
        for stale in (first, second):
            await assert_refused(dev, stale)
