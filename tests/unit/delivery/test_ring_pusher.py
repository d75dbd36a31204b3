"""RingPusher against two delivery nodes' real push routes (uvicorn on loopback): each node gets
its users' frames, in order, batched per node; an unreachable node costs only its own users."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import orjson
import pytest

from services.common.internal import InternalClient
from services.common.push import Push
from services.common.ring import RingSource
from services.delivery.hub import Close, Connection, Hub
from services.delivery.internal import RingPusher, internal_router
from services.delivery.protocol import AckWindow
from services.delivery.routes import MemoryRouteTable
from tests.support.loopback import GUARD, TOKEN, internal_service

NAMES = ("delivery-0", "delivery-1")


class CountingHub(Hub):
    """A real hub that remembers how many pushes each request handed it."""

    def __init__(self) -> None:
        super().__init__(clock=lambda: 0.0)
        self.requests: list[int] = []

    async def push_many(self, pushes: Sequence[Push]) -> None:
        self.requests.append(len(pushes))
        await super().push_many(pushes)


@contextlib.asynccontextmanager
async def nodes() -> AsyncIterator[tuple[RingSource, dict[str, CountingHub]]]:
    hubs = {name: CountingHub() for name in NAMES}
    async with contextlib.AsyncExitStack() as stack:
        urls = {}
        for name, hub in hubs.items():
            urls[name] = (await stack.enter_async_context(internal_service(internal_router(hub, GUARD)))).url
        yield RingSource(nodes=urls), hubs


def _connect(hub: Hub, user: str, device: str = "d") -> Connection:
    conn = Connection(user, device, queue_size=10_000, window=AckWindow(timeout_s=30, max_redeliveries=2))
    hub.attach(conn)
    return conn


async def _seqs(conn: Connection, conversation_id: str) -> list[int]:
    seqs = []
    while conn.queued:
        item = await conn.next_outgoing()
        assert not isinstance(item, Close)
        frame = orjson.loads(item)
        if frame["conversation_id"] == conversation_id:
            seqs.append(int(frame["seq"]))
    return seqs


def _user_on(ring: RingSource, node: str) -> str:
    return next(f"u{i}" for i in range(10_000) if ring.ring.node_for(f"u{i}") == node)


async def test_each_node_gets_its_users_frames_in_order_batched_per_node() -> None:
    async with nodes() as (ring, hubs):
        pusher = RingPusher(ring, TOKEN)
        alice, bob = _user_on(ring, "delivery-0"), _user_on(ring, "delivery-1")
        on_0, on_1 = _connect(hubs["delivery-0"], alice), _connect(hubs["delivery-1"], bob)
        try:
            # One conversation's pushes in order, as the fan-out sends them (each awaited before the next)...
            for seq in range(1, 4):
                await pusher.push([alice, bob], {"type": "message", "conversation_id": "c", "seq": seq}, tracked=True)
            # ...and a burst from many conversations at once, which must share requests.
            burst = [
                pusher.push([alice, bob], {"type": "message", "conversation_id": f"b{i}", "seq": 1}, tracked=True)
                for i in range(40)
            ]
            await asyncio.wait_for(asyncio.gather(*burst), 30)
        finally:
            await pusher.close()
        assert await _seqs(on_0, "c") == [1, 2, 3]
        assert await _seqs(on_1, "c") == [1, 2, 3]
        for hub in hubs.values():
            assert hub.pushed == sum(hub.requests) == 43
            assert len(hub.requests) < 43 - 10, hub.requests


async def test_pushes_given_together_reach_each_node_in_their_order_with_one_route_look_up() -> None:
    class CountingRoutes:
        def __init__(self) -> None:
            self.looked_up: list[set[str]] = []

        async def devices_of(self, user_ids: Sequence[str]) -> dict[str, dict[str, str]]:
            self.looked_up.append(set(user_ids))
            return {}  # no entry: the ring routes

    async with nodes() as (ring, hubs):
        routes = CountingRoutes()
        pusher = RingPusher(ring, TOKEN, routes=routes)  # type: ignore[arg-type]
        alice, bob = _user_on(ring, "delivery-0"), _user_on(ring, "delivery-1")
        on_0, on_1 = _connect(hubs["delivery-0"], alice), _connect(hubs["delivery-1"], bob)
        # One conversation's events fanned out together, while another burst is in flight to the same nodes.
        others = [pusher.push([alice, bob], {"type": "typing", "conversation_id": f"t{i}"}) for i in range(10)]
        pushes = [
            Push([alice, bob], {"type": "message", "conversation_id": "c", "seq": seq}, tracked=True)
            for seq in range(1, 31)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*others, pusher.push_many(pushes)), 30)
        finally:
            await pusher.close()
        assert await _seqs(on_0, "c") == await _seqs(on_1, "c") == list(range(1, 31))
        assert {alice, bob} in routes.looked_up and len(routes.looked_up) == 11  # one per call, not per push


async def test_a_node_that_cannot_be_reached_costs_only_its_own_users() -> None:
    async with nodes() as (ring, hubs):
        alice, bob = _user_on(ring, "delivery-0"), _user_on(ring, "delivery-1")
        on_0 = _connect(hubs["delivery-0"], alice)
        urls = {"delivery-0": ring.url_for("delivery-0"), "delivery-1": "http://127.0.0.1:9"}  # discard port
        pusher = RingPusher(RingSource(nodes=urls), TOKEN, timeout_s=10)
        try:
            await asyncio.wait_for(pusher.push([alice, bob], {"type": "typing", "conversation_id": "c"}), 30)
            await asyncio.wait_for(pusher.push([alice], {"type": "typing", "conversation_id": "c"}), 30)
        finally:
            await pusher.close()
        assert on_0.queued == 2
        assert pusher.failures == 1


async def test_many_frames_to_the_same_users_name_the_users_once_per_request() -> None:
    async with nodes() as (ring, hubs):
        pusher = RingPusher(ring, TOKEN, max_batch=40)
        alice, bob = _user_on(ring, "delivery-0"), _user_on(ring, "delivery-1")
        on_0, on_1 = _connect(hubs["delivery-0"], alice), _connect(hubs["delivery-1"], bob)
        frames = [
            {"type": "member_added", "conversation_id": "g", "seq": n, "user_id": f"new{n}", "by": alice}
            for n in range(1, 101)
        ]
        try:
            await asyncio.wait_for(pusher.push_frames([alice, bob], frames), 30)
        finally:
            await pusher.close()
        assert await _seqs(on_0, "g") == list(range(1, 101))
        assert await _seqs(on_1, "g") == list(range(1, 101))
        assert hubs["delivery-0"].requests == hubs["delivery-1"].requests == [40, 40, 20]


async def test_the_single_push_route_of_the_previous_release_still_delivers() -> None:
    async with nodes() as (ring, hubs):
        alice = _user_on(ring, "delivery-0")
        on_0 = _connect(hubs["delivery-0"], alice)
        http = InternalClient(ring.url_for("delivery-0"), TOKEN)
        try:
            frame = {"type": "message", "conversation_id": "c", "seq": 1}
            await http.call("POST", "/internal/push", {"user_ids": [alice], "frame": frame, "tracked": True})
        finally:
            await http.close()
        assert await _seqs(on_0, "c") == [1]


def test_a_pusher_cannot_batch_more_than_the_push_calls_take() -> None:
    with pytest.raises(ValueError, match="at most 500"):
        RingPusher(RingSource(nodes={"delivery-0": "http://127.0.0.1:9"}), TOKEN, max_batch=501)


async def test_the_sending_devices_node_gets_nothing_for_its_user_unless_another_device_is_there() -> None:
    """A message's push names its sender too (for their other devices), less the device it came from: the
    node holding only that device is not sent the push at all."""
    async with nodes() as (ring, hubs):
        routes = MemoryRouteTable()
        pusher = RingPusher(ring, TOKEN, routes=routes)
        alice, bob = _user_on(ring, "delivery-0"), _user_on(ring, "delivery-1")
        phone = _connect(hubs["delivery-0"], alice, "phone")
        on_1 = _connect(hubs["delivery-1"], bob)
        await routes.attach(alice, "phone", "delivery-0")
        await routes.attach(bob, "d", "delivery-1")
        event = {"type": "message", "conversation_id": "c", "seq": 1}
        try:
            await asyncio.wait_for(pusher.push([alice, bob], event, tracked=True, skip_device=(alice, "phone")), 30)
            assert hubs["delivery-0"].requests == [] and hubs["delivery-1"].requests == [1]

            laptop = _connect(hubs["delivery-0"], alice, "laptop")
            await routes.attach(alice, "laptop", "delivery-0")
            event = {**event, "seq": 2}
            await asyncio.wait_for(pusher.push([alice, bob], event, tracked=True, skip_device=(alice, "phone")), 30)
        finally:
            await pusher.close()
        assert hubs["delivery-0"].requests == [1] and hubs["delivery-1"].requests == [1, 1]
        assert await _seqs(laptop, "c") == [2] and await _seqs(phone, "c") == []
        assert await _seqs(on_1, "c") == [1, 2]
