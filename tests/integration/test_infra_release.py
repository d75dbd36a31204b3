"""`courier-infra up` starts a server again only once its killed predecessor has let go of its ports.

A JVM killed with SIGKILL shows as a zombie while its other threads still hold its sockets and data-dir lock; a
new Kafka started then exits at once. These are the two conditions the harness waits on, made without a JVM.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness.infra import cli_module  # noqa: E402

# The main thread ends with pthread_exit while a second thread keeps the process (and its sockets) alive.
HALF_EXITED = """
import ctypes, threading, time
threading.Thread(target=time.sleep, args=(600,)).start()
print("ready", flush=True)
ctypes.CDLL(None).pthread_exit(None)
"""


@pytest.fixture
def half_exited() -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen([sys.executable, "-c", HALF_EXITED], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc
        proc.kill()


def test_a_process_whose_main_thread_is_a_zombie_but_others_run_is_still_exiting(
    half_exited: subprocess.Popen[str],
) -> None:
    infra = cli_module()
    deadline = time.monotonic() + 60
    while infra.pid_alive(half_exited.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not infra.pid_alive(half_exited.pid), "the main thread never turned zombie"
    assert infra.still_exiting(half_exited.pid)
    half_exited.send_signal(signal.SIGKILL)
    half_exited.wait(timeout=60)
    assert not infra.still_exiting(half_exited.pid)


def test_a_port_whose_owner_no_longer_accepts_still_counts_as_bound() -> None:
    infra = cli_module()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        waiting = [socket.socket() for _ in range(4)]  # clients a dead process never accepts fill its backlog
        for client in waiting:
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
        try:
            assert not infra.port_open(port), "the backlog did not fill; the case below is not exercised"
            assert infra.port_listening(port)
        finally:
            for client in waiting:
                client.close()
    assert not infra.port_listening(port)
