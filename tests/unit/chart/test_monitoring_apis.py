"""The ServiceMonitors and the PrometheusRule render only where prometheus-operator's APIs are served, whatever the
values say: on a cluster without its CRDs an install would otherwise fail on an unknown kind. `helm template`
learns the served APIs from --api-versions, `helm install` from the cluster."""

from __future__ import annotations

import pytest

from tests.unit.chart.conftest import CHART, MONITORING_APIS, Helm

ALL_ENABLED = CHART / "ci" / "all-enabled-values.yaml"
MONITORS = ["ServiceMonitor/courier", "ServiceMonitor/courier-operator"]
RULE = ["PrometheusRule/courier"]


def monitoring(helm: Helm, *args: str) -> list[str]:
    """The prometheus-operator objects the chart renders, as kind/name."""
    docs = helm.template("-f", str(ALL_ENABLED), *args)
    return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs if d["apiVersion"].startswith("monitoring."))


def test_switched_on_without_the_apis_renders_neither_and_the_rest_still_renders(helm: Helm) -> None:
    assert monitoring(helm) == []
    kinds = {d["kind"] for d in helm.template("-f", str(ALL_ENABLED))}
    assert {"IMCluster", "Deployment", "ConfigMap"} <= kinds


def test_switched_on_where_the_apis_are_served_renders_both(helm: Helm) -> None:
    assert monitoring(helm, *MONITORING_APIS) == RULE + MONITORS


@pytest.mark.parametrize(
    ("served", "expected"),
    [("monitoring.coreos.com/v1/ServiceMonitor", MONITORS), ("monitoring.coreos.com/v1/PrometheusRule", RULE)],
    ids=["servicemonitor-only", "prometheusrule-only"],
)
def test_each_object_follows_its_own_api(helm: Helm, served: str, expected: list[str]) -> None:
    assert monitoring(helm, "--api-versions", served) == expected


def test_served_apis_do_not_switch_on_what_the_values_leave_off(helm: Helm) -> None:
    off = ("--set", "metrics.serviceMonitor.enabled=false", "--set", "metrics.prometheusRule.enabled=false")
    assert monitoring(helm, *off, *MONITORING_APIS) == []
