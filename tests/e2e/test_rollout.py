"""Scaling the WebSocket tier and a rolling upgrade of every component, on real pods, while clients send and
receive: every acknowledged message is delivered exactly once and in order, and clients move at most once per pod
restart, spread over time rather than all at once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter
from typing import Any

from tests.e2e.conftest import KindCluster, run
from tests.e2e.test_protocol import ws_url
from tests.support.client import Api
from tests.support.workload import Pair, make_pairs, senders, verify, wait_for_acks

PAIRS = 12
INTERVAL_S = 0.5  # each sender at most 2 messages a second: 24 msg/s offered in all
COURIER = ("gateway", "delivery", "identity", "conversation", "message", "presence", "file")
DEADLINE_S = 900.0


async def kubectl(cluster: KindCluster, *args: str) -> str:
    """kubectl off the event loop: the clients keep their sockets busy while it runs."""
    return await asyncio.to_thread(cluster.kubectl, *args)


async def get(cluster: KindCluster, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(await kubectl(cluster, "get", "-o", "json", *args))
    return result


async def settled(cluster: KindCluster, what: str, check: Any) -> None:
    """Until the IMCluster has caught up with its spec, is Ready, and ``check(imcluster, pods)`` holds."""
    deadline = time.monotonic() + DEADLINE_S
    seen = ""
    while time.monotonic() < deadline:
        imc = await get(cluster, "imc", cluster.imcluster)
        pods = (await get(cluster, "pods"))["items"]
        status = imc.get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
        current = status.get("observedGeneration") == imc["metadata"]["generation"]
        if current and ready.get("status") == "True" and check(imc, pods):
            return
        seen = f"{ready.get('message')}; ring {status.get('ring', {}).get('members')}"
        await asyncio.sleep(3)
    raise AssertionError(f"gave up after {DEADLINE_S:.0f}s waiting for {what}; last seen: {seen}")


def courier_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        p
        for p in pods
        if p["metadata"]["labels"].get("app.kubernetes.io/component") in COURIER
        and p["metadata"].get("deletionTimestamp") is None
    ]


RING_VERSION_PROBE = (
    "import re, urllib.request; body = urllib.request.urlopen('http://127.0.0.1:8080/metrics', timeout=10).read();"
    "print(re.search(rb'^courier_ring_version (\\S+)', body, re.M).group(1).decode())"
)


async def pods_loaded_ring(cluster: KindCluster, what: str) -> None:
    """Until every gateway and delivery pod runs with the ring the operator published last (a mounted ConfigMap
    reaches a pod within about a minute): only then has the change moved anyone."""
    deadline = time.monotonic() + DEADLINE_S
    loaded: dict[str, str] = {}
    while time.monotonic() < deadline:
        published = str((await get(cluster, "imc", cluster.imcluster))["status"]["ring"]["version"])
        pods = [
            p["metadata"]["name"]
            for p in courier_pods((await get(cluster, "pods"))["items"])
            if p["metadata"]["labels"]["app.kubernetes.io/component"] in ("gateway", "delivery")
        ]
        for pod in pods:
            out = await asyncio.to_thread(
                subprocess.run,
                [cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "-n", cluster.namespace, "exec", pod,
                 "--", "python", "-c", RING_VERSION_PROBE],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            loaded[pod] = out.stdout.strip().removesuffix(".0")
        if pods and all(version == published for version in loaded.values()):
            return
        await asyncio.sleep(3)
    raise AssertionError(f"gave up after {DEADLINE_S:.0f}s waiting for the pods to load {what}: {loaded}")


def storms(times: list[float], window_s: float = 2.0) -> int:
    """The most reconnects that fell within any ``window_s``."""
    return max((sum(1 for t in times if start <= t < start + window_s) for start in times), default=0)


def connects_of(pairs: list[Pair], start: float, end: float) -> dict[str, list[float]]:
    """Each client's reconnects between ``start`` and ``end``, in seconds after ``start``: what to read when one
    moved more than the restarts explain."""
    return {
        f"{pair.sender.username}/{role}": [round(t - start, 1) for t in times[1:] if start <= t < end]
        for pair in pairs
        for role, times in pair.connects.items()
    }


def moves(pairs: list[Pair], start: float, end: float) -> dict[str, int]:
    return {client: len(times) for client, times in connects_of(pairs, start, end).items()}


async def test_scaling_and_a_rolling_upgrade_under_load_lose_nothing_and_move_clients_once_per_restart(
    kind_cluster: KindCluster, api: Api
) -> None:
    ws = ws_url(kind_cluster)
    pairs = await make_pairs(api, PAIRS)
    name = kind_cluster.imcluster
    async with senders(ws, pairs, interval_s=INTERVAL_S):
        await wait_for_acks(pairs, 3, timeout=120)

        # 1. The WebSocket tier grows to four nodes and shrinks back to two: the ring moves twice.
        scaled_at = time.monotonic()
        await kubectl(kind_cluster, "scale", f"imc/{name}", "--replicas=4")
        await settled(kind_cluster, "a ring of 4", lambda imc, _: len(imc["status"]["ring"]["members"]) == 4)
        await pods_loaded_ring(kind_cluster, "the ring of 4")
        await wait_for_acks(pairs, max(len(p.acked) for p in pairs) + 3, timeout=300)
        await kubectl(kind_cluster, "scale", f"imc/{name}", "--replicas=2")
        await settled(kind_cluster, "a ring of 2", lambda imc, _: len(imc["status"]["ring"]["members"]) == 2)
        await pods_loaded_ring(kind_cluster, "the ring of 2")
        await wait_for_acks(pairs, max(len(p.acked) for p in pairs) + 3, timeout=300)

        # 2. A second image tag rolls every Courier component, one pod at a time.
        upgraded_at = time.monotonic()
        second = kind_cluster.image.replace(":", f":rollout-{int(time.time())}-", 1)  # new on every run
        await asyncio.to_thread(run, ["docker", "tag", kind_cluster.image, second])
        await asyncio.to_thread(
            run, [kind_cluster.kind_bin, "load", "docker-image", "--name", kind_cluster.name, second], timeout=900
        )
        await kubectl(kind_cluster, "patch", "imc", name, "--type=merge", "-p", json.dumps({"spec": {"image": second}}))

        def rolled(_imc: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
            running = courier_pods(pods)
            return bool(running) and all(
                p["spec"]["containers"][0]["image"] == second
                and all(s["ready"] for s in p["status"].get("containerStatuses") or [{"ready": False}])
                for p in running
            )

        await settled(kind_cluster, "every Courier pod on the second image", rolled)
        upgraded = time.monotonic()
        await wait_for_acks(pairs, max(len(p.acked) for p in pairs) + 3, timeout=300)

    totals = await verify(api, ws, pairs)
    scaling, upgrade = moves(pairs, scaled_at, upgraded_at), moves(pairs, upgraded_at, upgraded)
    times = [t for pair in pairs for t in pair.reconnects(since=upgraded_at) if t < upgraded]
    print(
        f"\nrollout: {totals}; pushes repeated on the wire {sum(p.repeated for p in pairs)}; "
        f"scaling {upgraded_at - scaled_at:.0f}s, most moves of one client {max(scaling.values())}; "
        f"upgrade {upgraded - upgraded_at:.0f}s, most moves {max(upgrade.values())}, {len(times)} reconnects, "
        f"at most {storms(times)} within 2 s; client errors {sum((p.errors for p in pairs), Counter())}"
    )
    print(f"the upgrade's reconnects (s after it began): {connects_of(pairs, upgraded_at, upgraded)}")
    assert totals["acked"] >= PAIRS * 12, totals
    assert not [p.disorder for p in pairs if p.disorder], "a socket got a conversation's pushes out of order"

    # Scaling moves clients (the new nodes take their share), each at most once each way.
    assert 0 < max(scaling.values()) <= 2, scaling
    # A rolling upgrade moves a client at most once per pod that held its socket: two delivery nodes and two
    # gateways restart, one after another.
    assert max(upgrade.values()) <= 4, upgrade
    assert times, "the upgrade moved nobody: it did not restart what held the sockets"
    assert storms(times) <= max(8, len(times) // 2), f"{storms(times)} of {len(times)} reconnects within 2 s"
