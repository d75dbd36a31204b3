"""The e2e tier: Courier on a real kind cluster of this machine, every image built here from this checkout.

One cluster per test session, made by `infra/images/courier-kind up` (the same path as `make kind-up`): Docker's
engine started if needed, the Courier image, the managed backends' images and the kind node image built (cached
under ~/.cache/courier), the cluster created, the chart installed, the sample IMCluster applied and Ready. The
gateway and the object store answer on free ports of 127.0.0.1. Nothing here is skipped: a missing piece fails.
COURIER_E2E_KEEP=1 leaves the cluster running after the session (for a look with kubectl).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import Api

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "courier"
SAMPLE = REPO / "crds" / "examples" / "imcluster.yaml"
COURIER_KIND = REPO / "infra" / "images" / "courier-kind"
KUBE_SCRIPT = REPO / "infra" / "kube" / "courier-kube"
CLUSTER_NAME = "courier-e2e"
# A cold machine builds the node image, the backends and the Courier image before the cluster exists.
UP_TIMEOUT_S = 3600


class Pending(Exception):
    """A command failed the way run()'s `pending` said it may while what it asks about is not there yet; the
    message is its stderr."""


def run(argv: list[str], *, timeout: float = 300, stdin: str | None = None, pending: str | None = None) -> str:
    """The command's stdout; a failure fails the test, except one whose stderr holds `pending`: that raises
    Pending, for a wait to go on through."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 and pending is not None and pending in proc.stderr:
        raise Pending(proc.stderr.strip())
    if proc.returncode != 0:
        pytest.fail(f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-12000:]}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, probe: Callable[[], tuple[bool, str]], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    seen = ""
    while time.monotonic() < deadline:
        done, seen = probe()
        if done:
            return
        time.sleep(2)
    pytest.fail(f"gave up after {deadline_s:.0f}s waiting for {what}; last seen: {seen}")


@dataclass
class KindCluster:
    name: str
    kubeconfig: str
    image: str
    backend_images: dict[str, str]
    host_port: int
    s3_port: int
    kind_bin: str
    namespace: str
    imcluster: str
    url: str
    kubectl_bin: str = ""
    helm_bin: str = ""

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 300, pending: str | None = None) -> str:
        return run([self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", "-n", self.namespace, *args], stdin=stdin,
                   timeout=timeout, pending=pending)  # fmt: skip

    def helm(self, *args: str, timeout: float = 900) -> str:
        return run([self.helm_bin, f"--kubeconfig={self.kubeconfig}", "-n", self.namespace, *args], timeout=timeout)

    def get(self, *args: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.kubectl("get", "-o", "json", *args))
        return result


@contextlib.contextmanager
def added(addition: str, cluster: KindCluster) -> Iterator[KindCluster]:
    """The cluster with one of courier-kind's additions to it for the block (`courier-kind netpol`, `metrics`):
    installed first, removed (`courier-kind <addition>-down`) after, also when installing failed half way. A cold
    cache builds its image first: up to an hour."""
    courier_kind = [sys.executable, str(COURIER_KIND)]
    try:
        run([*courier_kind, addition, "--name", cluster.name], timeout=3600)
        yield cluster
    finally:
        run([*courier_kind, f"{addition}-down", "--name", cluster.name], timeout=900)


@pytest.fixture(scope="session")
def kind_cluster() -> Iterator[KindCluster]:
    """The cluster with Courier installed and the sample IMCluster Ready."""
    argv = [sys.executable, str(COURIER_KIND), "up", "--name", CLUSTER_NAME, "--json"]
    argv += ["--host-port", str(free_port()), "--s3-port", str(free_port())]
    try:
        described = json.loads(run(argv, timeout=UP_TIMEOUT_S).strip().splitlines()[-1])
        tools = dict(pair.split("=", 1) for pair in run([sys.executable, str(KUBE_SCRIPT), "tools"]).split())
        yield KindCluster(**described, kubectl_bin=tools["kubectl"], helm_bin=tools["helm"])
    finally:
        if not os.environ.get("COURIER_E2E_KEEP"):
            subprocess.run([sys.executable, str(COURIER_KIND), "down", "--name", CLUSTER_NAME], capture_output=True,
                           timeout=600, check=False)  # fmt: skip


@pytest.fixture
async def api(kind_cluster: KindCluster) -> AsyncIterator[Api]:
    client = Api(kind_cluster.url)
    yield client
    await client.close()
