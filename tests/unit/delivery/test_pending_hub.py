"""Hubs with a shared PendingStore: a device's unacked pushes follow it to whichever node it
reconnects to, and a failing store never breaks a socket."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import orjson
import pytest

from services.common.errors import Unavailable
from services.delivery.hub import Close, Connection, Hub
from services.delivery.pending import Key, MemoryPendingStore, Pending
from services.delivery.ports import Messages
from services.delivery.protocol import AckWindow
from services.delivery.session import Session, SessionDeps
from services.message.app import SendMessage, Sent, SyncedConversation
from tests.unit.delivery.test_pending_contract import message, uid


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FailingStore:
    """A store whose Redis is down."""

    async def add(self, user_id: str, device_id: str, frames: Sequence[Mapping[str, Any]]) -> None:
        raise Unavailable("redis is unreachable (test)")

    async def add_many(self, frames_by_device: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]]) -> None:
        raise Unavailable("redis is unreachable (test)")

    async def ack(self, user_id: str, device_id: str, conversation_id: str, seq: int) -> int:
        raise Unavailable("redis is unreachable (test)")

    async def load(self, user_id: str, device_id: str) -> Pending:
        raise Unavailable("redis is unreachable (test)")

    async def forget(self, user_id: str, device_id: str, keys: Collection[Key]) -> None:
        raise Unavailable("redis is unreachable (test)")


class Unused:
    """Messages, members and presence: an ack frame needs none of them."""

    async def send_many(self, cmds: Sequence[SendMessage]) -> list[Sent | Exception]:
        raise AssertionError("not used")

    async def sync(
        self, user_id: str, cursors: Mapping[str, int], *, limit: int | None = None
    ) -> list[SyncedConversation]:
        raise AssertionError("not used")

    async def mark_read(self, conversation_id: str, user_id: str, seq: int) -> int:
        raise AssertionError("not used")

    async def members(self, conversation_id: str, user_id: str) -> Sequence[str]:
        raise AssertionError("not used")

    async def connected(self, user_id: str, device_id: str) -> None:
        return None

    async def heartbeat(self, user_id: str, device_id: str) -> None:
        return None

    async def heartbeat_many(self, devices: Sequence[tuple[str, str]]) -> None:
        return None

    async def disconnected(self, user_id: str, device_id: str) -> None:
        return None

    async def subscribe(self, subscriber_id: str, user_ids: Collection[str]) -> list[dict[str, Any]]:
        return []

    async def unsubscribe_all(self, subscriber_id: str) -> None:
        return None


def connect(hub: Hub, user: str, device: str, *, queue_size: int = 64, max_redeliveries: int = 3) -> Connection:
    conn = Connection(
        user, device, queue_size=queue_size, window=AckWindow(timeout_s=5, max_redeliveries=max_redeliveries)
    )
    hub.attach(conn)
    return conn


def session(hub: Hub, conn: Connection, *, messages: Messages | None = None) -> Session:
    unused = Unused()
    deps = SessionDeps(
        hub=hub,
        pusher=hub,
        messages=messages or unused,
        members=unused,
        presence=unused,
        heartbeat_every_s=3600,
        sync_limit=100,
        sync_max_bytes=1 << 20,
    )
    return Session(conn, deps, clock=lambda: 0.0)


async def sent(conn: Connection) -> list[dict[str, Any]]:
    frames = []
    while conn.queued:
        item = await conn.next_outgoing()
        assert not isinstance(item, Close), item
        frames.append(orjson.loads(item))
    return frames


async def test_a_device_reconnecting_to_another_node_gets_its_unacked_frames_again_marked_redelivered() -> None:
    store, clock, u, c = MemoryPendingStore(), Clock(), uid("u"), uid("c")
    first_node, second_node = Hub(pending=store, clock=clock), Hub(pending=store, clock=clock)
    before = connect(first_node, u, "phone")
    for seq in (1, 2, 3):
        await first_node.push([u], message(c, seq), tracked=True)
    await first_node.push([u], {"type": "typing", "conversation_id": c, "user_id": "x", "state": "start"})
    assert [f.get("seq") for f in await sent(before)] == [1, 2, 3, None]
    await session(first_node, before).on_text(orjson.dumps({"type": "ack", "conversation_id": c, "seq": 1}))
    clock.now = 1.0
    await first_node.write_behind(1.0)  # the node's tick
    clock.now = 1.5
    await first_node.push([u], message(c, 4), tracked=True)
    # the first node dies (kill -9) within a tick of pushing 4: nothing of it runs any more

    after = connect(second_node, u, "phone")
    restored = await second_node.restore(after)

    # 4 was not recorded yet: the device gets it by sync, as after any reconnect.
    assert restored == 2
    assert await sent(after) == [{**message(c, 2), "redelivered": True}, {**message(c, 3), "redelivered": True}]
    await session(second_node, after).on_text(orjson.dumps({"type": "ack", "conversation_id": c, "seq": 3}))
    await second_node.write_behind(1.0)
    assert await store.load(u, "phone") == Pending([], {c: 3})
    assert len(after.window) == 0


async def test_a_socket_that_ends_leaves_its_unacked_frames_and_its_acks_to_the_next_at_once() -> None:
    store, u, c = MemoryPendingStore(), uid("u"), uid("c")
    first_node, second_node = Hub(pending=store), Hub(pending=store)
    before = connect(first_node, u, "phone")
    for seq in (1, 2):
        await first_node.push([u], message(c, seq), tracked=True)
    await first_node.ack(before, c, 1)

    first_node.detach(before)  # the client left, or the node is draining: no tick needed
    await first_node.write_behind_device(u, "phone")
    after = connect(second_node, u, "phone")

    assert await second_node.restore(after) == 1
    assert await sent(after) == [{**message(c, 2), "redelivered": True}]
    assert after.window.acked(c) == 1


async def test_acked_seqs_follow_the_device_so_the_new_node_does_not_push_acked_frames_again() -> None:
    store, u, c = MemoryPendingStore(), uid("u"), uid("c")
    first_node, second_node = Hub(pending=store), Hub(pending=store)
    before = connect(first_node, u, "phone")
    await first_node.push([u], message(c, 4), tracked=True)
    await first_node.ack(before, c, 4)
    await first_node.write_behind(1.0)  # a tick later

    after = connect(second_node, u, "phone")
    await second_node.restore(after)
    await second_node.push([u], message(c, 4), tracked=True)  # a fan-out retry of an acked event
    await second_node.push([u], message(c, 5), tracked=True)

    assert await sent(after) == [message(c, 5)]


class CountingStore(MemoryPendingStore):
    """Counts the store's writes: each is a Redis script."""

    def __init__(self) -> None:
        super().__init__()
        self.adds = 0
        self.acks = 0

    async def add(self, user_id: str, device_id: str, frames: Sequence[Mapping[str, Any]]) -> None:
        self.adds += 1
        await super().add(user_id, device_id, frames)

    async def ack(self, user_id: str, device_id: str, conversation_id: str, seq: int) -> int:
        self.acks += 1
        return await super().ack(user_id, device_id, conversation_id, seq)


