"""Contract of the identity stores: the same behaviour from the memory and the SQL adapters."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from identity_support import Stores

from services.common.errors import Conflict, NotFound
from services.common.ids import new_id
from services.identity.domain import Session, User

NOW = datetime(2026, 3, 1, 8, 30, 15, 123000, tzinfo=UTC)


def make_user(username: str | None = None) -> User:
    return User(
        user_id=new_id(),
        username=username or f"u{uuid4().hex[:12]}",
        display_name="Display Ünïcode",
        password_hash="$argon2id$v=19$m=1024,t=1,p=1$salt$hash",
        created_at=NOW,
    )


def make_session(user: User, device_id: str = "dev-1", *, expires_at: datetime | None = None) -> Session:
    return Session(
        session_id=new_id(),
        user_id=user.user_id,
        device_id=device_id,
        device_name="Pixel",
        refresh_hash=uuid4().hex + uuid4().hex,
        refresh_expires_at=expires_at or NOW + timedelta(days=1),
        created_at=NOW,
    )


async def test_added_user_reads_back_equal_by_id_and_username(stores: Stores) -> None:
    user = make_user()
    await stores.users.add(user)
    assert await stores.users.get(user.user_id) == user
    assert await stores.users.by_username(user.username) == user
    assert await stores.users.get("missing") is None
    assert await stores.users.by_username("missing") is None


async def test_adding_a_taken_username_conflicts(stores: Stores) -> None:
    user = make_user()
    await stores.users.add(user)
    with pytest.raises(Conflict):
        await stores.users.add(make_user(user.username))


async def test_get_many_returns_only_existing_users_across_chunks(stores: Stores) -> None:
    users = [make_user() for _ in range(3)]
    for user in users:
        await stores.users.add(user)
    wanted = [users[0].user_id, users[2].user_id, users[0].user_id] + [f"ghost{i}" for i in range(1200)]
    found = await stores.users.get_many(wanted)
    assert sorted(u.user_id for u in found) == sorted([users[0].user_id, users[2].user_id])
    assert await stores.users.get_many([]) == []


async def test_search_matches_the_prefix_literally_in_byte_order(stores: Stores) -> None:
    stem = f"p{uuid4().hex[:8]}"
    names = [f"{stem}{suffix}" for suffix in ("b", "a-z", "a.z", "a_z", "az", "a%z")]
    for name in names:
        await stores.users.add(make_user(name))
    found = await stores.users.search(stem, limit=100)
    assert [u.username for u in found] == sorted(names)
    assert [u.username for u in await stores.users.search(f"{stem}a%", limit=100)] == [f"{stem}a%z"]
    assert [u.username for u in await stores.users.search(f"{stem}a_", limit=100)] == [f"{stem}a_z"]
    assert len(await stores.users.search(stem, limit=2)) == 2


async def test_search_with_empty_prefix_lists_everyone_in_order(stores: Stores) -> None:
    for name in ("zed", "amy", "kim"):
        await stores.users.add(make_user(f"{name}{uuid4().hex[:6]}"))
    found = [u.username for u in await stores.users.search("", limit=100)]
    assert found == sorted(found)
    assert len(found) == 3


async def test_set_password_hash_replaces_it_and_unknown_user_is_not_found(stores: Stores) -> None:
    user = make_user()
    await stores.users.add(user)
    await stores.users.set_password_hash(user.user_id, "new-hash")
    assert await stores.users.get(user.user_id) == replace(user, password_hash="new-hash")
    with pytest.raises(NotFound):
        await stores.users.set_password_hash("missing", "x")


async def test_session_reads_back_by_refresh_hash_with_aware_utc_times(stores: Stores) -> None:
    user = make_user()
    await stores.users.add(user)
    session = make_session(user)
    await stores.sessions.put(session)
    found = await stores.sessions.by_refresh_hash(session.refresh_hash)
    assert found == session
    assert found.refresh_expires_at.tzinfo is not None
    assert await stores.sessions.by_refresh_hash("unknown") is None


async def test_putting_a_session_replaces_the_same_devices_session_only(stores: Stores) -> None:
    user = make_user()
    await stores.users.add(user)
    old = make_session(user, "phone")
    other = make_session(user, "laptop")
    assert await stores.sessions.put(old) is None
    assert await stores.sessions.put(other) is None
    new = make_session(user, "phone")
    assert await stores.sessions.put(new) == old.session_id  # so that its access tokens can be revoked
    assert await stores.sessions.by_refresh_hash(old.refresh_hash) is None
    assert await stores.sessions.by_refresh_hash(new.refresh_hash) == new
    assert await stores.sessions.by_refresh_hash(other.refresh_hash) == other


async def test_rotate_swaps_the_hash_and_remembers_the_old_one(stores: Stores) -> None:
    user = make_user()
    await stores.users.add(user)
    session = make_session(user)
    await stores.sessions.put(session)
    later = NOW + timedelta(days=2)
    assert await stores.sessions.rotate(
        session.session_id, old_hash=session.refresh_hash, new_hash="h2", expires_at=later, now=NOW
    )
    assert await stores.sessions.by_refresh_hash("h2") == replace(session, refresh_hash="h2", refresh_expires_at=later)
    assert await stores.sessions.by_refresh_hash(session.refresh_hash) is None
    assert await stores.sessions.rotated_from(session.refresh_hash) == session.session_id
    assert await stores.sessions.rotated_from("h2") is None


async def test_rotate_with_a_stale_old_hash_changes_nothing(stores: Stores) -> None:
    user = make_user()
    await stores.users.add(user)
    session = make_session(user)
    await stores.sessions.put(session)
    swapped = await stores.sessions.rotate(session.session_id, old_hash="stale", new_hash="h2", expires_at=NOW, now=NOW)
    assert not swapped
    assert not await stores.sessions.rotate("missing", old_hash="x", new_hash="h3", expires_at=NOW, now=NOW)
    assert await stores.sessions.by_refresh_hash(session.refresh_hash) == session
    assert await stores.sessions.by_refresh_hash("h2") is None


async def test_rotated_hashes_are_forgotten_once_they_would_have_expired(stores: Stores) -> None:
    user = make_user()
    await stores.users.add(user)
    session = make_session(user, expires_at=NOW + timedelta(hours=1))
    await stores.sessions.put(session)
    await stores.sessions.rotate(
        session.session_id, old_hash=session.refresh_hash, new_hash="h2", expires_at=NOW + timedelta(days=1), now=NOW
    )
    await stores.sessions.rotate(
        session.session_id,
        old_hash="h2",
        new_hash="h3",
        expires_at=NOW + timedelta(days=2),
        now=NOW + timedelta(hours=2),
    )
    assert await stores.sessions.rotated_from(session.refresh_hash) is None
    assert await stores.sessions.rotated_from("h2") == session.session_id


async def test_deleting_a_session_forgets_its_rotated_tokens(stores: Stores) -> None:
    user = make_user()
    await stores.users.add(user)
    session = make_session(user)
    await stores.sessions.put(session)
    await stores.sessions.rotate(
        session.session_id, old_hash=session.refresh_hash, new_hash="h2", expires_at=NOW, now=NOW
    )
    await stores.sessions.delete(session.session_id)
    assert await stores.sessions.by_refresh_hash("h2") is None
    assert await stores.sessions.rotated_from(session.refresh_hash) is None
    await stores.sessions.delete(session.session_id)  # already gone: no error


async def test_delete_device_revokes_only_that_device(stores: Stores) -> None:
    user = make_user()
    await stores.users.add(user)
    phone, laptop = make_session(user, "phone"), make_session(user, "laptop")
    await stores.sessions.put(phone)
    await stores.sessions.put(laptop)
    await stores.sessions.delete_device(user.user_id, "phone")
    await stores.sessions.delete_device(user.user_id, "never-logged-in")
    assert await stores.sessions.by_refresh_hash(phone.refresh_hash) is None
    assert await stores.sessions.by_refresh_hash(laptop.refresh_hash) == laptop


async def test_delete_expired_drops_only_that_users_expired_sessions(stores: Stores) -> None:
    alice, bob = make_user(), make_user()
    await stores.users.add(alice)
    await stores.users.add(bob)
    expired = make_session(alice, "old", expires_at=NOW)
    live = make_session(alice, "new", expires_at=NOW + timedelta(seconds=1))
    bobs_expired = make_session(bob, "old", expires_at=NOW)
    for session in (expired, live, bobs_expired):
        await stores.sessions.put(session)
    await stores.sessions.rotate(
        expired.session_id, old_hash=expired.refresh_hash, new_hash="h-exp", expires_at=NOW, now=NOW
    )
    await stores.sessions.delete_expired(alice.user_id, now=NOW)
    assert await stores.sessions.by_refresh_hash("h-exp") is None
    assert await stores.sessions.rotated_from(expired.refresh_hash) is None
    assert await stores.sessions.by_refresh_hash(live.refresh_hash) == live
    assert await stores.sessions.by_refresh_hash(bobs_expired.refresh_hash) == bobs_expired
