"""What a result was measured on: the machine, the library versions, and /proc readings of a pid."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Collection
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

LIBRARIES = (
    "websockets",
    "httpx",
    "orjson",
    "uvicorn",
    "fastapi",
    "starlette",
    "pydantic",
    "sqlalchemy",
    "aiosqlite",
    "argon2-cffi",
    "redis",
    "aiokafka",
    "matplotlib",
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_vmrss_kib(status: str) -> int:
    """VmRSS (KiB) from the text of /proc/<pid>/status."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError("no VmRSS line (a kernel thread or a zombie?)")


def parse_cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/<pid>/stat; the command name in
    parentheses may hold spaces, so fields are counted after its closing parenthesis."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return parse_vmrss_kib(Path(f"/proc/{pid}/status").read_text())
    return None


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) the process has used so far."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return parse_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / CLOCK_TICKS
    return None


def process_table() -> dict[int, tuple[int, int]]:
    """Every process now running: pid -> (its parent's pid, the clock ticks of its own CPU time and of its
    children's that it has reaped)."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            table[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    return table


def tree_cpu_seconds(pids: Collection[int]) -> dict[int, float | None]:
    """The CPU time of each process together with every process below it, reaped ones included. A
    server that forks a process per connection (PostgreSQL) spends its CPU in those: its own figure
    alone misses it. None for a pid that is gone."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found: dict[int, float | None] = {}
    for root in pids:
        if root not in table:
            found[root] = None
            continue
        ticks, below = 0, [root]
        while below:
            pid = below.pop()
            ticks += table[pid][1]
            below.extend(children.get(pid, ()))
        found[root] = ticks / CLOCK_TICKS
    return found


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory_total_kib() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def git_commit(repo: Path) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return done.stdout.strip()
    return None


REFERENCE_FRAMES = 20_000


def reference_cpu_ms() -> float:
    """Milliseconds of this process's CPU for a fixed piece of work like a server's for each message: a message
    frame written and read as JSON, its fields picked out and formatted, a hash of it; the best of three runs.

    The machine is shared: the same code spent 20% more CPU per message one day than another (docs/performance.md
    28). A run's CPU figures are read against this one, taken in the same run."""
    frame: dict[str, Any] = {
        "type": "message",
        "conversation_id": "c_01JD0000000000000000000000",
        "sender_id": "u_01JD0000000000000000000000",
        "content": {"type": "text", "text": "a message of about the size of a chat line, sent and read back"},
        "created_at": "2026-12-05T07:00:00.000000Z",
    }
    best = math.inf
    for _ in range(3):
        started = time.process_time()
        for seq in range(REFERENCE_FRAMES):
            frame["seq"] = seq
            data = orjson.dumps(frame)
            read = orjson.loads(data)
            head = {key: value for key, value in read.items() if key != "content"}
            line = f"{head['conversation_id']}:{head['seq']}:{read['content']['text'][:16]}"
            hashlib.sha256(line.encode() + data).digest()
        best = min(best, time.process_time() - started)
    return round(best * 1000, 1)


def environment(repo: Path) -> dict[str, Any]:
    memory = memory_total_kib()
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "libraries": versions(),
        "machine": {
            "nproc": len(os.sched_getaffinity(0)),
            "cpu": cpu_model(),
            "memory_gib": round(memory / 1024 / 1024, 1) if memory else None,
            "kernel": platform.release(),
            "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        },
        "courier_commit": git_commit(repo),
        # Other work on the machine steals CPU from both the server and the load tool.
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "reference_cpu_ms": reference_cpu_ms(),
    }


def raise_open_files_limit(wanted: int) -> int:
    """Lift the soft limit on open files towards the hard one (each socket is a file)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    goal = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if goal > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (goal, hard))
            return goal
    return soft
