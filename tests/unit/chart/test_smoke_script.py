"""The `helm test` smoke script really exercises the protocol: it passes against a running `courier dev` and fails
clearly when no gateway answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.server import free_port, run_server
from tests.unit.chart.conftest import CHART

SCRIPT = CHART / "files" / "smoke.py"


def run_smoke(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    # -I: no user site, no current directory on sys.path, as in the image where only the venv's packages exist.
    return subprocess.run(
        [sys.executable, "-I", str(SCRIPT)],
        env={"PATH": os.environ.get("PATH", ""), "COURIER_SMOKE_URL": url, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_smoke_script_registers_logs_in_sends_and_sees_delivery(tmp_path: Path) -> None:
    with run_server(tmp_path / "data") as server:
        proc = run_smoke(server.base_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "send_ack seq 1" in proc.stdout
    assert "peer received seq 1 and acked it" in proc.stdout
    assert "smoke: OK" in proc.stdout


def test_smoke_script_fails_with_the_reason_when_no_gateway_answers() -> None:
    proc = run_smoke(f"http://127.0.0.1:{free_port()}", COURIER_SMOKE_READY_DEADLINE_S="1")
    assert proc.returncode == 1
    assert "smoke: FAILED: gateway not ready after 1s" in proc.stderr


def test_smoke_script_needs_the_gateway_url() -> None:
    proc = run_smoke("")
    assert proc.returncode == 2
    assert "COURIER_SMOKE_URL" in proc.stderr
