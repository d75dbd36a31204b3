"""`helm install` of charts/courier on the real control plane: the release deploys, the CRD is
established, the operator runs as its own ServiceAccount under its ClusterRole, and uninstall
removes what the release created."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.k8s.conftest import Cluster, wait_until

CHART = Path(__file__).resolve().parents[2] / "charts" / "courier"


def test_helm_install_deploys_the_operator_and_the_crd_and_uninstall_removes_them(kube: Cluster) -> None:
    release, namespace = f"c{uuid.uuid4().hex[:8]}", f"helm-{uuid.uuid4().hex[:8]}"
    kube.helm(
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        "--wait",
        "--timeout",
        "180s",
    )
    try:
        assert "STATUS: deployed" in kube.helm("status", release, "--namespace", namespace)
        kube.kubectl("wait", "--for=condition=Established", "crd/imclusters.im.courier.dev", "--timeout=60s")
        [deployment] = kube.get("deployments", "-n", namespace)["items"]
        # Two operators, one leading on a Lease the release's Role lets it write; rolled one pod at a time.
        assert deployment["spec"]["replicas"] == 2
        assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
        assert kube.find("role", f"{release}-courier-operator-lease", "-n", namespace)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["containers"][0]["livenessProbe"]
        account = pod["serviceAccountName"]
        assert kube.find("serviceaccount", account, "-n", namespace)
        role = kube.find("clusterrole", f"{release}-courier-operator") or kube.find(
            "clusterrole", f"{release}-operator"
        )
        assert role is not None and role["rules"], "the operator's ClusterRole is installed with its rules"
        wait_until(
            "the operator Deployment to be available",
            lambda: (
                kube.get("deployment", deployment["metadata"]["name"], "-n", namespace)["status"].get(
                    "availableReplicas"
                )
                == 2,
                None,
            ),
        )
    finally:
        kube.helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "120s")
    assert kube.get("deployments", "-n", namespace)["items"] == []
    kube.kubectl("delete", "namespace", namespace, "--wait=false")
