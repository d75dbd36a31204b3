"""Every panel query of the dashboards evaluated against a real Prometheus, as Grafana would send it: template
variables set to the values their own label_values queries return, interval variables to durations. Shared by the
system tier (make up) and the Kubernetes tier (the operator's panels)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.harness.prometheus import Prometheus
from tests.unit.dashboards.queries import INTERVALS, LABEL_VALUES, OPERATOR_METRICS, metric_names, panels

# Label values Grafana would interpolate into a regex matcher as they are.
PLAIN_VALUE = re.compile(r"^[\w.:-]+$")


@dataclass(frozen=True)
class Panel:
    """One target of one panel, named as a reader finds it in Grafana."""

    dashboard: str
    panel: str
    expr: str

    @property
    def operator_only(self) -> bool:
        return metric_names(self.expr) <= OPERATOR_METRICS


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation: interval variables become durations, template variables their values."""
    for variable, duration in INTERVALS.items():
        expr = expr.replace(variable, duration)
    for name in sorted(values, key=len, reverse=True):  # $imcluster before a shorter name that prefixes it
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


def regex_value(values: list[str]) -> str:
    """What Grafana puts in a regex matcher for a variable with these values selected."""
    assert all(PLAIN_VALUE.match(v) for v in values), values
    return values[0] if len(values) == 1 else "(" + "|".join(values) + ")"


def resolve_variables(
    prometheus: Prometheus, dashboard: dict[str, Any], problems: list[str], fixed: dict[str, str]
) -> dict[str, str]:
    """Each query variable, in order, set to every value its own label_values query returns (or as ``fixed``)."""
    values: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        if variable["name"] in fixed:
            values[variable["name"]] = fixed[variable["name"]]
            continue
        found = LABEL_VALUES.match(variable["query"]["query"])
        assert found, f"{dashboard['title']}: variable {variable['name']!r} is not a label_values query"
        selector = substitute(found.group("selector"), values)
        label = found.group("label")
        answer = prometheus.query(f"group by ({label}) ({selector})")
        offered = sorted({sample["metric"][label] for sample in answer if sample["metric"].get(label)})
        if not offered:
            problems.append(f"{dashboard['title']}: variable {variable['name']!r} offers no value ({selector})")
            offered = [".*"]
        values[variable["name"]] = regex_value(offered)
    return values


def dashboard_panels(dashboard: dict[str, Any]) -> list[Panel]:
    return [
        Panel(dashboard["title"], f"{panel['title']!r} (id {panel['id']}) target {target['refId']}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def empty_panels(
    prometheus: Prometheus,
    dashboards: list[dict[str, Any]],
    wanted: Callable[[Panel], bool],
    fixed: dict[str, str] | None = None,
) -> list[str]:
    """One line per variable without values and per ``wanted`` panel query that returns no series. Variables in
    ``fixed`` take that value instead of their query's."""
    problems: list[str] = []
    for dashboard in dashboards:
        values = resolve_variables(prometheus, dashboard, problems, fixed or {})
        for panel in dashboard_panels(dashboard):
            if not wanted(panel):
                continue
            query = substitute(panel.expr, values)
            if not prometheus.query(query):
                problems.append(f"{panel.dashboard}: panel {panel.panel} returns no series: {query}")
    return problems
