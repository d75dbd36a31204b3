"""Last of the tier (its module sorts last): deleting the IMCluster on real pods leaves nothing of it behind, the
volumes of its managed backends included (whenDeleted: Delete, the default)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import KindCluster

KINDS = "deployments,statefulsets,replicasets,services,endpointslices,configmaps,secrets,persistentvolumeclaims,pods"


def test_deleting_the_imcluster_removes_every_pod_and_volume_claim(kind_cluster: KindCluster) -> None:
    selector = f"im.courier.dev/cluster={kind_cluster.imcluster}"
    assert kind_cluster.get("persistentvolumeclaims", "-l", selector)["items"], "the backends have volume claims"
    kind_cluster.kubectl("delete", "imc", kind_cluster.imcluster, "--wait=true", "--timeout=300s", timeout=400)

    deadline = time.monotonic() + 600
    left: list[Any] = []
    while time.monotonic() < deadline:
        objects = kind_cluster.get(KINDS, "-l", selector)["items"]
        objects += [o for o in kind_cluster.get("pvc")["items"] if kind_cluster.imcluster in o["metadata"]["name"]]
        left = sorted({f"{o['kind']}/{o['metadata']['name']}" for o in objects})
        if not left:
            break
        time.sleep(3)
    if left:
        pytest.fail(f"left behind 600 s after the IMCluster was deleted: {left}")
    operator = kind_cluster.get("deployment", "courier-operator")
    assert operator["status"].get("readyReplicas") == operator["spec"]["replicas"], "the operator itself stays"
