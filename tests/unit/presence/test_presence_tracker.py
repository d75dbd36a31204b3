"""The tracker: transitions pushed to subscribers, heartbeat expiry on an injected clock, the sweep loop."""

from __future__ import annotations

import asyncio

import pytest
from presence_support import T0, FakeClock, RecordingPusher, StoppingSleep, uid

from services.common.errors import InvalidRequest, Unavailable
from services.presence.adapters.memory import MemoryPresenceStore
from services.presence.app import PresenceTracker
from services.presence.domain import MAX_WATCHED_PER_SUBSCRIBER, PresenceStatus

TTL = 60.0
T0_WIRE = "2026-09-21T14:13:20.000Z"


@pytest.fixture
def tracker(clock: FakeClock, pusher: RecordingPusher) -> PresenceTracker:
    return PresenceTracker(MemoryPresenceStore(), pusher, ttl_s=TTL, clock=clock)


def frame(user_id: str, online: bool, last_seen: str | None) -> dict[str, object]:
    return {"type": "presence", "user_id": user_id, "online": online, "last_seen": last_seen}


async def test_subscribe_returns_current_frames_in_order(tracker: PresenceTracker, clock: FakeClock) -> None:
    watcher, online, never = uid("watcher"), uid("online"), uid("never")
    await tracker.connected(online, "d1")
    clock.advance(1)

    frames = await tracker.subscribe(watcher, [online, never, online])

    assert frames == [frame(online, True, T0_WIRE), frame(never, False, None)]


async def test_first_device_online_is_pushed_to_subscribers_only_once(
    tracker: PresenceTracker, pusher: RecordingPusher
) -> None:
    watcher, u = uid("watcher"), uid("u")
    await tracker.subscribe(watcher, [u])

    await tracker.connected(u, "phone")
    await tracker.connected(u, "laptop")
    await tracker.heartbeat(u, "phone")

    assert pusher.pushes == [(frozenset({watcher}), frame(u, True, T0_WIRE))]


async def test_last_device_disconnecting_pushes_offline_with_that_time(
    tracker: PresenceTracker, pusher: RecordingPusher, clock: FakeClock
) -> None:
    watcher, u = uid("watcher"), uid("u")
    await tracker.connected(u, "phone")
    await tracker.connected(u, "laptop")
    await tracker.subscribe(watcher, [u])

    clock.advance(5)
    await tracker.disconnected(u, "phone")
    clock.advance(5)
    await tracker.disconnected(u, "laptop")

    assert pusher.pushes == [(frozenset({watcher}), frame(u, False, "2026-09-21T14:13:30.000Z"))]
    assert await tracker.status([u]) == [{"user_id": u, "online": False, "last_seen": "2026-09-21T14:13:30.000Z"}]


async def test_heartbeats_keep_a_device_online_past_its_first_ttl(
    tracker: PresenceTracker, pusher: RecordingPusher, clock: FakeClock
) -> None:
    watcher, u = uid("watcher"), uid("u")
    await tracker.connected(u, "d1")
    await tracker.subscribe(watcher, [u])

    for _ in range(4):
        clock.advance(TTL / 2)
        await tracker.heartbeat(u, "d1")
        await tracker.expire()

    assert pusher.pushes == []
    assert (await tracker.status([u]))[0]["online"] is True


async def test_silent_device_expires_offline_with_its_last_heartbeat_as_last_seen(
    tracker: PresenceTracker, pusher: RecordingPusher, clock: FakeClock
) -> None:
    watcher, u = uid("watcher"), uid("u")
    await tracker.connected(u, "d1")
    await tracker.subscribe(watcher, [u])
    clock.advance(10)
    await tracker.heartbeat(u, "d1")

    clock.advance(TTL - 0.5)
    await tracker.expire()
    still_online = list(pusher.pushes)
    clock.advance(0.5)
    await tracker.expire()

    assert still_online == []
    assert pusher.pushes == [(frozenset({watcher}), frame(u, False, "2026-09-21T14:13:30.000Z"))]


