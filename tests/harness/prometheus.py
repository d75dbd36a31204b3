"""A real Prometheus and promtool (Debian's package, fetched by infra/courier-prometheus) for the tests of the
dashboards and alert rules.

Import as ``tests.harness.prometheus``; ``promtool(...)`` runs the rule checker, ``run_prometheus(...)`` starts a
server on a free loopback port with a scrape configuration of the test's, stopped when the block ends.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import yaml  # type: ignore[import-untyped]

from tests.support.server import free_port, wait_http_ready

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "courier-prometheus"


class PrometheusUnavailable(RuntimeError):
    """The binaries could not be fetched or the server did not start; the message carries their output."""


@cache
def bindir() -> Path:
    """The directory of ``prometheus`` and ``promtool``, fetched into the cache on first use."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "install"], capture_output=True, text=True, timeout=1800, check=False
    )
    if proc.returncode != 0:
        raise PrometheusUnavailable(f"courier-prometheus install exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip())


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bindir() / "promtool"), *args], capture_output=True, text=True, timeout=300, cwd=cwd, check=False
    )


@dataclass(frozen=True)
class Prometheus:
    url: str
    log_path: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) ``expr`` evaluates to now; a bad query raises with
        Prometheus's own error."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = answer.json()
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus refused {expr!r}: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else [{"value": data["result"]}]
        return result

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = httpx.get(f"{self.url}/api/v1/targets", timeout=30).json()["data"][
            "activeTargets"
        ]
        return targets


@contextlib.contextmanager
def run_prometheus(config: dict[str, Any], workdir: Path) -> Iterator[Prometheus]:
    """Prometheus with ``config`` (prometheus.yml as a dict), its data in ``workdir``, on 127.0.0.1 only."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    checked = promtool("check", "config", str(config_path))
    if checked.returncode != 0:
        raise PrometheusUnavailable(f"promtool check config:\n{checked.stdout}{checked.stderr}")
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                str(bindir() / "prometheus"),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(f"{url}/-/ready", process, log_path, what="prometheus", error=PrometheusUnavailable)
        yield Prometheus(url, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