async def test_frames_acked_within_a_tick_never_reach_the_store_and_a_ticks_acks_are_one_write() -> None:
    store, clock, u, c = CountingStore(), Clock(), uid("u"), uid("c")
    hub = Hub(pending=store, clock=clock)
    conn = connect(hub, u, "phone")
    for seq in range(1, 51):
        await hub.push([u], message(c, seq), tracked=True)
        await hub.ack(conn, c, seq)
        clock.now += 0.01

    clock.now = 1.5
    await hub.write_behind(1.0)  # every frame is a tick old, and acked

    assert (store.adds, store.acks) == (0, 1)
    assert await store.load(u, "phone") == Pending([], {c: 50})


async def test_only_frames_still_unacked_a_tick_after_their_push_are_recorded() -> None:
    store, clock, u, c = CountingStore(), Clock(), uid("u"), uid("c")
    hub = Hub(pending=store, clock=clock)
    connect(hub, u, "phone")
    await hub.push([u], message(c, 1), tracked=True)
    clock.now = 0.6
    await hub.push([u], message(c, 2), tracked=True)

    clock.now = 1.0
    await hub.write_behind(1.0)
    assert keys_of(await store.load(u, "phone")) == [(c, 1)]
    clock.now = 2.0
    await hub.write_behind(1.0)
    assert keys_of(await store.load(u, "phone")) == [(c, 1), (c, 2)]
    assert store.adds == 2


async def test_only_devices_that_were_sent_a_tracked_frame_record_it() -> None:
    store, alice, bob, c = MemoryPendingStore(), uid("alice"), uid("bob"), uid("c")
    hub = Hub(pending=store)
    phone, laptop, bobs = connect(hub, alice, "phone"), connect(hub, alice, "laptop"), connect(hub, bob, "d")
    await hub.ack(bobs, c, 7)

    await hub.push([alice, bob], message(c, 7), tracked=True, skip_device=(alice, "phone"))
    await hub.write_behind(0.0)

    assert (await store.load(alice, "laptop")).frames == [message(c, 7)]
    assert (await store.load(alice, "phone")).frames == []
    assert (await store.load(bob, "d")).frames == []
    assert (phone.queued, laptop.queued, bobs.queued) == (0, 1, 0)


