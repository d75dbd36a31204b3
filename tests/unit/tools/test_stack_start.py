"""``make up`` starting a process that never becomes ready: the harness says why and frees the port,
so the next start is not refused for a port its own failed start still holds."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools import stack

NEVER_READY = """
import http.server, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args):
        pass

print("database not reachable", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_process_never_ready_is_stopped_and_its_answer_and_log_are_reported(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "identity.log"
    with log.open("wb") as out:
        child = subprocess.Popen([sys.executable, "-c", NEVER_READY, str(port)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while not stack._port_taken(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc = stack.Proc(name="identity", service="identity", port=port)
        with pytest.raises(SystemExit) as failed:
            stack.wait_ready(proc, child.pid, log, deadline_s=5.0)
        message = str(failed.value)
        assert "/readyz answered 503" in message
        assert "database not reachable" in message
        assert child.wait(timeout=30) is not None  # stopped
        assert not stack._port_taken(port)
    finally:
        child.kill()
        child.wait()