async def test_heartbeat_after_expiry_brings_the_user_back_online(
    tracker: PresenceTracker, pusher: RecordingPusher, clock: FakeClock
) -> None:
    watcher, u = uid("watcher"), uid("u")
    await tracker.connected(u, "d1")
    await tracker.subscribe(watcher, [u])
    clock.advance(TTL)
    await tracker.expire()

    clock.advance(1)
    await tracker.heartbeat(u, "d1")

    assert [f["online"] for _, f in pusher.pushes] == [False, True]


async def test_changes_reach_every_subscriber_and_stop_after_unsubscribe(
    tracker: PresenceTracker, pusher: RecordingPusher
) -> None:
    s1, s2, u = uid("s1"), uid("s2"), uid("u")
    await tracker.subscribe(s1, [u])
    await tracker.subscribe(s2, [u])

    await tracker.connected(u, "d1")
    await tracker.unsubscribe_all(s1)
    await tracker.disconnected(u, "d1")

    assert [(who, f["online"]) for who, f in pusher.pushes] == [(frozenset({s1, s2}), True), (frozenset({s2}), False)]


async def test_changes_without_subscribers_push_nothing(tracker: PresenceTracker, pusher: RecordingPusher) -> None:
    u = uid("u")

    await tracker.connected(u, "d1")
    await tracker.disconnected(u, "d1")

    assert pusher.pushes == []


async def test_watching_too_many_users_is_invalid(tracker: PresenceTracker) -> None:
    watcher = uid("watcher")
    for start in range(0, MAX_WATCHED_PER_SUBSCRIBER, 200):
        await tracker.subscribe(watcher, [f"u{i}" for i in range(start, start + 200)])

    with pytest.raises(InvalidRequest, match="at most"):
        await tracker.subscribe(watcher, [uid("one-more")])


@pytest.mark.parametrize("ids", [[], ["x" * 65], [f"u{i}" for i in range(201)]])
async def test_status_and_subscribe_refuse_bad_id_lists(tracker: PresenceTracker, ids: list[str]) -> None:
    with pytest.raises(InvalidRequest):
        await tracker.status(ids)
    with pytest.raises(InvalidRequest):
        await tracker.subscribe(uid("watcher"), ids)


async def test_run_sweeps_every_quarter_ttl_until_cancelled(clock: FakeClock, pusher: RecordingPusher) -> None:
    sleep = StoppingSleep(stop_after=5, clock=clock)
    tracker = PresenceTracker(MemoryPresenceStore(), pusher, ttl_s=TTL, clock=clock, sleep=sleep)
    watcher, u = uid("watcher"), uid("u")
    await tracker.connected(u, "d1")
    await tracker.subscribe(watcher, [u])

    with pytest.raises(asyncio.CancelledError):
        await tracker.run()

    assert sleep.pauses == [TTL / 4] * 5
    assert pusher.pushes == [(frozenset({watcher}), frame(u, False, T0_WIRE))]
    assert clock.now == T0 + 5 * TTL / 4


class FlakyStore(MemoryPresenceStore):
    """The memory store whose first sweep fails as an unreachable Redis would."""

    def __init__(self) -> None:
        super().__init__()
        self.sweeps = 0

    async def sweep(self, now: float) -> list[PresenceStatus]:
        self.sweeps += 1
        if self.sweeps == 1:
            raise Unavailable("presence store unreachable")
        return await super().sweep(now)


async def test_run_survives_a_failed_sweep(clock: FakeClock, pusher: RecordingPusher) -> None:
    store = FlakyStore()
    tracker = PresenceTracker(store, pusher, ttl_s=TTL, clock=clock, sleep=StoppingSleep(stop_after=3))

    with pytest.raises(asyncio.CancelledError):
        await tracker.run()

    assert store.sweeps == 3
