"""Starts a real ``courier dev`` process on a free loopback port for system and browser tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

READY_DEADLINE_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A Courier to test against: ``courier dev`` (one process) or the ``make up`` stack."""

    base_url: str
    ws_url: str
    data_dir: Path
    process: subprocess.Popen[bytes] | None
    log_path: Path
    kind: str = "dev"
    part_size: int = 5 << 20

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_http_ready(
    url: str,
    process: subprocess.Popen[bytes],
    log_path: Path,
    *,
    what: str,
    error: type[Exception] = RuntimeError,
) -> None:
    """Poll ``url`` until it answers 200 (at most ``READY_DEADLINE_S``); ``error`` with ``what``'s log when the
    process exits first or the deadline passes."""
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise error(f"{what} exited with {process.returncode}:\n{log_path.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise error(f"{what} not ready after {READY_DEADLINE_S}s:\n{log_path.read_text()}")


@contextlib.contextmanager
def run_server(
    data_dir: Path, env: Mapping[str, str] | None = None, *, port: int | None = None
) -> Iterator[RunningServer]:
    """``courier dev`` with ``env`` overrides; stopped (SIGTERM, then SIGKILL) on exit."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"server-{port}.log"
    full_env = {**os.environ, "COURIER_MODE": "dev", **(env or {})}
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli",
                "dev",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--log-level",
                "warning",
            ],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(f"{base_url}/readyz", process, log_path, what="courier dev")
        part_size = int(full_env.get("COURIER_FILE__PART_SIZE", 5 << 20))
        yield RunningServer(base_url, f"ws://127.0.0.1:{port}/v1/ws", data_dir, process, log_path, "dev", part_size)
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# The environments of the run_stack blocks open in this process, innermost last: a module's fixture may
# open one while the session's `server[up]` still holds another.
_STACKS: list[dict[str, str]] = []


@contextlib.contextmanager
def _stack_turn() -> Iterator[None]:
    """Hold the machine-wide stack lock while any run_stack of this process is open (re-entrant here:
    flock would block on a second open of the file by the same process)."""
    if _STACKS:
        yield
        return
    from tools import stack

    with stack.turn():
        yield


@contextlib.contextmanager
def run_stack(env: Mapping[str, str], *, fresh: bool = False) -> Iterator[RunningServer]:
    """The distributed stack of ``make up`` (infra, migrations, every service, two delivery nodes) with
    ``env`` for the tests, stopped afterwards (the servers keep running). Nested in another run_stack,
    it reuses that stack when the settings are the same and ``fresh`` is not asked for (tests that kill
    processes or move the ring want new ones), else restarts it, and gives the outer one a stack with its
    settings back at the end."""
    from tools import stack

    wanted = dict(env)
    with _stack_turn():
        restarted = fresh or not _STACKS or _STACKS[-1] != wanted
        if restarted:
            stack.down(infra=False)
        state = stack.up(extra_env=wanted)  # starts only what is not running
        _STACKS.append(wanted)
        try:
            yield RunningServer(
                state["gateway"],
                state["gateway"].replace("http", "ws", 1) + "/v1/ws",
                stack.STATE,
                None,
                stack.LOGS / "gateway.log",
                "up",
                5 << 20,
            )
        finally:
            _STACKS.pop()
            if not _STACKS or restarted:
                stack.down(infra=False)
            if _STACKS and restarted:
                stack.up(extra_env=_STACKS[-1])
