"""The PresenceStore contract over the ``store`` fixture: the in-memory store here (conftest.py), and
tests/integration/test_redis_presence.py runs these same functions over Redis."""

from __future__ import annotations

from services.presence.domain import PresenceStatus
from services.presence.ports import PresenceStore
from tests.unit.presence.presence_support import T0, uid

TTL = 60.0


async def test_first_device_brings_the_user_online_and_the_second_changes_nothing(store: PresenceStore) -> None:
    u = uid("u")

    first = await store.set_device(u, "d1", now=T0, expires_at=T0 + TTL)
    second = await store.set_device(u, "d2", now=T0 + 1, expires_at=T0 + 1 + TTL)

    assert first == PresenceStatus(u, online=True, last_seen=T0)
    assert second is None
    assert await store.status([u], now=T0 + 1) == [PresenceStatus(u, online=True, last_seen=T0 + 1)]


async def test_last_device_leaving_takes_the_user_offline(store: PresenceStore) -> None:
    u = uid("u")
    await store.set_device(u, "d1", now=T0, expires_at=T0 + TTL)
    await store.set_device(u, "d2", now=T0, expires_at=T0 + TTL)

    one_left = await store.remove_device(u, "d1", now=T0 + 5)
    none_left = await store.remove_device(u, "d2", now=T0 + 7)

    assert one_left is None
    assert none_left == PresenceStatus(u, online=False, last_seen=T0 + 7)


async def test_removing_an_unknown_device_changes_nothing(store: PresenceStore) -> None:
    u = uid("u")

    assert await store.remove_device(u, "ghost", now=T0) is None
    assert await store.status([u], now=T0) == [PresenceStatus(u, online=False, last_seen=None)]


async def test_sweep_takes_offline_the_users_whose_devices_all_expired(store: PresenceStore) -> None:
    quiet, chatty = uid("quiet"), uid("chatty")
    await store.set_device(quiet, "d1", now=T0, expires_at=T0 + TTL)
    await store.set_device(chatty, "d1", now=T0, expires_at=T0 + TTL)
    await store.set_device(chatty, "d1", now=T0 + 30, expires_at=T0 + 30 + TTL)

    early = await store.sweep(T0 + TTL - 0.001)
    due = await store.sweep(T0 + TTL)
    again = await store.sweep(T0 + TTL)

    assert early == []
    assert due == [PresenceStatus(quiet, online=False, last_seen=T0)]
    assert again == []
    assert await store.status([chatty], now=T0 + TTL) == [PresenceStatus(chatty, online=True, last_seen=T0 + 30)]


async def test_sweep_keeps_users_with_a_device_still_alive(store: PresenceStore) -> None:
    u = uid("u")
    await store.set_device(u, "old", now=T0, expires_at=T0 + TTL)
    await store.set_device(u, "new", now=T0 + 50, expires_at=T0 + 50 + TTL)

    assert await store.sweep(T0 + TTL + 1) == []
    assert (await store.status([u], now=T0 + TTL + 1))[0].online is True


async def test_status_counts_expired_devices_as_gone_before_any_sweep(store: PresenceStore) -> None:
    u = uid("u")
    await store.set_device(u, "d1", now=T0, expires_at=T0 + TTL)

    assert await store.status([u], now=T0 + TTL) == [PresenceStatus(u, online=False, last_seen=T0)]


async def test_device_back_after_expiry_brings_the_user_online_again(store: PresenceStore) -> None:
    u = uid("u")
    await store.set_device(u, "d1", now=T0, expires_at=T0 + TTL)
    assert [s.online for s in await store.sweep(T0 + TTL)] == [False]

    back = await store.set_device(u, "d1", now=T0 + 100, expires_at=T0 + 100 + TTL)

    assert back == PresenceStatus(u, online=True, last_seen=T0 + 100)


async def test_expired_but_unswept_device_refreshed_in_time_reports_no_change(store: PresenceStore) -> None:
    u = uid("u")
    await store.set_device(u, "d1", now=T0, expires_at=T0 + TTL)

    late = await store.set_device(u, "d1", now=T0 + TTL + 1, expires_at=T0 + 2 * TTL + 1)

    assert late is None  # nobody was told it went offline, so nobody needs telling it is back
    assert await store.sweep(T0 + TTL + 2) == []


async def test_disconnect_of_an_already_expired_device_keeps_its_last_heartbeat(store: PresenceStore) -> None:
    u = uid("u")
    await store.set_device(u, "d1", now=T0, expires_at=T0 + TTL)

    change = await store.remove_device(u, "d1", now=T0 + TTL + 10)

    assert change == PresenceStatus(u, online=False, last_seen=T0)


async def test_status_keeps_the_order_asked(store: PresenceStore) -> None:
    a, b = uid("a"), uid("b")
    await store.set_device(b, "d1", now=T0, expires_at=T0 + TTL)

    assert [(s.user_id, s.online) for s in await store.status([b, a], now=T0)] == [(b, True), (a, False)]


async def test_subscriptions_are_kept_per_watched_user_until_unsubscribed(store: PresenceStore) -> None:
    s1, s2, a, b = uid("s1"), uid("s2"), uid("a"), uid("b")

    assert await store.subscribe(s1, [a, b], limit=10) is True
    assert await store.subscribe(s2, [a], limit=10) is True
    assert (await store.subscribers(a), await store.subscribers(b)) == ({s1, s2}, {s1})

    await store.unsubscribe_all(s1)

    assert (await store.subscribers(a), await store.subscribers(b)) == ({s2}, set())


async def test_subscribing_past_the_limit_changes_nothing(store: PresenceStore) -> None:
    s, a, b, c = uid("s"), uid("a"), uid("b"), uid("c")
    assert await store.subscribe(s, [a, b], limit=2) is True

    assert await store.subscribe(s, [a, b], limit=2) is True  # already watched: no growth
    assert await store.subscribe(s, [c], limit=2) is False
    assert await store.subscribers(c) == set()
