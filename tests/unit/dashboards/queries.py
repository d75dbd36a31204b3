"""Every PromQL expression of the dashboards and alert rules, the metric names they use, and the names Courier can
export: shared by the unit checks here and the system and Kubernetes tests that scrape the real processes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.metrics import MetricWrapperBase

from services.common import metrics as catalogue_module

REPO = Path(__file__).resolve().parents[3]
DASHBOARDS = REPO / "dashboards"
RULES = REPO / "charts" / "courier" / "files" / "prometheus-rules.yaml"
# The alerts the chart ships, in the order of the rules file.
SHIPPED_ALERTS = [
    "CourierNoMessagesFlowing",
    "CourierDLQGrowing",
    "CourierOutboxStale",
    "CourierPushLatencyHigh",
    "CourierGateway5xx",
    "CourierRingNotPublished",
]

# Grafana's interval variables stand where PromQL wants a duration; any value parses the same way.
INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "${__rate_interval}": "5m"}
# Grafana's label_values(selector, label) variable query: only its selector is PromQL.
LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*(?P<label>\w+)\s*\)\s*$", re.DOTALL)

# The operator's metrics (operator/im_operator/metrics.py), as the observability contract names them, in their
# exposition form: what Prometheus stores and queries name.
OPERATOR_METRICS = frozenset(
    {
        "courier_operator_reconciles_total",
        "courier_operator_reconcile_duration_seconds_bucket",
        "courier_operator_reconcile_duration_seconds_sum",
        "courier_operator_reconcile_duration_seconds_count",
        "courier_operator_ring_published",
        "courier_operator_ring_version",
        "courier_operator_components_ready",
        "courier_operator_components_desired",
    }
)

# The sample names each metric type is exposed under (prometheus_client's text format).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
}


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it is written, for messages a reader can act on."""

    source: str  # file name
    where: str  # panel (or variable, or alert) and target
    expr: str

    @property
    def label(self) -> str:
        return f"{self.source}: {self.where}"


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(path: Path) -> Iterator[Query]:
    dashboard = load(path)
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield Query(
                path.name,
                f"panel {panel.get('title')!r} (id {panel.get('id')}) target {target.get('refId')}",
                target.get("expr", ""),
            )
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        found = LABEL_VALUES.match(text)
        # label_values(label) without a selector has no PromQL in it.
        if found:
            yield Query(path.name, f"variable {variable['name']!r}", found.group("selector"))


def rule_queries(path: Path = RULES) -> Iterator[Query]:
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            yield Query(path.name, f"group {group['name']!r} rule {name!r}", rule["expr"])


def all_queries() -> list[Query]:
    return [q for path in dashboard_files() for q in dashboard_queries(path)] + list(rule_queries())


def parse(expr: str) -> Any:
    """The expression's syntax tree, Grafana's interval variables replaced by durations. Other variables may only
    appear inside label matchers' strings, where they parse as they are."""
    for variable, duration in INTERVALS.items():
        expr = expr.replace(variable, duration)
    return promql_parser.parse(expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects."""
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(parse(expr), visit)
    return names


def exposition_names(family_name: str, family_type: str) -> set[str]:
    return {family_name + suffix for suffix in SUFFIXES.get(family_type, ("",))}


def service_catalogue() -> frozenset[str]:
    """Sample names of every metric declared in services/common/metrics.py."""
    names: set[str] = set()
    for value in vars(catalogue_module).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.collect():
                names |= exposition_names(family.name, family.type)
    return frozenset(names)


def runtime_catalogue() -> frozenset[str]:
    """Sample names of prometheus_client's default process_* and python_* collectors, as this process has them."""
    names: set[str] = set()
    registry = CollectorRegistry()  # a private one: the collectors register themselves on it
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    for family in registry.collect():
        names |= exposition_names(family.name, family.type)
        names |= {sample.name for sample in family.samples}
    return frozenset(names)


def catalogue() -> frozenset[str]:
    return service_catalogue() | OPERATOR_METRICS | runtime_catalogue()


def unknown_metrics(queries: list[Query], known: frozenset[str]) -> list[str]:
    """One line per metric a query uses that ``known`` lacks, naming the file, panel and metric."""
    return [
        f"{q.label} uses {name}, which is not exported (expr: {q.expr})"
        for q in queries
        for name in sorted(metric_names(q.expr) - known)
    ]
