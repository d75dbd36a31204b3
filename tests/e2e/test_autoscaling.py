"""The operator's HorizontalPodAutoscalers on real pods: the delivery tier grows from one pod to two while clients hold
more WebSockets than its target, and shrinks back once they leave; the gateway's autoscaler reads its pods' CPU.

The kind cluster serves no metrics API of its own, so this module installs the pipeline of infra/images/metrics.py
(`courier-kind metrics`: metrics-server, Prometheus scraping every delivery pod each 5 s, prometheus-adapter) for its
tests and removes it after them. Each test turns one autoscaler on in the session's IMCluster, and off again after,
with the replicas as they were. An HPA acts at most every 15 s and the pods it adds really start, so every wait is
on a condition, with minutes to spare.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from services.common.ring import Ring
from tests.e2e.conftest import KindCluster, Pending, added
from tests.e2e.test_operator_pods import ready, wait
from tests.e2e.test_protocol import ws_url
from tests.e2e.test_rollout import pods_loaded_ring
from tests.support.client import Api
from tests.support.workload import keep_receiving, make_pairs

COMPONENT_LABEL = "app.kubernetes.io/component"
# Clients holding one WebSocket each, and the average per delivery pod the autoscaler keeps: twelve on one pod ask
# for three pods (two at most), and twelve on two pods still ask for two.
CONNECTIONS = 12
PER_POD = 4
SCALE_DOWN_WINDOW_S = 30
CONNECTIONS_API = "/apis/custom.metrics.k8s.io/v1beta1/namespaces/{}/pods/*/courier_ws_connections"
CPU_API = "/apis/metrics.k8s.io/v1beta1/namespaces/{}/pods"


@pytest.fixture(scope="module")
def metrics(kind_cluster: KindCluster) -> Iterator[KindCluster]:
    """The cluster with the metrics pipeline serving the resource and custom metrics APIs."""
    with added("metrics", kind_cluster) as cluster:
        yield cluster


def patch_spec(cluster: KindCluster, spec: dict[str, Any]) -> None:
    cluster.kubectl("patch", "imc", cluster.imcluster, "--type=merge", "-p", json.dumps({"spec": spec}))


def autoscaler(cluster: KindCluster, component: str) -> dict[str, Any] | None:
    """The component's HPA, or None before the operator has made it (and after it has pruned it)."""
    name = f"{cluster.imcluster}-{component}"
    found = cluster.kubectl("get", "hpa", name, "--ignore-not-found", "-o", "json").strip()
    return json.loads(found) if found else None


def scaling_active(cluster: KindCluster, component: str) -> tuple[bool, Any]:
    """Whether the component's HPA reads its metric (condition ScalingActive), with what it read."""
    status = (autoscaler(cluster, component) or {}).get("status") or {}
    active = next((c for c in status.get("conditions") or [] if c["type"] == "ScalingActive"), {})
    current = status.get("currentMetrics") or []
    return active.get("status") == "True" and bool(current), (current, active.get("message"))


def pod_names(cluster: KindCluster, component: str, *, ready_only: bool = False) -> list[str]:
    """The component's pods that are not on their way out (and, with ready_only, have every container ready)."""
    pods = cluster.get("pods", "-l", f"im.courier.dev/cluster={cluster.imcluster},{COMPONENT_LABEL}={component}")
    return sorted(
        p["metadata"]["name"]
        for p in pods["items"]
        if p["metadata"].get("deletionTimestamp") is None
        and (not ready_only or all(s["ready"] for s in p["status"].get("containerStatuses") or [{"ready": False}]))
    )


