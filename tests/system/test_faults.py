"""The faults users fear most, against the distributed stack while clients keep sending.

After each fault and recovery, every member holds after ``sync`` every message that got a
``send_ack``, exactly once, with seqs 1..N and no gap; retried sends never made a second copy.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from services.common.ring import Ring
from tests.harness.infra import cli_module, ensure_infra, read_infra
from tests.support.client import Api, Device
from tests.support.server import RunningServer, run_stack
from tests.support.workload import Pair, make_pairs, routed_nodes, senders, verify, wait_for_acks
from tests.system.conftest import SYSTEM_ENV
from tools import stack

PAIRS = 4
NODES = ("delivery-0", "delivery-1")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RunningServer]:
    with run_stack(SYSTEM_ENV, fresh=True) as running:
        yield running


@pytest.fixture
async def api(cluster: RunningServer) -> AsyncIterator[Api]:
    client = Api(cluster.base_url)
    yield client
    await client.close()


Fault = Callable[[list[Pair]], Awaitable[None]]


def _then(fault: Callable[[], object], recover: Callable[[], object]) -> Fault:
    async def both(pairs: list[Pair]) -> None:
        fault()
        recover()

    return both


async def _survives(cluster: RunningServer, api: Api, fault: Fault) -> list[Pair]:
    pairs = await make_pairs(api, PAIRS, Ring.of(NODES))
    async with senders(cluster.ws_url, pairs):
        await wait_for_acks(pairs, 5)
        before = {p.sender.username: len(p.acked) for p in pairs}
        await fault(pairs)
        # The stack is back when every sender got more acks than it had at the fault.
        await wait_for_acks(pairs, max(before.values()) + 5)
    totals = await verify(api, cluster.ws_url, pairs)
    assert totals["acked"] >= PAIRS * 10
    errors = sum((p.errors for p in pairs), start=Counter[str]())
    pushed = sum(p.pushed for p in pairs)
    print(f"\n{totals} pushed live: {pushed}; errors seen by senders: {dict(errors)}")
    return pairs


async def test_kill_9_of_the_message_service_loses_and_duplicates_nothing(cluster: RunningServer, api: Api) -> None:
    await _survives(cluster, api, _then(lambda: stack.kill("message"), lambda: stack.restart("message", SYSTEM_ENV)))


async def test_kill_9_of_the_message_service_amid_sends_in_flight_keeps_them_in_the_order_written(
    cluster: RunningServer, api: Api
) -> None:
    # A client that writes its sends without waiting for each send_ack: the message service dies with some of them
    # in flight and the rest refused. Resending what got no send_ack (the same client_msg_ids) leaves each message
    # stored once, seqs 1..N with no gap, in the order the client wrote them.
    count = 300
    alice, bob = await api.register("pipelining"), await api.register("reader")
    cid = await api.direct(alice, bob)
    frames = [
        {"type": "send", "id": f"s{i}", "conversation_id": cid, "client_msg_id": f"pipelined-{i}",
         "content": {"type": "text", "text": f"message {i}"}}
        for i in range(count)
    ]  # fmt: skip

    def answers(device: Device) -> list[dict[str, object]]:
        return [f for f in device.frames if f["type"] in ("send_ack", "error")]

    device = await Device.connect(cluster.ws_url, alice)
    try:
        for frame in frames[:100]:
            await device.send(frame)
        await device.wait_until(lambda: len(answers(device)) >= 20)
        stack.kill("message")
        for frame in frames[100:]:
            await device.send(frame)
        await device.wait_until(lambda: len(answers(device)) == count, timeout=180)
    finally:
        await device.close()
    first = answers(device)
    assert [a["ref"] for a in first] == [f["id"] for f in frames], "answered in the order written"
    acked = {a["ref"] for a in first if a["type"] == "send_ack"}
    assert 20 <= len(acked) <= 100, "the sends written after the kill were refused"

    stack.restart("message", SYSTEM_ENV)
    again = [f for f in frames if f["id"] not in acked]
    device = await Device.connect(cluster.ws_url, alice)
    try:
        # Resent without waiting, they keep their order only if none fails: first a send elsewhere until the
        # delivery node reaches the new message process.
        elsewhere = await api.direct(alice, await api.register("elsewhere"))
        async with asyncio.timeout(120):
            while (await device.send_text(elsewhere, "are you back?"))["type"] != "send_ack":
                await asyncio.sleep(0.5)
        device.frames.clear()
        for frame in again:
            await device.send(frame)
        await device.wait_until(lambda: len(answers(device)) == len(again), timeout=180)
    finally:
        await device.close()
    assert all(a["type"] == "send_ack" for a in answers(device)), answers(device)

    stored = []
    while True:
        after = stored[-1]["seq"] if stored else 0
        page = await api.http.get(
            f"/v1/conversations/{cid}/messages", params={"after_seq": after, "limit": 100}, headers=alice.headers
        )
        assert page.status_code == 200, page.text
        stored += page.json()["messages"]
        if not page.json()["has_more"]:
            break
    assert [m["seq"] for m in stored] == list(range(1, count + 1))
    assert [m["content"]["text"] for m in stored] == [f"message {i}" for i in range(count)]


async def test_kill_9_of_a_delivery_node_loses_and_duplicates_nothing(cluster: RunningServer, api: Api) -> None:
    hit: list[Pair] = []
    killed_at = 0.0

    async def kill_a_node_holding_senders(pairs: list[Pair]) -> None:
        nonlocal killed_at
        placed = {p.sender.username: await routed_nodes(p.sender) for p in pairs}
        print(f"\nsenders' sockets before the fault: {placed}")
        # The ring puts half the senders on each node, but the gateway sends a socket to the next node while its
        # owner refuses upgrades: kill the node that really holds senders, preferring delivery-1.
        victim = next((n for n in reversed(NODES) if any(n in nodes for nodes in placed.values())), NODES[-1])
        hit.extend(p for p in pairs if victim in placed[p.sender.username])
        killed_at = time.monotonic()
        stack.kill(victim)
        stack.restart(victim, SYSTEM_ENV)

    await _survives(cluster, api, kill_a_node_holding_senders)
    assert hit, "no sender had a socket on a delivery node"
    # Each sender whose socket died with the node reconnected to get its later acks.
    stranded = [p.sender.username for p in hit if not any(t >= killed_at for t in p.connects["sender"])]
    assert not stranded, f"senders on the killed node never reconnected: {stranded}"


def _kill_kafka() -> None:
    pid = int(read_infra()["services"]["kafka"]["pid"])
    os.kill(pid, signal.SIGKILL)
    # A JVM takes a moment to exit after SIGKILL: its main thread turns zombie first, and its sockets and data-dir
    # lock are released only when its last thread has gone.
    infra = cli_module()
    deadline = time.monotonic() + 60
    while (infra.pid_alive(pid) or infra.still_exiting(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)


async def test_kill_9_of_the_kafka_broker_loses_and_duplicates_nothing(cluster: RunningServer, api: Api) -> None:
    await _survives(cluster, api, _then(_kill_kafka, lambda: ensure_infra(("kafka",))))


def _flushall() -> None:
    port = str(read_infra()["services"]["redis"]["port"])
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", port, "FLUSHALL"], check=True, capture_output=True)


async def test_redis_flushall_loses_reuses_and_skips_no_seq(cluster: RunningServer, api: Api) -> None:
    await _survives(cluster, api, _then(_flushall, lambda: None))
