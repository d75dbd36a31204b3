"""``make up`` / ``make down``: the distributed Courier on this machine.

Starts the real servers (``infra/courier-infra``), migrates, then runs the seven services as separate
``courier run`` processes with TWO delivery nodes, the gateway on 127.0.0.1:8080, and writes
``.courier/up.json`` (every process: name, pid, port, log; every server's address). Secrets are
generated once into ``.courier/stack.env``. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".courier"
UP_FILE = STATE / "up.json"
LOGS = STATE / "logs"
READY_DEADLINE_S = 90.0
OPEN_FILES = 65_536
"""Open files each process of the stack may hold, where this user may allow it (root): a gateway splicing the
10,000 WebSockets of a large group holds 20,000, past the hard limit of many machines. Every Courier process
lifts its soft limit to the hard one itself (services/common/runtime.py)."""
# The stack has fixed ports and shares the infra servers' databases and topics: test runs and benchmarks
# of any checkout on this machine take turns on this lock before they start one of their own.
STACK_LOCK = Path("/tmp/courier-stack.lock")  # noqa: S108 - machine-wide on purpose, shared by every checkout
# The Popen objects of processes this interpreter started: kept so they are reaped, not reported
# as leaked while they run on purpose.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Proc:
    name: str
    service: str
    port: int
    node_name: str = ""


PROCESSES = (
    Proc("identity", "identity", 9001),
    Proc("conversation", "conversation", 9002),
    Proc("message", "message", 9003),
    Proc("presence", "presence", 9004),
    Proc("file", "file", 9005),
    Proc("delivery-0", "delivery", 9101, "delivery-0"),
    Proc("delivery-1", "delivery", 9102, "delivery-1"),
    Proc("gateway", "gateway", 8080),
)


def _secrets() -> dict[str, str]:
    """Generated once and kept, so tokens stay valid across restarts of the stack."""
    path = STATE / "stack.env"
    if path.exists():
        return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    values = {
        "COURIER_SECRET": secrets.token_urlsafe(32),
        "COURIER_INTERNAL_TOKEN": secrets.token_urlsafe(32),
        "COURIER_JWT__KEYS": json.dumps({"k1": secrets.token_urlsafe(32)}),
        "COURIER_JWT__ACTIVE_KID": "k1",
    }
    STATE.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return values


def environment(infra: dict[str, Any], *, database: str = "mysql") -> dict[str, str]:
    """The COURIER_* settings every process of the stack shares."""
    env = infra["env"]
    delivery = {p.node_name: f"http://127.0.0.1:{p.port}" for p in PROCESSES if p.service == "delivery"}
    values = {
        **_secrets(),
        "COURIER_MODE": "prod",
        "COURIER_DATA_DIR": str(STATE / "stack-data"),
        "COURIER_DATABASE_URL": env["COURIER_TEST_MYSQL_URL" if database == "mysql" else "COURIER_TEST_POSTGRES_URL"],
        "COURIER_REDIS__URL": env["COURIER_TEST_REDIS_URL"],
        "COURIER_KAFKA__BOOTSTRAP": env["COURIER_TEST_KAFKA"],
        "COURIER_S3__ENDPOINT": env["COURIER_TEST_S3_ENDPOINT"],
        "COURIER_S3__ACCESS_KEY": env["COURIER_TEST_S3_ACCESS_KEY"],
        "COURIER_S3__SECRET_KEY": env["COURIER_TEST_S3_SECRET_KEY"],
        # The ring is a watched file, as the operator's ConfigMap is in Kubernetes: editing it is a ring change.
        "COURIER_RING__FILE": str(write_ring(list(delivery), delivery)),
        "COURIER_RING__RELOAD_S": "0.5",
    }
    for p in PROCESSES:
        if p.service not in ("delivery", "gateway"):
            values[f"COURIER_SERVICES__{p.service.upper()}"] = f"http://127.0.0.1:{p.port}"
    return values


RING_FILE = STATE / "ring.json"


def write_ring(members: list[str], urls: dict[str, str] | None = None) -> Path:
    """Publish ring membership (the version goes up only when the members change)."""
    current = json.loads(RING_FILE.read_text()) if RING_FILE.exists() else {}
    known = {**current.get("urls", {}), **(urls or {})}
    if current.get("members") == sorted(members) and known == current.get("urls"):
        return RING_FILE
    version = int(current.get("version", 0)) + (1 if current.get("members") != sorted(members) else 0)
    STATE.mkdir(parents=True, exist_ok=True)
    scratch = RING_FILE.with_suffix(".tmp")
    scratch.write_text(json.dumps({"version": version, "members": sorted(members), "vnodes": 150, "urls": known}))
    scratch.replace(RING_FILE)
    return RING_FILE


def _ready(port: int) -> bool:
    return _readiness(port) == "ready"


def _readiness(port: int) -> str:
    """``ready``, or what ``/readyz`` answered instead."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return "ready" if answer.status == 200 else f"/readyz answered {answer.status}"
    except urllib.error.HTTPError as error:
        return f"/readyz answered {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return f"/readyz unreachable ({error})"


