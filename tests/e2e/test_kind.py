"""Courier on a real kind cluster: `helm install` of the chart, the sample IMCluster brought to Ready by the operator,
every pod a real container that passed its real probes, and the chart's `helm test` hook."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import KindCluster


def pods(cluster: KindCluster) -> list[dict[str, Any]]:
    return list(cluster.get("pods")["items"])


def test_every_pod_is_a_running_container_that_passed_its_probes(kind_cluster: KindCluster) -> None:
    running = [p for p in pods(kind_cluster) if p["status"].get("phase") != "Succeeded"]  # helm test pods finish
    components = {p["metadata"]["labels"].get("app.kubernetes.io/component") for p in running}
    assert {"operator", "gateway", "delivery", "identity", "conversation", "message", "presence", "file"} <= components
    assert {"redis", "kafka", "database", "minio"} <= components
    for pod in running:
        name = pod["metadata"]["name"]
        assert pod["status"]["phase"] == "Running", name
        for status in pod["status"]["containerStatuses"]:
            assert status["ready"] and status["started"], (name, status)
            assert status["containerID"].startswith("containerd://"), (name, status)
            assert "running" in status["state"], (name, status)
        for container in pod["spec"]["containers"]:
            # What made these pods Ready (or keeps the operator alive) is the kubelet probing the real processes.
            assert {"readinessProbe", "livenessProbe"} & set(container), (name, container["name"])


def test_courier_pods_run_the_image_built_from_this_checkout(kind_cluster: KindCluster) -> None:
    images = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"]["containers"][0]["image"]
        for p in pods(kind_cluster)
        if p["status"].get("phase") == "Running"
    }
    for component in ("operator", "gateway", "delivery", "identity", "conversation", "message", "presence", "file"):
        assert images[component] == kind_cluster.image, component
    backends = kind_cluster.backend_images
    assert images["redis"] == backends["redis"]
    assert images["kafka"] == backends["kafka"]
    assert images["minio"] == backends["objectStore"]
    assert images["database"] == backends["mysql"]


def test_the_ring_names_every_ready_delivery_pod(kind_cluster: KindCluster) -> None:
    imc = kind_cluster.get("imc", kind_cluster.imcluster)
    delivery = sorted(
        p["metadata"]["name"]
        for p in pods(kind_cluster)
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == "delivery"
    )
    assert len(delivery) == imc["spec"]["delivery"]["replicas"]
    assert sorted(imc["status"]["ring"]["members"]) == delivery


def test_helm_test_hook_logs_in_and_sends_a_message(kind_cluster: KindCluster) -> None:
    out = kind_cluster.helm("test", "courier", "--logs", "--timeout", "10m")
    assert "Succeeded" in out, out
    assert "smoke: OK" in out