def delivery_at(cluster: KindCluster, replicas: int) -> tuple[bool, Any]:
    """Whether spec.delivery.replicas is `replicas`, the IMCluster is Ready, and the ring names that many delivery
    pods: every one of them ready, and no other left."""
    imc = cluster.get("imc", cluster.imcluster)
    wanted = imc["spec"]["delivery"]["replicas"]
    members = sorted(((imc.get("status") or {}).get("ring") or {}).get("members") or [])
    up, message = ready(cluster)
    pods = pod_names(cluster, "delivery")
    settled = wanted == replicas and up and len(members) == replicas and pod_names(cluster, "delivery", ready_only=True)
    seen = {"spec.delivery.replicas": wanted, "ring": members, "pods": pods, "ready": message}
    return bool(settled) and members == pods, seen


def quantity(value: str) -> float:
    """A Kubernetes quantity as the metrics APIs write one: "6", or "5500m" for 5.5."""
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def connections(cluster: KindCluster) -> dict[str, float] | str:
    """courier_ws_connections of each delivery pod, as the custom metrics API (prometheus-adapter) serves it; or the
    API's NotFound while the adapter knows no series of it yet (Prometheus has not scraped a delivery pod since the
    pod, or the pipeline, started; the adapter relists its series every 15 s)."""
    try:
        raw = cluster.kubectl("get", "--raw", CONNECTIONS_API.format(cluster.namespace), pending="(NotFound)")
    except Pending as not_yet:
        return str(not_yet)
    return {item["describedObject"]["name"]: quantity(item["value"]) for item in json.loads(raw)["items"]}


@pytest.fixture
def gateway_autoscaled(metrics: KindCluster) -> Iterator[KindCluster]:
    """spec.gateway.autoscaling on, from the gateway's pods as they are; afterwards off, spec.gateway.replicas again."""
    cluster = metrics
    replicas = int(cluster.get("imc", cluster.imcluster)["spec"]["gateway"]["replicas"])
    autoscaling = {"minReplicas": replicas, "maxReplicas": replicas + 1, "targetCPUUtilizationPercentage": 90}
    patch_spec(cluster, {"gateway": {"autoscaling": autoscaling}})
    try:
        yield cluster
    finally:
        patch_spec(cluster, {"gateway": {"autoscaling": None}})
        wait("the gateway's HPA to be gone", lambda: (autoscaler(cluster, "gateway") is None, "still there"))
        deployment = f"{cluster.imcluster}-gateway"
        wait(f"{replicas} ready gateway pods", lambda: (
            len(seen := pod_names(cluster, "gateway", ready_only=True)) == replicas
            and cluster.get("deployment", deployment)["spec"]["replicas"] == replicas, seen))  # fmt: skip
        wait("the IMCluster to be Ready", lambda: ready(cluster))


def gateway_cpu(cluster: KindCluster) -> tuple[bool, Any]:
    """Whether metrics-server has the CPU of every gateway pod, with the pods and what it has."""
    measured = json.loads(cluster.kubectl("get", "--raw", CPU_API.format(cluster.namespace)))["items"]
    cpu_of = {m["metadata"]["name"]: [c["usage"]["cpu"] for c in m["containers"]] for m in measured}
    gateways = pod_names(cluster, "gateway")
    return bool(gateways) and all(cpu_of.get(pod) for pod in gateways), (gateways, cpu_of)


def test_the_gateway_autoscaler_reads_its_pods_cpu_utilisation_and_is_active(gateway_autoscaled: KindCluster) -> None:
    cluster = gateway_autoscaled
    current, _ = wait("the gateway's HPA to read its pods' CPU", lambda: scaling_active(cluster, "gateway"))
    [cpu] = current
    assert cpu["type"] == "Resource" and cpu["resource"]["name"] == "cpu", cpu
    assert cpu["resource"]["current"]["averageUtilization"] >= 0, cpu
    # What it read: every gateway pod's CPU, from metrics-server (what `kubectl top pods` shows). The HPA may turn
    # active on the pods measured so far; a pod started by an earlier test is measured from its second scrape on.
    gateways, cpu_of = wait("metrics-server to measure every gateway pod", lambda: gateway_cpu(cluster))
    usage = {pod: cpu_of[pod] for pod in gateways}
    print(f"\nautoscaling: the gateway's HPA reads {cpu['resource']['current']['averageUtilization']} % CPU ({usage})")


