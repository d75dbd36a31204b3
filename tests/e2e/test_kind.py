"""Courier on a real kind cluster: the image built from this checkout, `helm install`, the sample IMCluster brought
to Ready by the operator, and the protocol smoke test (register, login, WebSocket send, send_ack, delivery) through
a port-forwarded gateway and through `helm test`."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.e2e.conftest import NAMESPACE, READY_DEADLINE_S, SAMPLE, SMOKE, KindCluster, wait_until


def condition(imc: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in imc.get("status", {}).get("conditions", []) if c["type"] == kind), {})


@pytest.fixture(scope="module")
def sample(kind_cluster: KindCluster) -> dict[str, Any]:
    """The sample IMCluster, applied and Ready."""
    manifest = yaml.safe_load(SAMPLE.read_text())
    name = manifest["metadata"]["name"]
    kind_cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(SAMPLE))

    def ready() -> tuple[bool, str]:
        imc = kind_cluster.get("imc", name, "-n", NAMESPACE)
        current = imc.get("status", {}).get("observedGeneration") == imc["metadata"]["generation"]
        ok = condition(imc, "Ready").get("status") == "True"
        return current and ok, str(imc.get("status", {}).get("conditions"))

    wait_until(f"IMCluster {name} Ready", ready, READY_DEADLINE_S)
    return kind_cluster.get("imc", name, "-n", NAMESPACE)


def test_operator_brings_the_sample_cluster_to_ready_with_the_built_image(
    kind_cluster: KindCluster, sample: dict[str, Any]
) -> None:
    operator = kind_cluster.get("deployment", "courier-operator", "-n", NAMESPACE)
    assert operator["status"]["readyReplicas"] == 1
    assert operator["spec"]["template"]["spec"]["containers"][0]["image"] == kind_cluster.image
    name = sample["metadata"]["name"]
    gateway = kind_cluster.get("deployment", f"{name}-gateway", "-n", NAMESPACE)
    assert gateway["spec"]["template"]["spec"]["containers"][0]["image"] == kind_cluster.image
    assert sample["status"]["ring"]["members"]


def test_protocol_smoke_through_the_port_forwarded_gateway(kind_cluster: KindCluster, sample: dict[str, Any]) -> None:
    name = sample["metadata"]["name"]
    port = sample["spec"].get("gateway", {}).get("service", {}).get("port", 80)
    local = kind_cluster.port_forward(f"svc/{name}-gateway", port)
    proc = subprocess.run(
        [sys.executable, str(SMOKE)],
        env={**os.environ, "COURIER_SMOKE_URL": f"http://127.0.0.1:{local}"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "smoke: OK" in proc.stdout


def test_helm_test_hook_logs_in_and_sends_a_message(kind_cluster: KindCluster, sample: dict[str, Any]) -> None:
    out = kind_cluster.helm("test", "courier", "--namespace", NAMESPACE, "--logs", "--timeout", "10m")
    assert "Succeeded" in out, out
    assert "smoke: OK" in out
