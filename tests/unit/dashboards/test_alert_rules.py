"""The chart's alert rules (charts/courier/files/prometheus-rules.yaml): the six alerts of the observability issue,
each with a severity, a summary, a description and a runbook entry that exists in docs/operations.md."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.unit.dashboards.queries import REPO, RULES, SHIPPED_ALERTS, metric_names, parse

OPERATIONS = REPO / "docs" / "operations.md"


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors (lower case, punctuation dropped, spaces to hyphens); code blocks skipped."""
    found = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif line.startswith("#") and not in_code:
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_the_rules_are_exactly_the_six_alerts() -> None:
    assert [r["alert"] for r in rules()] == SHIPPED_ALERTS


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_alert_is_complete_and_links_its_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert re.fullmatch(r"\d+[smh]", rule["for"]), "a for: keeps one bad scrape from paging"
    annotations = rule["annotations"]
    assert annotations["summary"] and annotations["description"]
    page, _, anchor = annotations["runbook_url"].partition("#")
    assert page == "docs/operations.md"
    assert anchor == rule["alert"].lower()
    assert anchor in anchors(OPERATIONS.read_text()), f"docs/operations.md has no heading for #{anchor}"


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_alert_expression_is_promql_on_the_metric_it_is_about(rule: dict[str, Any]) -> None:
    parse(rule["expr"])
    wanted = {
        "CourierNoMessagesFlowing": "courier_messages_pushed_total",
        "CourierDLQGrowing": "courier_dlq_records_total",
        "CourierOutboxStale": "courier_outbox_oldest_age_seconds",
        "CourierPushLatencyHigh": "courier_send_to_push_seconds_bucket",
        "CourierGateway5xx": "courier_http_requests_total",
        "CourierRingNotPublished": "courier_operator_ring_published",
    }[rule["alert"]]
    assert wanted in metric_names(rule["expr"])
