"""The route table contract: every RouteTable adapter must pass these.

Runners: test_route_table.py (memory) and tests/integration/test_redis_routes.py (memory and Redis).
"""

from __future__ import annotations

import asyncio

from services.common.ids import new_id
from services.delivery.routes import RouteTable


async def test_devices_of_names_the_node_holding_each_of_a_users_devices(routes: RouteTable) -> None:
    alice, bob, carol = new_id(), new_id(), new_id()
    await routes.attach(alice, "phone", "delivery-0")
    await routes.attach(alice, "laptop", "delivery-1")
    await routes.attach(bob, "phone", "delivery-1")

    found = await routes.devices_of([alice, bob, carol])

    assert found == {alice: {"phone": "delivery-0", "laptop": "delivery-1"}, bob: {"phone": "delivery-1"}}


async def test_concurrent_lookups_each_get_the_devices_of_their_own_users(routes: RouteTable) -> None:
    users = [new_id() for _ in range(20)]
    for n, user in enumerate(users):
        await routes.attach(user, "phone", f"delivery-{n % 3}")

    found = await asyncio.gather(*(routes.devices_of([user, new_id()]) for user in users))

    assert found == [{user: {"phone": f"delivery-{n % 3}"}} for n, user in enumerate(users)]


async def test_a_device_moving_to_another_node_is_routed_there(routes: RouteTable) -> None:
    user = new_id()
    await routes.attach(user, "phone", "delivery-1")
    await routes.attach(user, "phone", "delivery-0")

    assert await routes.devices_of([user]) == {user: {"phone": "delivery-0"}}


async def test_the_old_node_detaching_late_does_not_remove_the_new_route(routes: RouteTable) -> None:
    user = new_id()
    await routes.attach(user, "phone", "delivery-1")
    await routes.attach(user, "phone", "delivery-0")  # reconnected elsewhere before the old socket ended
    await routes.detach(user, "phone", "delivery-1")

    assert await routes.devices_of([user]) == {user: {"phone": "delivery-0"}}


async def test_detaching_the_last_device_leaves_the_user_to_the_ring(routes: RouteTable) -> None:
    user = new_id()
    await routes.attach(user, "phone", "delivery-0")
    await routes.detach(user, "phone", "delivery-0")
    await routes.refresh([user])

    assert await routes.devices_of([user]) == {}
