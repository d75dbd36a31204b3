"""What a scenario produces (figures, samples, gauges) and how it is kept: JSON, PNG, the table."""

from __future__ import annotations

import datetime as dt
import importlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.stats import Summary, percentile, series
from bench.table import number, render

PLOT_PERCENTILES = (*range(0, 100), 99.5, 99.9, 99.99, 100)


@dataclass(frozen=True)
class Figure:
    """One reported number: ``key`` for the JSON, ``label`` and ``unit`` for the table, and the
    goal of issue 6 it is measured against (text, empty when there is none)."""

    key: str
    label: str
    value: float | int | None
    unit: str = ""
    goal: str = ""


@dataclass
class Result:
    scenario: str
    target: str
    parameters: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    samples: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the start, value) of the main latency, for the plot and the per-second series."""
    sample_label: str = "latency (ms)"
    gauges: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """Other values over time (open connections, server memory), plotted against the right axis."""
    steps: list[dict[str, Any]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    duration_s: float = 0.0

    def add(self, key: str, label: str, value: float | int | None, unit: str = "", goal: str = "") -> None:
        self.figures.append(Figure(key, label, value, unit, goal))

    def add_latency(self, key: str, label: str, summary: Summary, *, goal_p99: str = "") -> None:
        """P50, P95, P99 and max of a latency summary already in milliseconds."""
        self.add(f"{key}_p50_ms", f"{label} P50", summary.p50, "ms")
        self.add(f"{key}_p95_ms", f"{label} P95", summary.p95, "ms")
        self.add(f"{key}_p99_ms", f"{label} P99", summary.p99, "ms", goal_p99)
        self.add(f"{key}_max_ms", f"{label} max", summary.max, "ms")

    def figure(self, key: str) -> float | int | None:
        return next((f.value for f in self.figures if f.key == key), None)

    def to_json(self, environment: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "target": self.target,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 3),
            "parameters": self.parameters,
            "figures": {
                f.key: {
                    "value": _rounded(f.value),
                    "unit": f.unit,
                    "label": f.label,
                    **({"goal": f.goal} if f.goal else {}),
                }
                for f in self.figures
            },
            "errors": dict(self.errors),
            "notes": self.notes,
            "steps": self.steps,
            "series": {
                "bucket_s": 1.0,
                self.sample_label: [
                    {k: _rounded(v) for k, v in vars(b).items()} for b in series(self.samples, width=1.0)
                ],
                **{name: [[round(t, 2), _rounded(v)] for t, v in points] for name, points in self.gauges.items()},
            },
            "environment": dict(environment),
        }


def _rounded(value: float | int | None) -> float | int | None:
    return round(value, 3) if isinstance(value, float) else value


def write_json(result: Result, environment: Mapping[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(environment), indent=1) + "\n")
    return path


def plot(result: Result, path: Path) -> Path | None:
    """Latency over time (per-second P50/P99/max, gauges on a second axis) beside the percentile
    curve; None when matplotlib is not installed (it is optional)."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return None
    matplotlib.use("Agg")
    pyplot: Any = importlib.import_module("matplotlib.pyplot")
    figure, (over_time, curve) = pyplot.subplots(1, 2, figsize=(13, 4.8))
    figure.suptitle(f"{result.scenario} against {result.target} ({result.started_at})")
    buckets = series(result.samples, width=1.0)
    if buckets:
        times = [b.start for b in buckets]
        for name, style in (("p50", ".-"), ("p99", ".--"), ("max", ".:")):
            over_time.plot(times, [getattr(b, name) for b in buckets], style, label=f"{name} per second")
        over_time.set_ylabel(result.sample_label)
        over_time.legend(loc="upper left")
    over_time.set_xlabel("seconds since start")
    if result.gauges:
        other = over_time.twinx()
        for name, points in result.gauges.items():
            other.plot([t for t, _ in points], [v for _, v in points], alpha=0.6, label=name)
        other.legend(loc="upper right")
    if result.samples:
        ordered = sorted(v for _, v in result.samples)
        curve.plot(PLOT_PERCENTILES, [percentile(ordered, q) for q in PLOT_PERCENTILES], marker=".")
        for q in (50, 95, 99):
            curve.axvline(q, color="grey", linewidth=0.5)
        curve.set_xlabel("percentile")
        curve.set_ylabel(result.sample_label)
        curve.set_title(f"{len(ordered):,} samples")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def summary_table(results: Mapping[str, Sequence[Result]]) -> str:
    """One table for every scenario run: a column per target, the goals of issue 6 at the right."""
    targets = list(results)
    order: list[tuple[str, str]] = []
    cells: dict[tuple[str, str], dict[str, str]] = {}
    meta: dict[tuple[str, str], tuple[str, str]] = {}
    for target, runs in results.items():
        for run in runs:
            for figure in run.figures:
                row = (run.scenario, figure.key)
                if row not in cells:
                    order.append(row)
                    cells[row] = {}
                    meta[row] = (figure.label, figure.goal)
                cells[row][target] = number(figure.value, figure.unit)
            errors = sum(run.errors.values())
            row = (run.scenario, "errors")
            if row not in cells:
                order.append(row)
                cells[row] = {}
                meta[row] = ("errors", "")
            cells[row][target] = f"{errors:,}" + (f" ({_top(run.errors)})" if errors else "")
    rows = []
    previous = ""
    for row in order:
        scenario = row[0] if row[0] != previous else ""
        previous = row[0]
        label, goal = meta[row]
        rows.append([scenario, label, *(cells[row].get(t, "-") for t in targets), goal])
    headers = ["scenario", "figure", *targets, "goal (issue 6)"]
    return render(headers, rows, right=range(2, 2 + len(targets)))


def _top(errors: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in errors.most_common(2))


def notes_of(results: Mapping[str, Sequence[Result]]) -> list[str]:
    lines = []
    for target, runs in results.items():
        for run in runs:
            lines += [f"{run.scenario} ({target}): {note}" for note in run.notes]
    return lines
