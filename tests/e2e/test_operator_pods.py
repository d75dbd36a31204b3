"""The operator on real pods: a restart of its own pod changes nothing, and a deleted child comes back and serves."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import KindCluster

DEADLINE_S = 600.0
OWNED = ("deployments", "statefulsets", "services", "configmaps")


def wait(what: str, probe: Any, deadline_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + deadline_s
    seen: Any = None
    while time.monotonic() < deadline:
        done, seen = probe()
        if done:
            return seen
        time.sleep(3)
    pytest.fail(f"gave up after {deadline_s:.0f}s waiting for {what}; last seen: {seen}")


def ready(cluster: KindCluster) -> tuple[bool, Any]:
    imc = cluster.get("imc", cluster.imcluster)
    status = imc.get("status") or {}
    condition = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
    current = status.get("observedGeneration") == imc["metadata"]["generation"]
    return current and condition.get("status") == "True", condition.get("message")


def children(cluster: KindCluster) -> dict[str, tuple[str, str]]:
    """uid and generation (resourceVersion where there is none) of every object the IMCluster owns."""
    found = cluster.get(",".join(OWNED), "-l", f"im.courier.dev/cluster={cluster.imcluster}")["items"]
    return {
        f"{o['kind']}/{o['metadata']['name']}": (
            o["metadata"]["uid"],
            str(o["metadata"].get("generation") or o["metadata"]["resourceVersion"]),
        )
        for o in found
        if o["kind"] != "ConfigMap" or not o["metadata"]["name"].endswith("-ring")  # the ring is status-like
    }


def pod_uids(cluster: KindCluster) -> set[str]:
    pods = cluster.get("pods", "-l", f"im.courier.dev/cluster={cluster.imcluster}")["items"]
    return {p["metadata"]["uid"] for p in pods if p["metadata"].get("deletionTimestamp") is None}


def test_restarting_the_operator_pod_changes_no_child_and_restarts_no_pod(kind_cluster: KindCluster) -> None:
    wait("the IMCluster to be Ready", lambda: ready(kind_cluster))
    before, pods_before = children(kind_cluster), pod_uids(kind_cluster)
    # The leading operator (the holder of the chart's Lease): the standby takes over, and the Deployment replaces it.
    leader = kind_cluster.get("lease", "courier-operator")["spec"]["holderIdentity"]
    operator = kind_cluster.get("pod", leader)
    kind_cluster.kubectl("delete", "pod", operator["metadata"]["name"], "--wait=true", "--timeout=120s")

    def replaced() -> tuple[bool, Any]:
        pods = kind_cluster.get("pods", "-l", "app.kubernetes.io/component=operator")["items"]
        up = [p for p in pods if all(s["ready"] for s in p["status"].get("containerStatuses") or [{"ready": False}])]
        holder = kind_cluster.get("lease", "courier-operator")["spec"].get("holderIdentity")
        led = holder in {p["metadata"]["name"] for p in up} and holder != leader
        return led and len(up) == 2, (holder, [p["status"].get("phase") for p in pods])

    wait("another operator pod to lead and a new one to be ready", replaced)
    # The new operator resumes, finds every child as it wants it, and changes nothing.
    wait("the IMCluster to be Ready again", lambda: ready(kind_cluster))
    assert children(kind_cluster) == before
    assert pod_uids(kind_cluster) == pods_before


def test_a_deleted_child_is_recreated_and_serves_again(kind_cluster: KindCluster) -> None:
    name = f"{kind_cluster.imcluster}-presence"
    old = kind_cluster.get("deployment", name)["metadata"]["uid"]
    kind_cluster.kubectl("delete", "deployment", name, "--wait=true", "--timeout=120s")

    def recreated() -> tuple[bool, Any]:
        found = kind_cluster.get("deployments", "-l", f"im.courier.dev/cluster={kind_cluster.imcluster}")["items"]
        again = [d for d in found if d["metadata"]["name"] == name and d["metadata"]["uid"] != old]
        return bool(again) and again[0].get("status", {}).get("readyReplicas", 0) >= 1, [
            d["metadata"]["name"] for d in found
        ]

    wait("the operator to recreate the presence Deployment with a ready pod", recreated)
    wait("the IMCluster to be Ready again", lambda: ready(kind_cluster))


def test_the_status_names_the_ring_version_every_gateway_and_delivery_pod_has_loaded(kind_cluster: KindCluster) -> None:
    """Read by the operator from each pod's /metrics through the API server's pod proxy: only real pods answer."""
    wait("the IMCluster to be Ready", lambda: ready(kind_cluster))

    def loaded() -> tuple[bool, Any]:
        ring = (kind_cluster.get("imc", kind_cluster.imcluster).get("status") or {}).get("ring") or {}
        pods = kind_cluster.get("pods", "-l", f"im.courier.dev/cluster={kind_cluster.imcluster}")["items"]
        running = {
            p["metadata"]["name"]
            for p in pods
            if p["metadata"]["labels"].get("app.kubernetes.io/component") in ("gateway", "delivery")
            and p["status"].get("phase") == "Running"
            and p["metadata"].get("deletionTimestamp") is None
        }
        listed = {p["name"]: p for p in ring.get("pods") or []}
        on_version = all(p.get("version") == ring.get("version") for p in listed.values())
        return bool(running) and set(listed) == running and on_version, ring

    ring = wait("every gateway and delivery pod listed on the published ring version", loaded)
    assert ring["loaded"].startswith(f"{len(ring['pods'])}/{len(ring['pods'])} pods"), ring["loaded"]
