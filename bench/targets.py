"""Courier's performance targets on the reference machine (2 cores; issue 12), and the table that says
which of them one run met.

``make bench`` runs every scenario with the parameters these targets need (throughput at 20, 500 and
1,000 msg/s and on up to the highest sustainable rate, a group of 10,000 members) and prints this table
after the figures. A target whose figure the run did not produce (another rate, a smaller group) reads
"not measured", never "met".
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bench.report import Result
from bench.table import number, render

GROUP_MEMBERS = 10_000
Reader = Callable[[Result], float | int | None]
TESTS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<": operator.lt, "<=": operator.le}


def at_rate(rate: int, several: str, single: str) -> Reader:
    """A throughput figure at ``rate``: keyed ``several`` in a run of several rates, ``single`` in a run of that
    one rate."""

    def read(result: Result) -> float | int | None:
        found = result.figure(several)
        if found is None and [s.get("target_rate") for s in result.steps] == [rate]:
            found = result.figure(single)
        return found

    return read


def best_delivered(result: Result) -> float | int | None:
    """The most messages per second any step of the throughput run delivered."""
    values = [f.value for f in result.figures if f.key.startswith("delivered") and f.value is not None]
    return max(values, default=None)


def to_last_member(result: Result) -> float | int | None:
    """The worst message's time to the last online member, if the group had ``GROUP_MEMBERS`` members."""
    return result.figure("to_last_max_ms") if result.figure("members") == GROUP_MEMBERS else None


@dataclass(frozen=True)
class Target:
    kind: str
    """The target the run measured: "dev" (courier dev) or "up" (make up)."""
    what: str
    scenario: str
    read: Reader
    test: str
    """How the figure compares with the bound to meet it: one of ``TESTS``."""
    bound: float
    unit: str

    def goal(self) -> str:
        return f"{self.test} {number(self.bound, self.unit)}"

    def met(self, value: float) -> bool:
        return TESTS[self.test](value, self.bound)


TARGETS = (
    Target("dev", "delivered 1:1, best step", "throughput", best_delivered, ">=", 3_000, "msg/s"),
    Target(
        "dev",
        "P99 at 1,000 msg/s",
        "throughput",
        at_rate(1_000, "latency_1000_p99_ms", "latency_p99_ms"),
        "<",
        50,
        "ms",
    ),
    Target("dev", "P99 at 20 msg/s", "throughput", at_rate(20, "latency_20_p99_ms", "latency_p99_ms"), "<", 10, "ms"),
    Target(
        "dev",
        "server CPU per message at 1,000 msg/s",
        "throughput",
        at_rate(1_000, "server_cpu_us_per_msg_1000", "server_cpu_us_per_msg"),
        "<=",
        400,
        "us",
    ),
    Target("dev", "10,000-member group: to the last member", "fanout", to_last_member, "<", 1_500, "ms"),
    Target("up", "delivered 1:1, best step", "throughput", best_delivered, ">=", 1_500, "msg/s"),
    Target(
        "up", "P99 at 500 msg/s", "throughput", at_rate(500, "latency_500_p99_ms", "latency_p99_ms"), "<", 100, "ms"
    ),
    Target("up", "P99 at 20 msg/s", "throughput", at_rate(20, "latency_20_p99_ms", "latency_p99_ms"), "<", 25, "ms"),
    Target(
        "up",
        "server CPU per message at 500 msg/s",
        "throughput",
        at_rate(500, "server_cpu_us_per_msg_500", "server_cpu_us_per_msg"),
        "<=",
        1_500,
        "us",
    ),
    Target("up", "10,000-member group: to the last member", "fanout", to_last_member, "<", 1_500, "ms"),
)
"""Issue 12's words: "the last online member has each message within 1.5 s" is read as its worst message."""


def verdicts(results: Mapping[str, Sequence[Result]]) -> list[list[str]]:
    """A row per target of every kind the run measured: target, figure, goal, measured, verdict."""
    rows = []
    for runs in results.values():
        kinds = {r.parameters.get("target_kind") for r in runs}
        for target in TARGETS:
            if target.kind not in kinds:
                continue
            run = next((r for r in runs if r.scenario == target.scenario), None)
            value = None if run is None else target.read(run)
            if value is None:
                measured, verdict = "-", "not measured"
            else:
                measured, verdict = number(value, target.unit), "met" if target.met(value) else "MISSED"
            rows.append([target.kind, target.what, target.goal(), measured, verdict])
    return rows


def targets_table(results: Mapping[str, Sequence[Result]]) -> str:
    rows = verdicts(results)
    if not rows:
        return ""
    return render(["target", "figure", "goal (issue 12)", "measured", ""], rows, right=[3])
