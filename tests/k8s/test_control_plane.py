"""The local control plane from infra/kube/courier-kube runs real workloads: kwok's fake nodes take Deployment and
StatefulSet pods to Running and Ready, and the cached kubectl and helm talk to the real kube-apiserver."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "kube" / "courier-kube"
# A cold cache builds etcd, kwok and the control plane from source, which takes a long while on 2 cores.
UP_TIMEOUT_S = 3 * 3600
WORKLOAD_DEADLINE_S = 240


@dataclass(frozen=True)
class Cluster:
    kubeconfig: str
    kubectl_bin: str
    helm_bin: str
    kube_dir: Path

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return _run([self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args], stdin=stdin)

    def get(self, *args: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.kubectl("get", "-o", "json", *args))
        return result

    def apply(self, *manifests: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))

    def helm(self, *args: str) -> str:
        return _run([self.helm_bin, f"--kubeconfig={self.kubeconfig}", *args])


def _run(argv: list[str], stdin: str | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False)


def wait_until(what: str, probe: Callable[[], tuple[bool, str]], deadline_s: float = WORKLOAD_DEADLINE_S) -> None:
    """Poll `probe` (returning (done, what it saw)) until it is done or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    seen = ""
    while time.monotonic() < deadline:
        done, seen = probe()
        if done:
            return
        time.sleep(0.5)
    pytest.fail(f"gave up after {deadline_s}s waiting for {what}; last seen: {seen}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    was_running = _script("status").returncode == 0
    up = _script("up", timeout=UP_TIMEOUT_S)
    if up.returncode != 0:
        pytest.fail(f"courier-kube up exited {up.returncode}:\n{up.stdout}\n{up.stderr[-6000:]}")
    env = {}
    for line in _script("env").stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0]
    yield Cluster(env["KUBECONFIG"], env["COURIER_KUBECTL"], env["COURIER_HELM"], Path(env["COURIER_KUBE_DIR"]))
    if not was_running:  # leave a cluster someone else started alone; stop the one this module started
        _script("down")


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"cp-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)

    def has_default_service_account() -> tuple[bool, str]:
        # The ServiceAccount admission plugin rejects pods until the controller-manager has made this account.
        found = cluster.kubectl("get", "serviceaccounts", "-n", name, "-o", "name")
        return "serviceaccount/default" in found.split(), found

    wait_until(f"the default ServiceAccount in {name}", has_default_service_account)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def _pod_summary(pod: dict[str, Any]) -> str:
    ready = _condition(pod, "Ready")
    return f"{pod['metadata']['name']}:{pod['status'].get('phase')}/ready={ready}@{pod['spec'].get('nodeName')}"


def _condition(obj: dict[str, Any], kind: str) -> str | None:
    for condition in obj.get("status", {}).get("conditions", []):
        if condition["type"] == kind:
            status: str = condition["status"]
            return status
    return None


def _running_and_ready(pods: list[dict[str, Any]]) -> bool:
    return all(
        p["status"].get("phase") == "Running"
        and _condition(p, "Ready") == "True"
        and str(p["spec"].get("nodeName", "")).startswith("kwok-node-")
        for p in pods
    )


def _container(name: str) -> dict[str, Any]:
    # kwok fakes the containers, so the image is never pulled; a reserved domain makes that plain.
    return {"name": name, "image": "registry.courier.invalid/fake:1", "ports": [{"containerPort": 8080}]}


def test_deployment_with_two_replicas_gets_two_running_ready_pods_on_kwok_nodes(
    cluster: Cluster, namespace: str
) -> None:
    labels = {"app": "web"}
    cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [_container("web")]}},
            },
        }
    )

    def settled() -> tuple[bool, str]:
        deployment = cluster.get("deployment", "web", "-n", namespace)
        pods = cluster.get("pods", "-n", namespace, "-l", "app=web")["items"]
        status = deployment.get("status", {})
        done = (
            status.get("observedGeneration") == deployment["metadata"]["generation"]
            and status.get("availableReplicas") == 2
            and status.get("readyReplicas") == 2
            and _condition(deployment, "Available") == "True"
            and len(pods) == 2
            and _running_and_ready(pods)
        )
        return done, f"status={status} pods={[_pod_summary(p) for p in pods]}"

    wait_until("the Deployment to report 2 available replicas", settled)


def test_statefulset_pods_are_created_with_stable_names_and_become_ready(cluster: Cluster, namespace: str) -> None:
    labels = {"app": "store"}
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "store", "namespace": namespace},
            "spec": {"clusterIP": "None", "selector": labels, "ports": [{"port": 8080}]},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "store", "namespace": namespace},
            "spec": {
                "serviceName": "store",
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [_container("store")]}},
            },
        },
    )

    def settled() -> tuple[bool, str]:
        statefulset = cluster.get("statefulset", "store", "-n", namespace)
        pods = cluster.get("pods", "-n", namespace, "-l", "app=store")["items"]
        names = sorted(p["metadata"]["name"] for p in pods)
        done = (
            names == ["store-0", "store-1"]
            and _running_and_ready(pods)
            and statefulset.get("status", {}).get("readyReplicas") == 2
        )
        return done, f"status={statefulset.get('status')} pods={[_pod_summary(p) for p in pods]}"

    wait_until("the StatefulSet's pods store-0 and store-1 to be Ready", settled)


def test_cached_kubectl_reports_the_apiserver_version_the_script_pinned(cluster: Cluster) -> None:
    pinned = json.loads((cluster.kube_dir / "kube.json").read_text())["versions"]["kubernetes"]

    versions = json.loads(cluster.kubectl("version", "-o", "json"))

    assert versions["serverVersion"]["gitVersion"] == pinned
    assert versions["clientVersion"]["minor"] == versions["serverVersion"]["minor"]


def test_cached_helm_installs_a_chart_and_waits_for_its_pods(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    assert cluster.helm("version", "--short").startswith("v")
    cluster.helm("create", str(tmp_path / "demo"))

    cluster.helm("install", "demo", str(tmp_path / "demo"), "-n", namespace, "--wait", "--timeout", "4m")

    releases = json.loads(cluster.helm("list", "-n", namespace, "-o", "json"))
    assert [(r["name"], r["status"]) for r in releases] == [("demo", "deployed")]
    pods = cluster.get("pods", "-n", namespace, "-l", "app.kubernetes.io/instance=demo")["items"]
    assert len(pods) == 1
    assert _running_and_ready(pods), [_pod_summary(p) for p in pods]
