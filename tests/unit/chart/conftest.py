"""Fixtures of the chart tests: the real helm binary from infra/kube/courier-kube's cache, and a renderer.

No cluster is needed: `helm lint` and `helm template` work offline. The binary comes from courier-kube's cache
(`courier-kube env` names it); only when the cache lacks it does the session run `courier-kube up` once, which
fetches it (and starts the control plane, stopped again at the end of the session if this session started it).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "courier"
KUBE_SCRIPT = REPO / "infra" / "kube" / "courier-kube"
# The Kubernetes minor the chart is validated against: the one courier-kube runs and kubectl/helm are built for.
KUBE_VERSION = "1.35.0"
# prometheus-operator's APIs, as `helm template` must be told a cluster serves them: the chart renders its
# ServiceMonitors and PrometheusRule only where they are (.Capabilities.APIVersions).
MONITORING_APIS = (
    "--api-versions",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "--api-versions",
    "monitoring.coreos.com/v1/PrometheusRule",
)
UP_TIMEOUT_S = 3 * 3600  # a cold courier-kube cache builds the control plane from source


@dataclass(frozen=True)
class Helm:
    binary: str

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [self.binary, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if check and proc.returncode != 0:
            pytest.fail(f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def template(
        self, *args: str, chart: Path = CHART, release: str = "courier", namespace: str = "courier"
    ) -> list[dict[str, Any]]:
        """`helm template` of the chart; every rendered object (hooks and tests included) as a dict."""
        out = self.run("template", release, str(chart), "--namespace", namespace, "--kube-version", KUBE_VERSION, *args)
        return [doc for doc in yaml.safe_load_all(out.stdout) if doc]

    def template_error(self, *args: str, chart: Path = CHART) -> str:
        """`helm template` that must fail; its error output."""
        proc = self.run("template", "courier", str(chart), "--kube-version", KUBE_VERSION, *args, check=False)
        assert proc.returncode != 0, f"helm template {shlex.join(args)} succeeded but must not:\n{proc.stdout}"
        return proc.stderr


def _kube(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KUBE_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False)


def _cached_helm() -> str | None:
    if env_helm := os.environ.get("COURIER_HELM"):
        return env_helm if os.access(env_helm, os.X_OK) else None
    for line in _kube("env").stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        if key == "COURIER_HELM":
            path = shlex.split(value)[0]
            return path if os.access(path, os.X_OK) else None
    return None


@pytest.fixture(scope="session")
def helm() -> Iterator[Helm]:
    binary = _cached_helm()
    started_cluster = False
    if binary is None:
        was_running = _kube("status").returncode == 0
        up = _kube("up", timeout=UP_TIMEOUT_S)
        if up.returncode != 0:
            pytest.fail(f"courier-kube up (to fetch helm) exited {up.returncode}:\n{up.stdout}\n{up.stderr[-4000:]}")
        started_cluster = not was_running
        binary = _cached_helm()
        if binary is None:
            pytest.fail("courier-kube up succeeded but `courier-kube env` names no executable helm")
    yield Helm(binary)
    if started_cluster:
        _kube("down")


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    """A private copy of the chart a test may add files to."""
    target = tmp_path / "courier"
    shutil.copytree(CHART, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
