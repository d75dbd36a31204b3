"""docs/operations.md's path for trying the operator without containers: `make kube-up`, `make operator-local`, then
the documented sample applied as it is. It must reach Ready: the operator has a default image, and the managed
backends' volume claims bind (courier-kube keeps a default StorageClass of static volumes)."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.conftest import Cluster, wait_until

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "crds" / "examples" / "imcluster.yaml"


@pytest.fixture
def operator_local(kube: Cluster, tmp_path: Path) -> Iterator[Path]:
    """`make operator-local` as a user runs it, in its own process group; its output in a file."""
    log = tmp_path / "operator-local.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["make", "-s", "operator-local"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_the_documented_sample_reaches_ready_under_make_operator_local(kube: Cluster, operator_local: Path) -> None:
    namespace = f"local-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", namespace)
    try:
        kube.kubectl("apply", "-n", namespace, "-f", str(SAMPLE))

        def ready() -> tuple[bool, Any]:
            imc = kube.get("imc", "chat", "-n", namespace)
            conditions = {c["type"]: c for c in (imc.get("status") or {}).get("conditions") or []}
            done = conditions.get("Ready", {}).get("status") == "True"
            return done, [conditions.get("Ready"), operator_local.read_text(errors="replace")[-1500:]]

        wait_until("the sample to be Ready under make operator-local", ready, deadline_s=300)
        claims = kube.get("pvc", "-n", namespace)["items"]
        assert len(claims) == 4 and all(c["status"]["phase"] == "Bound" for c in claims), claims
        gateway = kube.get("deployment", "chat-gateway", "-n", namespace)
        assert gateway["spec"]["template"]["spec"]["containers"][0]["image"] == "courier:0.1.0"
    finally:
        kube.kubectl("delete", "namespace", namespace, "--wait=false")
