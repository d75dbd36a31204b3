"""What a result was measured on: the machine, the library versions, and /proc readings of a pid."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

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