async def test_the_same_device_replacing_its_socket_on_one_node_gets_the_old_sockets_frames() -> None:
    store, u, c = MemoryPendingStore(), uid("u"), uid("c")
    hub = Hub(pending=store)
    old = connect(hub, u, "phone")
    await hub.push([u], message(c, 1), tracked=True)

    new = connect(hub, u, "phone")
    await hub.restore(new)

    assert old.closing is not None
    assert await sent(new) == [{**message(c, 1), "redelivered": True}]


async def test_a_frame_pushed_live_between_attach_and_restore_is_not_sent_twice() -> None:
    store, u, c = MemoryPendingStore(), uid("u"), uid("c")
    hub = Hub(pending=store)
    await store.add(u, "phone", [message(c, 1)])
    conn = connect(hub, u, "phone")
    await hub.push([u], message(c, 2), tracked=True)

    await hub.restore(conn)

    assert await sent(conn) == [message(c, 2), {**message(c, 1), "redelivered": True}]


async def test_restore_uses_at_most_half_the_free_queue_so_the_client_is_never_too_slow() -> None:
    store, u, c = MemoryPendingStore(), uid("u"), uid("c")
    hub = Hub(pending=store)
    await store.add(u, "phone", [message(c, seq) for seq in range(1, 21)])
    conn = connect(hub, u, "phone", queue_size=8)

    assert await hub.restore(conn) == 4

    assert [f["seq"] for f in await sent(conn)] == [1, 2, 3, 4]
    assert conn.closing is None and len(conn.window) == 4
    assert len((await store.load(u, "phone")).frames) == 20, "the rest waits for the next reconnect or an ack"


async def test_frames_the_window_gives_up_on_are_forgotten_in_the_store() -> None:
    store, clock, u, c = MemoryPendingStore(), Clock(), uid("u"), uid("c")
    hub = Hub(pending=store, clock=clock)
    conn = connect(hub, u, "phone", max_redeliveries=1)
    await hub.push([u], message(c, 1), tracked=True)
    clock.now = 2.0
    await hub.push([u], message(c, 2), tracked=True)

    clock.now = 5.0
    await hub.write_behind(1.0)
    assert hub.retransmit_due() == 1
    await hub.forget_given_up()
    assert len((await store.load(u, "phone")).frames) == 2
    clock.now = 10.0
    hub.retransmit_due()
    await hub.forget_given_up()

    assert keys_of(await store.load(u, "phone")) == [(c, 2)]
    assert conn.window.given_up == 1


def keys_of(pending: Pending) -> list[tuple[str, int]]:
    return [(f["conversation_id"], f["seq"]) for f in pending.frames]


async def test_a_failing_store_never_breaks_a_socket(caplog: pytest.LogCaptureFixture) -> None:
    clock, u, c = Clock(), uid("u"), uid("c")
    hub = Hub(pending=FailingStore(), clock=clock)
    conn = connect(hub, u, "phone", max_redeliveries=0)

    assert await hub.restore(conn) == 0
    await hub.push([u], message(c, 1), tracked=True)
    await hub.push([u], message(c, 2), tracked=True)
    await session(hub, conn).on_text(orjson.dumps({"type": "ack", "conversation_id": c, "seq": 1}))
    clock.now = 5.0
    await hub.write_behind(1.0)
    hub.retransmit_due()
    await hub.forget_given_up()

    assert [f["seq"] for f in await sent(conn)] == [1, 2]
    assert conn.closing is None and conn.window.acked(c) == 1
    assert hub.pending_failures == 4  # the load, the ack, frame 2's record, its forgetting
    assert len([r for r in caplog.records if "pending store failed" in r.getMessage()]) == 1, "logged once"


async def test_without_a_store_the_hub_works_as_before() -> None:
    u, c = uid("u"), uid("c")
    hub = Hub()
    conn = connect(hub, u, "phone")

    assert await hub.restore(conn) == 0
    await hub.push([u], message(c, 1), tracked=True)
    assert await hub.ack(conn, c, 1) == 1
    hub.retransmit_due()
    await hub.forget_given_up()
    assert [f["seq"] for f in await sent(conn)] == [1]
