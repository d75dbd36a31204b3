"""``courier dev`` signs with a secret of its own data directory, not with the published placeholder."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import jwt

from services.common.settings import DEV_SECRET
from tests.unit.allinone.dev_app import dev_settings, running


async def test_a_token_forged_with_the_published_dev_secret_is_refused(tmp_path: Path) -> None:
    async with running(dev_settings(tmp_path)) as dev:
        tokens = await dev.login(await dev.account())
        now = int(time.time())
        claims = {"iss": "courier", "sub": tokens["user_id"], "did": "evil", "sid": "s", "iat": now, "exp": now + 900}
        forged = jwt.encode(claims, DEV_SECRET, algorithm="HS256", headers={"kid": "dev"})

        answer = await dev.me(forged)

        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "unauthorized"
        assert (await dev.me(tokens["access_token"])).status_code == 200


async def test_tokens_survive_a_restart_on_the_same_data_directory_only(tmp_path: Path) -> None:
    async with running(dev_settings(tmp_path / "a")) as dev:
        tokens = await dev.login(await dev.account())

    async with running(dev_settings(tmp_path / "a")) as dev:
        assert (await dev.me(tokens["access_token"])).status_code == 200
    async with running(dev_settings(tmp_path / "b")) as dev:
        assert (await dev.me(tokens["access_token"])).status_code == 401

    assert stat.S_IMODE((tmp_path / "a" / "secret").stat().st_mode) == 0o600
