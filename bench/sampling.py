"""Background measurements during a scenario: the server processes' memory and CPU from /proc, and
the load tool's own event-loop lag (a late loop inflates every latency it reports)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from bench.machine import cpu_seconds, own_cpu_seconds, rss_kib, tree_cpu_seconds
from bench.stats import Summary


@dataclass
class Reading:
    at: float  # monotonic
    rss_kib: dict[str, int | None]
    cpu_s: dict[str, float | None]
    own_cpu_s: float


@dataclass
class Sampler:
    """Reads every pid once per ``every_s``; CPU shares come from differences of two readings. A pid's CPU
    is that of its whole process tree (a PostgreSQL server's is in its per-connection processes).

    The load tool's own CPU (``own_cpu_s``) is this process's plus that of its helper processes in
    ``tool_pids`` (the Go load generator), read from /proc; a helper that has exited keeps counting
    with the last CPU time read, so the sum never goes backwards."""

    pids: Mapping[str, int]
    every_s: float = 1.0
    readings: list[Reading] = field(default_factory=list)
    tool_pids: list[int] = field(default_factory=list)
    tool_cpu_s: dict[int, float] = field(default_factory=dict)  # last CPU time read per helper

    def tool_cpu_seconds(self) -> float:
        for pid in self.tool_pids:
            seconds = cpu_seconds(pid)
            if seconds is not None and seconds >= self.tool_cpu_s.get(pid, 0.0):
                self.tool_cpu_s[pid] = seconds
        return sum(self.tool_cpu_s.values())

    def read(self) -> Reading:
        cpu = tree_cpu_seconds(set(self.pids.values()))
        reading = Reading(
            time.monotonic(),
            {name: rss_kib(pid) for name, pid in self.pids.items()},
            {name: cpu[pid] for name, pid in self.pids.items()},
            own_cpu_seconds() + self.tool_cpu_seconds(),
        )
        self.readings.append(reading)
        return reading

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Sampler]:
        async def loop() -> None:
            while True:
                self.read()
                await asyncio.sleep(self.every_s)

        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.read()


def cpu_percent(first: Reading, last: Reading) -> dict[str, float]:
    """Per process, and for the load tool itself (``bench``), CPU time over wall time in percent
    (100 = one core busy)."""
    wall = last.at - first.at
    if wall <= 0:
        return {}
    shares = {}
    for name, end in last.cpu_s.items():
        start = first.cpu_s.get(name)
        if start is not None and end is not None:
            shares[name] = 100.0 * (end - start) / wall
    shares["bench"] = 100.0 * (last.own_cpu_s - first.own_cpu_s) / wall
    return shares


class LoopLag:
    """How late the load tool's event loop wakes a 10 ms sleeper: its P99 bounds how much of a
    reported latency may be the client's own doing."""

    def __init__(self, every_s: float = 0.01) -> None:
        self.every_s = every_s
        self.lags: list[float] = []

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LoopLag]:
        async def loop() -> None:
            while True:
                start = time.perf_counter()
                await asyncio.sleep(self.every_s)
                self.lags.append(time.perf_counter() - start - self.every_s)

        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def summary_ms(self) -> Summary:
        return Summary.of(self.lags).scaled(1000.0)
