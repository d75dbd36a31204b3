"""The argon2 cost of password hashes comes from COURIER_PASSWORDS__* and is checked up front."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.common.settings import PasswordSettings, Settings
from services.identity.passwords import Passwords, password_hasher


async def test_hashes_are_made_and_verified_with_the_configured_argon2_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURIER_PASSWORDS__TIME_COST", "1")
    monkeypatch.setenv("COURIER_PASSWORDS__MEMORY_KIB", "1024")
    monkeypatch.setenv("COURIER_PASSWORDS__PARALLELISM", "1")
    passwords = Passwords(password_hasher(Settings().passwords))

    stored = await passwords.hash("correct horse 1")

    assert stored.startswith("$argon2id$") and "m=1024,t=1,p=1" in stored
    assert await passwords.verify(stored, "correct horse 1")
    assert not await passwords.verify(stored, "correct horse 2")


def test_a_hash_of_the_default_cost_is_upgraded_when_the_cost_changes() -> None:
    old = password_hasher(PasswordSettings(time_cost=1, memory_kib=1024, parallelism=1)).hash("pw")

    assert Passwords(password_hasher(PasswordSettings(time_cost=2, memory_kib=1024, parallelism=1))).needs_rehash(old)
    assert not Passwords(password_hasher(PasswordSettings(time_cost=1, memory_kib=1024, parallelism=1))).needs_rehash(
        old
    )


def test_a_memory_cost_below_eight_kib_per_lane_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 8 x parallelism"):
        PasswordSettings(memory_kib=16, parallelism=4)
