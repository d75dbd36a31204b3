"""Use cases of identity, run over both store adapters (memory and SQLite)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from argon2 import PasswordHasher
from identity_support import FakeClock, Stores, cheap_hasher

from services.common.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from services.common.revocation import MemoryRevocations
from services.common.tokens import AccessTokens, Principal
from services.identity import app
from services.identity.domain import User, refresh_token_hash
from services.identity.passwords import Passwords

REFRESH_TTL = timedelta(days=30)


def unique_name(stem: str = "user") -> str:
    return f"{stem}{uuid4().hex[:10]}"


class Identity:
    """The use cases bound to one set of dependencies, so tests read as scenarios."""

    def __init__(self, stores: Stores, passwords: Passwords, tokens: AccessTokens, clock: FakeClock) -> None:
        self.stores, self.passwords, self.tokens, self.clock = stores, passwords, tokens, clock
        self.revocations = MemoryRevocations(tokens.revoked, ttl_s=tokens.ttl_s)

    async def register(self, username: str, password: str = "correct horse", **kw: Any) -> User:
        cmd = app.Register(username=username, password=password, **kw)
        return await app.register(cmd, users=self.stores.users, passwords=self.passwords, clock=self.clock)

    async def login(self, username: str, password: str = "correct horse", **kw: Any) -> app.TokenPair:
        return await app.login(
            app.Login(username=username, password=password, **kw),
            users=self.stores.users,
            sessions=self.stores.sessions,
            revocations=self.revocations,
            passwords=self.passwords,
            tokens=self.tokens,
            refresh_ttl=REFRESH_TTL,
            clock=self.clock,
        )

    async def refresh(self, refresh_token: str) -> app.TokenPair:
        return await app.refresh(
            app.Refresh(refresh_token=refresh_token),
            sessions=self.stores.sessions,
            revocations=self.revocations,
            tokens=self.tokens,
            refresh_ttl=REFRESH_TTL,
            clock=self.clock,
        )

    async def logout(self, pair: app.TokenPair) -> None:
        principal = self.tokens.verify(pair.access_token)
        await app.logout(principal, sessions=self.stores.sessions, revocations=self.revocations)


@pytest.fixture
def identity(stores: Stores, passwords: Passwords, tokens: AccessTokens, clock: FakeClock) -> Identity:
    return Identity(stores, passwords, tokens, clock)


async def test_register_returns_user_with_display_name_defaulting_to_username(identity: Identity) -> None:
    name = unique_name()
    user = await identity.register(name)
    assert user.username == name
    assert user.display_name == name
    assert user.user_id
    assert user.password_hash.startswith("$argon2id$")
    assert user.created_at == identity.clock.now


async def test_register_lowercases_the_username(identity: Identity) -> None:
    name = unique_name()
    user = await identity.register(name.upper().replace("USER", "User"), display_name="Shown")
    assert user.username == name
    assert user.display_name == "Shown"


async def test_register_of_taken_username_in_other_case_conflicts(identity: Identity) -> None:
    name = unique_name()
    await identity.register(name)
    with pytest.raises(Conflict, match="already taken"):
        await identity.register(name.capitalize())


async def test_register_rejects_password_equal_to_username(identity: Identity) -> None:
    name = unique_name()
    with pytest.raises(InvalidRequest, match="must not be the username"):
        await identity.register(name, password=name)


async def test_login_returns_tokens_for_the_user_and_a_generated_device(identity: Identity) -> None:
    user = await identity.register(unique_name())
    pair = await identity.login(user.username.upper())
    assert pair.user_id == user.user_id
    assert pair.device_id
    assert pair.expires_in == identity.tokens.ttl_s
    principal = identity.tokens.verify(pair.access_token)
    assert (principal.user_id, principal.device_id) == (user.user_id, pair.device_id)
    assert pair.refresh_token != pair.access_token


async def test_login_keeps_the_given_device_id(identity: Identity) -> None:
    user = await identity.register(unique_name())
    pair = await identity.login(user.username, device_id="phone-1", device_name="Pixel")
    assert pair.device_id == "phone-1"


async def test_login_rejects_malformed_device_id(identity: Identity) -> None:
    user = await identity.register(unique_name())
    with pytest.raises(InvalidRequest, match="device_id"):
        await identity.login(user.username, device_id="bad device")


async def test_wrong_password_and_unknown_user_give_the_same_unauthorized(identity: Identity) -> None:
    user = await identity.register(unique_name())
    with pytest.raises(Unauthorized) as wrong_password:
        await identity.login(user.username, password="wrong password")
    with pytest.raises(Unauthorized) as unknown_user:
        await identity.login(unique_name("ghost"))
    with pytest.raises(Unauthorized) as impossible_name:
        await identity.login("no such name!")
    assert wrong_password.value.message == unknown_user.value.message == impossible_name.value.message


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verifications += 1
        return super().verify(hash, password)


async def test_unknown_user_still_costs_one_password_verification(
    stores: Stores, tokens: AccessTokens, clock: FakeClock
) -> None:
    hasher = CountingHasher()
    identity = Identity(stores, Passwords(hasher), tokens, clock)
    with pytest.raises(Unauthorized):
        await identity.login(unique_name("ghost"))
    assert hasher.verifications == 1


async def test_login_rehashes_a_password_made_with_old_parameters(
    stores: Stores, tokens: AccessTokens, clock: FakeClock
) -> None:
    old = Identity(stores, Passwords(cheap_hasher(time_cost=1)), tokens, clock)
    user = await old.register(unique_name())
    upgraded = Identity(stores, Passwords(cheap_hasher(time_cost=2)), tokens, clock)
    await upgraded.login(user.username)
    stored = await stores.users.get(user.user_id)
    assert stored is not None
    assert "t=2" in stored.password_hash
    await upgraded.login(user.username)  # the new hash still verifies


async def test_refresh_returns_a_new_pair_and_the_old_refresh_token_stops_working(identity: Identity) -> None:
    user = await identity.register(unique_name())
    first = await identity.login(user.username, device_id="d1")
    second = await identity.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    assert (second.user_id, second.device_id) == (user.user_id, "d1")
    principal = identity.tokens.verify(second.access_token)
    assert (principal.user_id, principal.device_id) == (user.user_id, "d1")
    third = await identity.refresh(second.refresh_token)
    assert third.refresh_token not in (first.refresh_token, second.refresh_token)


async def test_reusing_a_rotated_refresh_token_revokes_the_device_session(identity: Identity) -> None:
    user = await identity.register(unique_name())
    first = await identity.login(user.username)
    second = await identity.refresh(first.refresh_token)
    with pytest.raises(Unauthorized, match="already used"):
        await identity.refresh(first.refresh_token)
    with pytest.raises(Unauthorized, match="invalid refresh token"):
        await identity.refresh(second.refresh_token)


async def test_reuse_on_one_device_leaves_other_devices_logged_in(identity: Identity) -> None:
    user = await identity.register(unique_name())
    phone = await identity.login(user.username, device_id="phone")
    laptop = await identity.login(user.username, device_id="laptop")
    await identity.refresh(phone.refresh_token)
    with pytest.raises(Unauthorized):
        await identity.refresh(phone.refresh_token)
    assert (await identity.refresh(laptop.refresh_token)).device_id == "laptop"


async def test_unknown_or_empty_refresh_token_is_unauthorized(identity: Identity) -> None:
    for token in ("", "not-a-token", "x" * 10_000):
        with pytest.raises(Unauthorized, match="invalid refresh token"):
            await identity.refresh(token)


async def test_refresh_token_expires_after_its_ttl(identity: Identity) -> None:
    user = await identity.register(unique_name())
    pair = await identity.login(user.username)
    identity.clock.advance(REFRESH_TTL.total_seconds() - 1)
    pair = await identity.refresh(pair.refresh_token)  # renewed: a full ttl from now
    identity.clock.advance(REFRESH_TTL.total_seconds())
    with pytest.raises(Unauthorized, match="expired"):
        await identity.refresh(pair.refresh_token)
    with pytest.raises(Unauthorized, match="invalid refresh token"):
        await identity.refresh(pair.refresh_token)  # the expired session is gone


async def test_login_on_the_same_device_replaces_its_session(identity: Identity) -> None:
    user = await identity.register(unique_name())
    old = await identity.login(user.username, device_id="tablet")
    new = await identity.login(user.username, device_id="tablet")
    with pytest.raises(Unauthorized, match="invalid refresh token"):
        await identity.refresh(old.refresh_token)
    assert (await identity.refresh(new.refresh_token)).device_id == "tablet"


async def test_login_forgets_the_users_expired_sessions(identity: Identity) -> None:
    user = await identity.register(unique_name())
    stale = await identity.login(user.username, device_id="old-phone")
    identity.clock.advance(REFRESH_TTL.total_seconds() + 1)
    await identity.login(user.username, device_id="new-phone")
    assert await identity.stores.sessions.by_refresh_hash(refresh_token_hash(stale.refresh_token)) is None


async def test_logout_revokes_only_that_devices_refresh_token(identity: Identity) -> None:
    user = await identity.register(unique_name())
    phone = await identity.login(user.username, device_id="phone")
    laptop = await identity.login(user.username, device_id="laptop")
    await identity.logout(phone)
    with pytest.raises(Unauthorized):
        await identity.refresh(phone.refresh_token)
    await identity.refresh(laptop.refresh_token)
    await app.logout(
        Principal(user.user_id, "phone"), sessions=identity.stores.sessions, revocations=identity.revocations
    )


async def test_logout_refuses_the_devices_access_token_at_once_and_only_that_one(identity: Identity) -> None:
    user = await identity.register(unique_name())
    phone = await identity.login(user.username, device_id="phone")
    laptop = await identity.login(user.username, device_id="laptop")
    await identity.logout(phone)
    with pytest.raises(Unauthorized, match="revoked"):
        identity.tokens.verify(phone.access_token)
    assert identity.tokens.verify(laptop.access_token).device_id == "laptop"


async def test_a_new_login_of_the_device_refuses_its_previous_access_token(identity: Identity) -> None:
    user = await identity.register(unique_name())
    old = await identity.login(user.username, device_id="tablet")
    refreshed = await identity.refresh(old.refresh_token)  # same session, newer token: revoked with it
    new = await identity.login(user.username, device_id="tablet")
    for stale in (old, refreshed):
        with pytest.raises(Unauthorized, match="revoked"):
            identity.tokens.verify(stale.access_token)
    assert identity.tokens.verify(new.access_token).device_id == "tablet"


async def test_refresh_token_reuse_refuses_the_access_tokens_of_the_whole_session(identity: Identity) -> None:
    user = await identity.register(unique_name())
    first = await identity.login(user.username, device_id="phone")
    second = await identity.refresh(first.refresh_token)
    other = await identity.login(user.username, device_id="laptop")
    with pytest.raises(Unauthorized, match="already used"):
        await identity.refresh(first.refresh_token)
    for stale in (first, second):
        with pytest.raises(Unauthorized, match="revoked"):
            identity.tokens.verify(stale.access_token)
    assert identity.tokens.verify(other.access_token).device_id == "laptop"


async def test_get_user_of_unknown_id_is_not_found(identity: Identity) -> None:
    with pytest.raises(NotFound):
        await app.get_user("nope", users=identity.stores.users)


async def test_search_users_by_prefix_orders_by_username_and_limits(identity: Identity) -> None:
    stem = unique_name("s")
    for suffix in ("c", "a", "b", "a_", "a.x"):
        await identity.register(f"{stem}{suffix}")
    await identity.register(unique_name("other"))
    found = await app.search_users(app.SearchUsers(prefix=stem.upper(), limit=100), users=identity.stores.users)
    assert [u.username for u in found] == [f"{stem}{s}" for s in ("a", "a.x", "a_", "b", "c")]
    first_two = await app.search_users(app.SearchUsers(prefix=stem, limit=2), users=identity.stores.users)
    assert [u.username for u in first_two] == [f"{stem}a", f"{stem}a.x"]


async def test_search_treats_underscore_in_the_prefix_literally(identity: Identity) -> None:
    stem = unique_name("u")
    await identity.register(f"{stem}_x")
    await identity.register(f"{stem}yx")
    found = await app.search_users(app.SearchUsers(prefix=f"{stem}_"), users=identity.stores.users)
    assert [u.username for u in found] == [f"{stem}_x"]


@pytest.mark.parametrize("limit", [0, 101, -1])
async def test_search_limit_outside_1_to_100_is_invalid(identity: Identity, limit: int) -> None:
    with pytest.raises(InvalidRequest, match="between 1 and 100"):
        await app.search_users(app.SearchUsers(prefix="a", limit=limit), users=identity.stores.users)


async def test_directory_reports_missing_ids_and_public_profiles(identity: Identity) -> None:
    alice = await identity.register(unique_name("alice"), display_name="Alice")
    bob = await identity.register(unique_name("bob"))
    directory = app.UserDirectory(identity.stores.users)
    assert await directory.missing([alice.user_id, bob.user_id, "ghost"]) == {"ghost"}
    assert await directory.missing([]) == set()
    assert await directory.profiles([alice.user_id, "ghost"]) == {
        alice.user_id: {"user_id": alice.user_id, "username": alice.username, "display_name": "Alice"}
    }
    assert await directory.profiles([]) == {}
