"""The e2e tier: a real kind cluster with the real image. It needs a Docker engine and kind; where either is missing
every test here is skipped with exactly what is missing (the only tier allowed to skip)."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "courier"
SAMPLE = REPO / "crds" / "examples" / "imcluster.yaml"
SMOKE = CHART / "files" / "smoke.py"
KUBE_SCRIPT = REPO / "infra" / "kube" / "courier-kube"
NAMESPACE = "courier"
BUILD_TIMEOUT_S = 1800
# Managed Kafka, MySQL, Redis and MinIO images are pulled by kind's node on first use: be generous.
READY_DEADLINE_S = 900


def run(argv: list[str], *, timeout: float = 300, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if proc.returncode != 0:
        pytest.fail(f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def missing_prerequisite() -> str | None:
    """Why this machine cannot run the e2e tier, or None when it can."""
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not installed (no `docker` on PATH)"
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60, check=False)
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no Docker engine reachable (`docker info` exited {info.returncode}: {reason})"
    if shutil.which(os.environ.get("COURIER_KIND", "kind")) is None:
        return "kind is not installed (no `kind` on PATH; set COURIER_KIND to its path)"
    return None


def kube_tool(name: str) -> str:
    """kubectl or helm: $COURIER_KUBECTL / $COURIER_HELM, else courier-kube's cache, else PATH."""
    if env := os.environ.get(f"COURIER_{name.upper()}"):
        return env
    out = subprocess.run([str(KUBE_SCRIPT), "env"], capture_output=True, text=True, timeout=60, check=False).stdout
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        if key == f"COURIER_{name.upper()}" and os.access(shlex.split(value)[0], os.X_OK):
            return shlex.split(value)[0]
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: run infra/kube/courier-kube up once (it caches {name}) or put it on PATH")
    return found


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
    kubeconfig: Path
    image: str
    kubectl_bin: str
    helm_bin: str
    forwards: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 300) -> str:
        return run([self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args], stdin=stdin, timeout=timeout)

    def helm(self, *args: str, timeout: float = 900) -> str:
        return run([self.helm_bin, f"--kubeconfig={self.kubeconfig}", *args], timeout=timeout)

    def get(self, *args: str) -> dict[str, Any]:
        import json

        result: dict[str, Any] = json.loads(self.kubectl("get", "-o", "json", *args))
        return result

    def port_forward(self, target: str, remote_port: int) -> int:
        """`kubectl port-forward` to a local free port; returns the port once it accepts connections."""
        port = free_port()
        argv = [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", "-n", NAMESPACE, "port-forward"]
        forward = subprocess.Popen([*argv, target, f"{port}:{remote_port}"], stdout=subprocess.DEVNULL)
        self.forwards.append(forward)

        def accepting() -> tuple[bool, str]:
            if forward.poll() is not None:
                pytest.fail(f"kubectl port-forward {target} exited {forward.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            except OSError as exc:
                return False, str(exc)
            return True, "accepting"

        wait_until(f"port-forward to {target}", accepting, 60)
        return port


@pytest.fixture(scope="session")
def kind_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KindCluster]:
    """A new kind cluster with the image built from this checkout loaded into it and the chart installed."""
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(f"e2e needs Docker and kind: {reason}")
    kind = shutil.which(os.environ.get("COURIER_KIND", "kind")) or "kind"
    suffix = uuid.uuid4().hex[:8]
    name = f"courier-e2e-{suffix}"
    image = f"courier:e2e-{suffix}"
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    run(["docker", "build", "--tag", image, str(REPO)], timeout=BUILD_TIMEOUT_S)
    run([kind, "create", "cluster", "--name", name, "--kubeconfig", str(kubeconfig), "--wait", "300s"], timeout=900)
    cluster = KindCluster(name, kubeconfig, image, kube_tool("kubectl"), kube_tool("helm"))
    try:
        run([kind, "load", "docker-image", image, "--name", name], timeout=900)
        repository, _, tag = image.partition(":")
        cluster.helm(
            "install", "courier", str(CHART), "--namespace", NAMESPACE, "--create-namespace",
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set", "image.pullPolicy=IfNotPresent", "--wait", "--timeout", "10m",
        )  # fmt: skip
        yield cluster
    finally:
        for forward in cluster.forwards:
            forward.terminate()
            forward.wait(timeout=30)
        subprocess.run([kind, "delete", "cluster", "--name", name], capture_output=True, timeout=600, check=False)
