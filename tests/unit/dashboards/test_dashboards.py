"""The Grafana dashboards in dashboards/ load into Grafana's own dashboard model (grafana-foundation-sdk) without
losing anything, use the `datasource` variable everywhere, and query only metrics Courier exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus
from grafana_foundation_sdk.models.dashboard import Dashboard, RowPanel

from tests.unit.dashboards.queries import (
    Query,
    all_queries,
    catalogue,
    dashboard_files,
    dashboard_queries,
    load,
    metric_names,
    panels,
    parse,
    unknown_metrics,
)

FILES = dashboard_files()
IDS = [p.name for p in FILES]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana 10.3 and later read schema 39 as it is; newer versions migrate it forward on load.
MIN_SCHEMA_VERSION = 39


@pytest.fixture(scope="module", autouse=True)
def _plugins() -> None:
    # Panel options and Prometheus queries decode into their typed models only once the plugins are registered.
    register_default_plugins()


def lost(source: Any, echoed: Any, path: str = "$") -> list[str]:
    """Where ``echoed`` (the model's JSON) lacks or changes something ``source`` says."""
    if isinstance(source, dict):
        if not isinstance(echoed, dict):
            return [f"{path} became {type(echoed).__name__}"]
        found = []
        for key, value in source.items():
            if key not in echoed:
                found.append(f"{path}.{key} was dropped")
            else:
                found += lost(value, echoed[key], f"{path}.{key}")
        return found
    if isinstance(source, list):
        if not isinstance(echoed, list) or len(echoed) != len(source):
            return [f"{path} changed length or type"]
        return [
            item for i, (a, b) in enumerate(zip(source, echoed, strict=True)) for item in lost(a, b, f"{path}[{i}]")
        ]
    return [] if source == echoed else [f"{path}: {source!r} became {echoed!r}"]


def test_the_four_dashboards_exist_with_distinct_uids_and_titles() -> None:
    assert IDS == ["infrastructure.json", "overview.json", "pipeline.json", "websocket.json"]
    dashboards = [load(p) for p in FILES]
    assert len({d["uid"] for d in dashboards}) == 4
    assert len({d["title"] for d in dashboards}) == 4
    for dashboard in dashboards:
        assert dashboard["uid"].startswith("courier-") and len(dashboard["uid"]) <= 40
        assert dashboard["schemaVersion"] >= MIN_SCHEMA_VERSION
        assert "courier" in dashboard["tags"]


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_dashboard_round_trips_through_grafanas_dashboard_model_unchanged(path: Path) -> None:
    source = load(path)
    model = Dashboard.from_json(source)
    assert model.panels is not None
    assert len(model.panels) == len(source["panels"])
    echoed = json.loads(json.dumps(model, cls=JSONEncoder))
    differences = lost(source, echoed)
    assert not differences, f"{path.name}: Grafana's model does not keep:\n" + "\n".join(differences)
    for panel in model.panels:
        if isinstance(panel, RowPanel):
            continue
        # The targets decoded as Prometheus queries, not as the model's unknown-query fallback.
        assert panel.targets, f"{path.name}: panel {panel.title!r} has no query"
        assert all(isinstance(t, prometheus.Dataquery) for t in panel.targets), panel.title


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_dashboard_has_a_prometheus_datasource_variable_and_no_inputs(path: Path) -> None:
    dashboard = load(path)
    assert "__inputs" not in dashboard, "an exported-for-sharing dashboard: the chart's ConfigMaps need none"
    assert "__requires" not in dashboard
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_every_panel_and_query_uses_the_datasource_variable(path: Path) -> None:
    for panel in panels(load(path)):
        if panel["type"] == "row":
            assert "targets" not in panel
            continue
        assert panel["datasource"] == DATASOURCE, f"{path.name}: panel {panel['title']!r}"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, f"{path.name}: panel {panel['title']!r} {target['refId']}"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_panel_ids_are_unique_and_every_panel_has_a_unit_and_a_description(path: Path) -> None:
    every = list(panels(load(path)))
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids {sorted(i for i in ids if ids.count(i) > 1)}"
    for panel in every:
        if panel["type"] == "row":
            continue
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{path.name}: panel {panel['title']!r} has no unit"
        assert panel.get("description"), f"{path.name}: panel {panel['title']!r} has no description"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_panels_fit_the_grid_without_overlapping(path: Path) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(load(path)):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{path.name}: {panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


QUERIES = all_queries()


@pytest.mark.parametrize("query", QUERIES, ids=[q.label for q in QUERIES])
def test_every_expression_parses_as_promql(query: Query) -> None:
    try:
        parse(query.expr)
    except ValueError as exc:
        pytest.fail(f"{query.label} is not PromQL ({exc}): {query.expr}")


def test_every_metric_a_dashboard_or_alert_uses_is_in_the_catalogue() -> None:
    problems = unknown_metrics(QUERIES, catalogue())
    assert not problems, "\n".join(problems)


def test_every_dashboard_queries_something_and_together_they_cover_the_pipeline() -> None:
    used = {name for q in QUERIES for name in metric_names(q.expr)}
    for path in FILES:
        assert any(q.expr for q in dashboard_queries(path)), path.name
    # The night-page questions: are messages flowing, where are they stuck, which component fails.
    assert {
        "courier_messages_sent_total",
        "courier_messages_pushed_total",
        "courier_outbox_oldest_age_seconds",
        "courier_kafka_consumer_lag",
        "courier_dlq_size",
        "courier_send_to_push_seconds_bucket",
        "courier_http_requests_total",
        "courier_operator_reconciles_total",
        "process_resident_memory_bytes",
    } <= used


def test_an_unknown_metric_is_reported_with_its_dashboard_panel_and_name() -> None:
    query = Query("overview.json", "panel 'Messages' (id 3) target A", "sum(rate(courier_mesages_sent_total[5m]))")
    (problem,) = unknown_metrics([query], catalogue())
    assert problem.startswith("overview.json: panel 'Messages' (id 3) target A uses courier_mesages_sent_total")


def test_a_broken_expression_does_not_parse() -> None:
    with pytest.raises(ValueError):
        parse("sum(rate(courier_messages_sent_total[$__rate_interval])")
