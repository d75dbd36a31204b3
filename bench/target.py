"""The server under test: loopback only, its WebSocket URL, and the pids of its processes.

The tool refuses anything but a loopback address, so it can never be pointed at someone else's
server. Pids (for resident memory and CPU time) come from ``--pid``, from ``.courier/up.json``
(``make up``), or from the process listening on the target's port (``make dev``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
UP_FILE = REPO / ".courier" / "up.json"
# Generous limits for a spawned ``courier dev``: the benchmark measures the server, not its limiter.
GENEROUS_LIMITS = {
    "COURIER_LIMITS__GLOBAL__RATE": "1000000",
    "COURIER_LIMITS__GLOBAL__BURST": "2000000",
    "COURIER_LIMITS__IP__RATE": "1000000",
    "COURIER_LIMITS__IP__BURST": "2000000",
    "COURIER_LIMITS__USER__RATE": "1000000",
    "COURIER_LIMITS__USER__BURST": "2000000",
}
# A cheap argon2 cost for a spawned ``courier dev``: preparing 10,000 logins at the default cost takes
# most of an hour of CPU, and password hashing is not what these scenarios measure.
CHEAP_PASSWORDS = {
    "COURIER_PASSWORDS__TIME_COST": "1",
    "COURIER_PASSWORDS__MEMORY_KIB": "1024",
    "COURIER_PASSWORDS__PARALLELISM": "1",
}


class TargetError(Exception):
    """The target cannot be used (not loopback, not running, not ready)."""


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def loopback_url(url: str, *, resolve: bool = True) -> str:
    """``url`` without a trailing slash, or ``TargetError`` unless every address of its host is
    loopback (``localhost`` is resolved: a name that also maps elsewhere is refused)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TargetError(f"target must be an http:// or https:// URL, not {url!r}")
    host = parts.hostname
    if not host:
        raise TargetError(f"target {url!r} has no host")
    if is_loopback(host):
        return url.rstrip("/")
    if not resolve:
        raise TargetError(f"refusing {host!r}: the load tool only drives loopback servers")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, parts.port or 80, proto=socket.IPPROTO_TCP)}
    except OSError as exc:
        raise TargetError(f"cannot resolve {host!r}: {exc}") from exc
    if not addresses or not all(is_loopback(str(a)) for a in addresses):
        raise TargetError(f"refusing {host!r} ({', '.join(sorted(map(str, addresses)))}): loopback servers only")
    return url.rstrip("/")


def ws_url(base_url: str) -> str:
    """The ``/v1/ws`` URL beside an HTTP base URL."""
    scheme, rest = base_url.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/v1/ws"


def label_of(base_url: str) -> str:
    """A file-name-safe name of a target: ``127.0.0.1-8080``."""
    parts = urlsplit(base_url)
    return re.sub(r"[^A-Za-z0-9.-]+", "-", f"{parts.hostname}-{parts.port or 80}")


@dataclass
class Target:
    """One server under test."""

    name: str
    base_url: str
    kind: str  # "dev", "up" or "url"
    pids: dict[str, int] = field(default_factory=dict)  # every process: name -> pid
    delivery: list[str] = field(default_factory=list)  # names of the processes holding sockets
    cache_key: str = ""
    users_dir: Path | None = None
    """Where the user pool's tokens are kept: beside the data of the server that issued them, so that every
    checkout measuring that server shares them (a login of a pool user revokes that device's earlier tokens,
    so two caches of one server's users take each other's tokens away). ``None``: the results directory."""

    @property
    def ws_url(self) -> str:
        return ws_url(self.base_url)

    @property
    def delivery_pids(self) -> dict[str, int]:
        return {name: pid for name, pid in self.pids.items() if name in self.delivery}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on loopback TCP ``port`` (Linux /proc), if visible."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            inodes |= listening_inodes(Path(table).read_text(), port)
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        return int(proc.name)
    return None


def listening_inodes(table: str, port: int) -> set[str]:
    """Socket inodes in a /proc/net/tcp table that LISTEN (state 0A) on ``port``."""
    found = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
            found.add(inode)
    return found


