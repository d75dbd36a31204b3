"""The real control plane of infra/kube/courier-kube, shared by the Kubernetes tests of one session: started if
it is not running (and stopped again at the end only then), with the cached kubectl and helm binaries; and the
Gateway API's CRDs for the tests that install them."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "kube" / "courier-kube"
UP_TIMEOUT_S = 3 * 3600  # a cold cache builds etcd, kwok and the control plane from source
DEADLINE_S = 240
# The Gateway API release whose standard-channel CRDs the route tests install, from its Go module.
GATEWAY_API_MODULE, GATEWAY_API_VERSION = "sigs.k8s.io/gateway-api", "v1.6.3"
GATEWAY_API_KINDS = ("gatewayclasses", "gateways", "httproutes", "referencegrants")


class CommandFailed(AssertionError):
    def __init__(self, argv: list[str], code: int, output: str) -> None:
        super().__init__(f"{shlex.join(argv)} exited {code}:\n{output}")
        self.output = output


@dataclass(frozen=True)
class Cluster:
    kubeconfig: str
    kubectl_bin: str
    helm_bin: str
    kube_dir: Path

    def kubectl(self, *args: str, stdin: str | None = None, kubeconfig: str | None = None) -> str:
        return run([self.kubectl_bin, f"--kubeconfig={kubeconfig or self.kubeconfig}", *args], stdin=stdin)

    def helm(self, *args: str, timeout: float = 300) -> str:
        return run([self.helm_bin, "--kubeconfig", self.kubeconfig, *args], timeout=timeout)

    def get(self, *args: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.kubectl("get", "-o", "json", *args))
        return result

    def find(self, *args: str) -> dict[str, Any] | None:
        """`kubectl get` of one object, or None when it does not exist."""
        found = json.loads(self.kubectl("get", "--ignore-not-found", "-o", "json", *args) or "null")
        return found if found else None

    def apply(self, *manifests: dict[str, Any]) -> str:
        return self.kubectl(
            "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
        )


def run(argv: list[str], stdin: str | None = None, timeout: float = 120, cwd: str | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd)
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stdout + proc.stderr)
    return proc.stdout


def script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False)


def wait_until(what: str, probe: Callable[[], tuple[bool, Any]], deadline_s: float = DEADLINE_S) -> float:
    """Poll ``probe`` (returning (done, what it saw)) until done; returns the seconds it took."""
    started = time.monotonic()
    seen: Any = None
    while time.monotonic() - started < deadline_s:
        done, seen = probe()
        if done:
            return time.monotonic() - started
        time.sleep(0.5)
    pytest.fail(f"gave up after {deadline_s}s waiting for {what}; last seen: {seen}")


def gateway_api_crds() -> list[Path]:
    """The CRDs of GatewayClass, Gateway, HTTPRoute and ReferenceGrant (the standard channel) of GATEWAY_API_VERSION,
    taken from the Go module (`go mod download`) once and kept under ~/.cache/courier/gateway-api-<version>/."""
    cache = Path(os.environ.get("COURIER_CACHE_DIR", Path.home() / ".cache" / "courier")).absolute()
    kept = cache / f"gateway-api-{GATEWAY_API_VERSION}"
    files = [kept / f"gateway.networking.k8s.io_{kind}.yaml" for kind in GATEWAY_API_KINDS]
    if all(f.exists() for f in files):
        return files
    go = shutil.which("go") or "/usr/local/go/bin/go"
    with tempfile.TemporaryDirectory() as outside_any_module:
        answer = run(
            [go, "mod", "download", "-json", f"{GATEWAY_API_MODULE}@{GATEWAY_API_VERSION}"],
            timeout=600,
            cwd=outside_any_module,
        )
    standard = Path(json.loads(answer)["Dir"]) / "config" / "crd" / "standard"
    staging = kept.with_name(kept.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for file in files:
        shutil.copyfile(standard / file.name, staging / file.name)
    shutil.rmtree(kept, ignore_errors=True)
    staging.rename(kept)
    return files


@pytest.fixture(scope="session")
def kube() -> Iterator[Cluster]:
    was_running = script("status").returncode == 0
    up = script("up", timeout=UP_TIMEOUT_S)
    if up.returncode != 0:
        pytest.fail(f"courier-kube up exited {up.returncode}:\n{up.stdout}\n{up.stderr[-6000:]}")
    env = {}
    for line in script("env").stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0]
    yield Cluster(env["KUBECONFIG"], env["COURIER_KUBECTL"], env["COURIER_HELM"], Path(env["COURIER_KUBE_DIR"]))
    if not was_running:  # leave a cluster someone else started alone
        script("down")