def wait_ready(proc: Proc, pid: int, log: Path, deadline_s: float = READY_DEADLINE_S) -> None:
    """Return once the process is ready; otherwise stop it (a later start must find its port free) and
    say why, with the end of its log."""
    deadline = time.monotonic() + deadline_s
    answer = "not asked"
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise SystemExit(f"{proc.name} exited during start-up; see {log}:\n{_tail(log)}")
        answer = _readiness(proc.port)
        if answer == "ready":
            return
        time.sleep(0.2)
    stop_pid(pid)
    raise SystemExit(f"{proc.name} not ready after {deadline_s:.0f}s ({answer}); stopped, see {log}:\n{_tail(log)}")


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


@contextlib.contextmanager
def turn() -> Iterator[None]:
    """Hold the machine-wide stack lock (blocking until whoever has it is done)."""
    with STACK_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start(proc: Proc, env: dict[str, str]) -> dict[str, Any]:
    if _port_taken(proc.port):
        # Another checkout's stack (or anything else) there would pass our readiness check in our stead.
        raise SystemExit(
            f"{proc.name}: 127.0.0.1:{proc.port} is already in use by a process this checkout did not start "
            "(another checkout's make up? run make down there)"
        )
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{proc.name}.log"
    process_env = {**os.environ, **env, "COURIER_PORT": str(proc.port)}
    if proc.node_name:
        process_env["COURIER_NODE_NAME"] = proc.node_name
    with log.open("ab") as out:
        child = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "services.cli", "run", proc.service, "--log-level", "warning"],
            env=process_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
    _CHILDREN[child.pid] = child
    wait_ready(proc, child.pid, log)
    return {
        "name": proc.name,
        "service": proc.service,
        "pid": child.pid,
        "port": proc.port,
        "log": str(log),
        "node_name": proc.node_name,
    }


def stop_pid(pid: int, *, timeout_s: float = 15.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def read_up() -> dict[str, Any]:
    return dict(json.loads(UP_FILE.read_text())) if UP_FILE.exists() else {}


def write_up(state: dict[str, Any]) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    UP_FILE.write_text(json.dumps(state, indent=2) + "\n")


def migrate(env: dict[str, str]) -> None:
    subprocess.run(  # noqa: S603
        [sys.executable, "-m", "services.cli", "migrate"], env={**os.environ, **env}, cwd=REPO, check=True
    )


def up(*, database: str = "mysql", extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Start what is not running yet. ``extra_env`` overrides settings (the tests shorten timeouts);
    processes already running keep the settings they started with."""
    sys.path.insert(0, str(REPO))
    from tests.harness.infra import ensure_infra

    infra = ensure_infra()
    env = {**environment(infra, database=database), **(extra_env or {})}
    migrate(env)
    _allow_open_files(OPEN_FILES)
    state = read_up()
    running = {p["name"]: p for p in state.get("processes", []) if _alive(p["pid"]) and _ready(p["port"])}
    processes = []
    for proc in PROCESSES:
        processes.append(running.get(proc.name) or start(proc, env))
    state = {
        "gateway": "http://127.0.0.1:8080",
        "processes": processes,
        "servers": infra.get("services", {}),
        "env": {k: v for k, v in env.items() if "SECRET" not in k and "TOKEN" not in k and "KEYS" not in k},
        "definitions": [asdict(p) for p in PROCESSES],
        "database": database,
    }
    write_up(state)
    for p in processes:
        print(f"  {p['name']:<13} pid {p['pid']:<7} http://127.0.0.1:{p['port']}  log {p['log']}")
    print(f"courier is up: http://127.0.0.1:8080 (state in {UP_FILE})")
    return state


def _allow_open_files(wanted: int) -> None:
    """Raise the hard limit on open files the processes started from here inherit, if this user may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # not privileged: the processes keep the machine's limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, wanted))


def kill(name: str) -> None:
    """``kill -9`` one process of the stack (fault tests)."""
    entry = next(p for p in read_up()["processes"] if p["name"] == name)
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(entry["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(int(entry["pid"])) and time.monotonic() < deadline:
        time.sleep(0.05)


def restart(name: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Start one process again with the stack's settings and record its new pid."""
    state = read_up()
    sys.path.insert(0, str(REPO))
    from tests.harness.infra import read_infra

    env = {**environment(read_infra(), database=state.get("database", "mysql")), **(extra_env or {})}
    proc = next(p for p in PROCESSES if p.name == name)
    entry = next(p for p in state["processes"] if p["name"] == name)
    if _alive(int(entry["pid"])):
        stop_pid(int(entry["pid"]))
    fresh = start(proc, env)
    state["processes"] = [fresh if p["name"] == name else p for p in state["processes"]]
    write_up(state)
    return fresh


def down(*, infra: bool = True) -> None:
    state = read_up()
    for p in reversed(state.get("processes", [])):
        stop_pid(int(p["pid"]))
    UP_FILE.unlink(missing_ok=True)
    if infra:
        sys.path.insert(0, str(REPO))
        from tests.harness.infra import stop_infra

        stop_infra()
    print("courier is down")


def main() -> None:
    parser = argparse.ArgumentParser(prog="stack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up_cmd = commands.add_parser("up")
    up_cmd.add_argument("--database", choices=["mysql", "postgres"], default="mysql")
    down_cmd = commands.add_parser("down")
    down_cmd.add_argument("--keep-infra", action="store_true", help="leave the servers running")
    args = parser.parse_args()
    if args.command == "up":
        up(database=args.database)
    else:
        down(infra=not args.keep_infra)


if __name__ == "__main__":
    main()
