"""Every dashboard selects one IMCluster's series: an `imcluster` variable (the label the chart's ServiceMonitor
copies from each Service's app.kubernetes.io/instance, and the operator's own series carry) that every selector
filtering by namespace also filters by. That the variable's values really select series is checked against a
real Prometheus in tests/system/test_dashboards_prometheus.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import promql_parser
import pytest

from tests.unit.dashboards.queries import Query, dashboard_files, dashboard_queries, load, parse

FILES = dashboard_files()
IDS = [p.name for p in FILES]


def selectors(expr: str) -> list[dict[str, str]]:
    """Each vector selector of the expression as {label: matcher}, e.g. {"namespace": '=~ $namespace'}."""
    found: list[dict[str, str]] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            ops = {"MatchOp.Re": "=~", "MatchOp.NotRe": "!~", "MatchOp.Equal": "=", "MatchOp.NotEqual": "!="}
            found.append({m.name: f"{ops[str(m.op)]} {m.value}" for m in node.matchers.matchers})
        return True

    promql_parser.walk(parse(expr), visit)
    return found


def unfiltered(queries: list[Query]) -> list[str]:
    """Selectors that filter by namespace but not by the IMCluster variable, named by panel."""
    return [
        f"{q.label}: {sorted(s)} in {q.expr}"
        for q in queries
        for s in selectors(q.expr)
        if "namespace" in s and s.get("imcluster") != "=~ $imcluster"
    ]


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_the_imcluster_variable_follows_the_namespace_and_offers_all(path: Path) -> None:
    variables = load(path)["templating"]["list"]
    names = [v["name"] for v in variables]
    assert names.index("imcluster") == names.index("namespace") + 1, "namespace first, then the IMClusters in it"
    imcluster = variables[names.index("imcluster")]
    assert imcluster["query"]["query"] == 'label_values(courier_build_info{namespace=~"$namespace"}, imcluster)'
    # All must also match series without the label (a Prometheus scraping make up without it).
    assert (imcluster["includeAll"], imcluster["allValue"]) == (True, ".*")


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_every_namespace_filter_also_filters_the_imcluster(path: Path) -> None:
    # The imcluster variable's own query lists the IMClusters of the chosen namespaces.
    queries = [q for q in dashboard_queries(path) if q.where != "variable 'imcluster'"]
    assert any("$imcluster" in q.expr for q in queries)
    problems = unfiltered(queries)
    assert not problems, "\n".join(problems)


def test_a_selector_without_the_imcluster_filter_is_named() -> None:
    expr = 'sum(courier_ws_connections{namespace=~"$namespace"})'
    query = Query("overview.json", "panel 'Sent' (id 1) target A", expr)
    (problem,) = unfiltered([query])
    assert problem.startswith("overview.json: panel 'Sent' (id 1) target A: ['namespace']")
