"""The secrets a process may start with: real ones outside dev mode, the data directory's own in it."""

from __future__ import annotations

import logging
import secrets
import stat
from pathlib import Path

import pytest

from services.common.hardening import SECRET_FILE, harden
from services.common.settings import DEV_SECRET, JwtSettings, Settings


def real() -> str:
    return secrets.token_hex(32)


def prod(**secrets_: object) -> Settings:
    values: dict[str, object] = {
        "secret": real(),
        "internal_token": real(),
        "jwt": JwtSettings(keys={"k1": real()}, active_kid="k1"),
    }
    return Settings(mode="prod", **{**values, **secrets_})  # type: ignore[arg-type]


def test_prod_starts_with_real_secrets_as_they_are() -> None:
    settings = prod()
    assert harden(settings) is settings


@pytest.mark.parametrize(
    ("weak", "named", "why"),
    [
        ({"secret": DEV_SECRET}, "COURIER_SECRET", "the built-in development secret"),
        ({"internal_token": "x"}, "COURIER_INTERNAL_TOKEN", "is 1 characters long"),
        (
            {"jwt": JwtSettings(keys={"k1": real(), "old": "short-key"}, active_kid="k1")},
            "COURIER_JWT__KEYS key 'old'",
            "is 9",
        ),
        ({"secret": "ab" * 20}, "COURIER_SECRET", "fewer than 8 different characters"),
    ],
)
def test_prod_refuses_a_weak_secret_naming_the_setting_but_not_the_value(
    weak: dict[str, object], named: str, why: str
) -> None:
    with pytest.raises(SystemExit) as refused:
        harden(prod(**weak))
    message = str(refused.value)
    assert named in message
    assert why in message
    assert "at least 32 random characters" in message
    for value in ("short-key", "ab" * 20):
        assert value not in message


def test_prod_names_every_weak_setting_at_once() -> None:
    with pytest.raises(SystemExit) as refused:
        harden(Settings(mode="prod"))  # every secret left at the placeholder
    for named in ("COURIER_SECRET", "COURIER_INTERNAL_TOKEN", "COURIER_JWT__KEYS key 'dev'"):
        assert named in str(refused.value)


def test_dev_replaces_the_placeholders_with_secrets_of_the_data_directory(tmp_path: Path) -> None:
    first = harden(Settings(mode="dev", data_dir=tmp_path))
    again = harden(Settings(mode="dev", data_dir=tmp_path))
    elsewhere = harden(Settings(mode="dev", data_dir=tmp_path / "other"))

    values = [first.secret, first.internal_token, first.jwt.keys["dev"]]
    assert DEV_SECRET not in values
    assert len(set(values)) == 3  # one per purpose
    assert all(len(value) >= 32 for value in values)
    assert [again.secret, again.internal_token, again.jwt.keys["dev"]] == values  # kept across restarts
    assert elsewhere.jwt.keys["dev"] != first.jwt.keys["dev"]
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600


def test_dev_keeps_secrets_set_explicitly(tmp_path: Path) -> None:
    jwt = JwtSettings(keys={"mine": "my-own-dev-key", "dev": DEV_SECRET}, active_kid="mine")
    settings = harden(Settings(mode="dev", data_dir=tmp_path, secret="my-secret", jwt=jwt))

    assert (settings.secret, settings.jwt.keys["mine"]) == ("my-secret", "my-own-dev-key")
    assert DEV_SECRET not in (settings.internal_token, settings.jwt.keys["dev"])


def test_dev_with_every_secret_set_needs_no_secret_file(tmp_path: Path) -> None:
    jwt = JwtSettings(keys={"k": "key"}, active_kid="k")
    harden(Settings(mode="dev", data_dir=tmp_path / "data", secret="s", internal_token="t", jwt=jwt))
    assert not (tmp_path / "data" / SECRET_FILE).exists()


def test_dev_makes_a_secret_file_readable_by_others_private_again(tmp_path: Path) -> None:
    first = harden(Settings(mode="dev", data_dir=tmp_path))
    (tmp_path / SECRET_FILE).chmod(0o644)
    assert harden(Settings(mode="dev", data_dir=tmp_path)).jwt.keys == first.jwt.keys
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "chat.example.org"])
def test_dev_warns_when_it_listens_beyond_loopback(tmp_path: Path, caplog: pytest.LogCaptureFixture, host: str) -> None:
    with caplog.at_level(logging.WARNING, logger="courier.hardening"):
        harden(Settings(mode="dev", data_dir=tmp_path, host=host))
    assert any("beyond loopback" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_dev_on_loopback_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture, host: str) -> None:
    with caplog.at_level(logging.WARNING, logger="courier.hardening"):
        harden(Settings(mode="dev", data_dir=tmp_path, host=host))
    assert not caplog.records
