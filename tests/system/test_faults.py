"""The faults users fear most, against the distributed stack while clients keep sending.

After each fault and recovery, every member holds after ``sync`` every message that got a
``send_ack``, exactly once, with seqs 1..N and no gap; retried sends never made a second copy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from services.common.ring import Ring
from tests.harness.infra import cli_module, ensure_infra, read_infra
from tests.support.client import Api
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