@pytest.fixture
async def delivery_autoscaled(metrics: KindCluster) -> AsyncIterator[KindCluster]:
    """spec.delivery.autoscaling on, from one pod (one to two, PER_POD connections each, a short scale-down window);
    afterwards off, with spec.delivery.replicas as before and every gateway and delivery pod routing by the ring of
    that many (a gateway on an older ring would send the next tests' clients to a node that moves them on)."""
    cluster = metrics
    replicas = int(cluster.get("imc", cluster.imcluster)["spec"]["delivery"]["replicas"])
    autoscaling = {"minReplicas": 1, "maxReplicas": 2, "connectionsPerPod": PER_POD,
                   "scaleDownStabilizationSeconds": SCALE_DOWN_WINDOW_S}  # fmt: skip
    patch_spec(cluster, {"delivery": {"replicas": 1, "autoscaling": autoscaling}})
    try:
        yield cluster
    finally:
        # The HPA goes first: until it has, it could write its own count over the one set back here.
        patch_spec(cluster, {"delivery": {"autoscaling": None}})
        wait("the delivery HPA to be gone", lambda: (autoscaler(cluster, "delivery") is None, "still there"))
        patch_spec(cluster, {"delivery": {"replicas": replicas}})
        wait(f"a ring of {replicas} ready delivery pods", lambda: delivery_at(cluster, replicas))
        await pods_loaded_ring(cluster, f"the ring of {replicas}")


async def test_delivery_grows_to_two_pods_while_clients_hold_sockets_and_shrinks_back_once_they_leave(
    delivery_autoscaled: KindCluster, api: Api
) -> None:
    cluster = delivery_autoscaled
    first, second = (f"{cluster.imcluster}-delivery-{ordinal}" for ordinal in (0, 1))
    wait("one ready delivery pod on a ring of one", lambda: delivery_at(cluster, 1))
    wait("the custom metrics API to serve the delivery pod's connections",
         lambda: ((seen := connections(cluster)) == {first: 0}, seen))  # fmt: skip
    wait("the delivery HPA to read courier_ws_connections", lambda: scaling_active(cluster, "delivery"))

    # Each client's receiver holds a socket, half of them owned by each pod of the ring of two the HPA is to make.
    ring = json.loads(cluster.get("configmap", f"{cluster.imcluster}-ring")["data"]["ring.json"])
    pairs = await make_pairs(api, CONNECTIONS, Ring.of((first, second), vnodes=ring["vnodes"]))
    stop = asyncio.Event()
    holders = [asyncio.create_task(keep_receiving(ws_url(cluster), pair, stop)) for pair in pairs]
    opened = time.monotonic()
    try:
        await asyncio.to_thread(
            wait, "the HPA to raise spec.delivery.replicas to 2, and a ring of 2 pods", lambda: delivery_at(cluster, 2)
        )
        grown = time.monotonic() - opened
        # The sockets of the second pod's users move there (the protocol's reconnect); then each pod holds half.
        half = CONNECTIONS / 2
        await asyncio.to_thread(
            wait, f"the custom metrics API to count {half:.0f} connections on each delivery pod",
            lambda: ((seen := connections(cluster)) == {first: half, second: half}, seen),
        )  # fmt: skip
    finally:
        stop.set()
        await asyncio.gather(*holders)
    closed = time.monotonic()
    wait("the HPA to bring spec.delivery.replicas back to 1", lambda: delivery_at(cluster, 1))
    shrunk = time.monotonic() - closed
    print(f"\nautoscaling: {CONNECTIONS} sockets -> 2 delivery pods in {grown:.0f}s; closed -> 1 pod in {shrunk:.0f}s")
