"""A ring change in the distributed stack: the node that loses users asks them to reconnect, and
they come back through the gateway to their new owner without missing anything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from services.common.ring import Ring
from tests.support.client import Api, Device, User
from tests.support.server import RunningServer, run_stack
from tests.support.workload import routed_nodes
from tests.system.conftest import SYSTEM_ENV
from tools import stack

BOTH = ["delivery-0", "delivery-1"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RunningServer]:
    with run_stack(SYSTEM_ENV, fresh=True) as running:
        yield running


@pytest.fixture
async def api(cluster: RunningServer) -> AsyncIterator[Api]:
    client = Api(cluster.base_url)
    yield client
    await client.close()


async def _user_on(api: Api, node: str) -> User:
    ring = Ring.of(BOTH)
    while True:
        user = await api.register("ring")
        if ring.node_for(user.user_id) == node:
            return user


async def _gateway_routes_by(api: Api, members: int) -> None:
    """Until the gateway has loaded a ring of ``members`` nodes. Each process re-reads the ring file on its own
    schedule: the node that lost the user may hear of the change before the gateway, which would still send the
    device's new socket to it."""
    for _ in range(600):
        metrics = (await api.http.get("/metrics")).text
        if f"courier_ring_members {float(members)}" in metrics.splitlines():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the gateway did not load a ring of {members} within 30 s")


async def test_losing_node_asks_its_users_to_reconnect_and_they_land_on_the_new_owner(
    cluster: RunningServer, api: Api
) -> None:
    stayer, mover = await _user_on(api, "delivery-0"), await _user_on(api, "delivery-1")
    cid = await api.direct(stayer, mover)
    d_stayer = await Device.connect(cluster.ws_url, stayer)
    d_old = await Device.connect(cluster.ws_url, mover)
    try:
        await d_old.request({"type": "ping"}, answer="pong")
        assert await routed_nodes(mover) == {"delivery-1"}
        stack.write_ring(["delivery-0"])
        hint = await d_old.wait_for(lambda f: f["type"] == "reconnect")
        assert 0 <= hint["after_ms"] <= 5000
        # Until the device moves, pushes still reach it where it is (the route table).
        sent = await d_stayer.send_text(cid, "before the move")
        await d_old.wait_for(lambda f: f["type"] == "message" and f["seq"] == sent["seq"])

        await _gateway_routes_by(api, 1)
        d_new = await Device.connect(cluster.ws_url, await api.device(mover, "after-move"))
        try:
            await d_new.request({"type": "ping"}, answer="pong")
            assert "delivery-0" in await routed_nodes(mover)
            after = await d_stayer.send_text(cid, "after the move")
            await d_new.wait_for(lambda f: f["type"] == "message" and f["seq"] == after["seq"])
            reply = await d_new.send_text(cid, "moved fine")
            await d_stayer.wait_for(lambda f: f["type"] == "message" and f["seq"] == reply["seq"])
            synced = await d_new.request({"type": "sync", "cursors": {cid: 0}}, answer="sync_result")
            [conv] = synced["conversations"]
            assert [m["seq"] for m in conv["messages"]] == [1, 2, 3]
        finally:
            await d_new.close()
    finally:
        stack.write_ring(BOTH)
        await d_stayer.close()
        await d_old.close()