def from_url(url: str, *, pids: list[int]) -> Target:
    base = loopback_url(url)
    target = Target(name=label_of(base), base_url=base, kind="url", cache_key=label_of(base))
    if pids:
        target.pids = {f"pid-{pid}": pid for pid in pids}
        target.delivery = list(target.pids)
        return target
    up = read_up()
    if up and str(up.get("gateway", "")).rstrip("/") == base:
        return from_up(up)
    port = urlsplit(base).port or 80
    pid = listener_pid(port)
    if pid is not None:
        target.pids = {"server": pid}
        target.delivery = ["server"]
    return target


def read_up() -> dict[str, object] | None:
    """``.courier/up.json`` when it lists running processes."""
    try:
        state = json.loads(UP_FILE.read_text())
    except (OSError, ValueError):
        return None
    processes = state.get("processes") or []
    if not processes or not all(alive(int(p["pid"])) for p in processes):
        return None
    return dict(state)


def from_up(state: Mapping[str, object] | None = None) -> Target:
    state = state or read_up()
    if not state:
        raise TargetError("make up is not running (.courier/up.json lists no live processes)")
    base = loopback_url(str(state["gateway"]))
    processes = state["processes"]
    assert isinstance(processes, list)
    # The infra servers' directory, which every checkout's make up shares. Imported here, as make up itself is: the
    # harness is in the repository, not in the installed package, and `courier bench --target URL` needs neither.
    from tests.harness.infra import infra_dir

    pids = {str(p["name"]): int(p["pid"]) for p in processes}
    delivery = [name for name in pids if name.startswith("delivery")]
    pids.update(infra_pids())
    return Target(
        name="up", base_url=base, kind="up", pids=pids, delivery=delivery, cache_key="up", users_dir=infra_dir()
    )


def infra_pids() -> dict[str, int]:
    """The running servers of ``make infra-up`` (Redis, MariaDB, PostgreSQL, Kafka, MinIO) that ``make up``
    uses: the server's CPU per message counts the databases and brokers too."""
    from tests.harness.infra import infra_dir

    state_file = infra_dir() / "infra.json"
    try:
        services = json.loads(state_file.read_text()).get("services") or {}
    except (OSError, ValueError):
        return {}
    return {
        str(name): int(service["pid"])
        for name, service in services.items()
        if isinstance(service, dict) and service.get("running") and service.get("pid") and alive(int(service["pid"]))
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(base_url: str, *, deadline_s: float = 60.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TargetError(f"the server exited with {process.returncode} during start-up")
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.2)
    raise TargetError(f"{base_url} not ready after {deadline_s:.0f}s")


@contextlib.contextmanager
def spawned_up() -> Iterator[Target]:
    """``make up`` of our own when none is running: the stack with generous rate limits and a cheap
    password hash, stopped on exit (the infra servers keep running). Waits its turn on the stack lock
    while a test run of any checkout has the stack."""
    from tools import stack

    with stack.turn():
        stack.down(infra=False)
        stack.up(extra_env={**GENEROUS_LIMITS, **CHEAP_PASSWORDS})
        try:
            yield from_up()
        finally:
            stack.down(infra=False)


@contextlib.contextmanager
def spawned_dev(data_dir: Path, *, env: Mapping[str, str] | None = None) -> Iterator[Target]:
    """A ``courier dev`` of our own on a free loopback port, with generous rate limits and a cheap
    password hash; its data (and so the user pool) is kept in ``data_dir`` between runs. Stopped on exit."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    full_env = {**os.environ, **GENEROUS_LIMITS, **CHEAP_PASSWORDS, "COURIER_MODE": "dev", **(env or {})}
    command = [sys.executable, "-m", "services.cli", "dev", "--port", str(port), "--data-dir", str(data_dir)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*command, "--log-level", "warning"], env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process=process)
        yield Target(
            name="dev",
            base_url=base,
            kind="dev",
            pids={"dev": process.pid},
            delivery=["dev"],
            cache_key="dev",
            users_dir=data_dir,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
