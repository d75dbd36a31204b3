"""The dashboards' operator panels against a real Prometheus (Debian's, from infra/courier-prometheus) scraping the
real operator while it reconciles an IMCluster on the control plane: every query of every panel built on
courier_operator_* returns series for that IMCluster. The panels on the services' series are checked against make up
in tests/system/test_dashboards_prometheus.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.prometheus import Prometheus, run_prometheus
from tests.k8s.conftest import Cluster, wait_until
from tests.k8s.test_operator import (  # noqa: F401 - module-scoped fixtures of the operator tests, reused here
    Operator,
    namespace,
    operator_kubeconfig,
    release,
    sample,
    storage_class,
    wait_ready,
)
from tests.k8s.test_operator_metrics import (  # noqa: F401 - the operator with its metrics port, reused here
    metrics_port,
    operator_with_metrics,
    scrape,
)
from tests.support.panels import Panel, dashboard_panels, empty_panels
from tests.unit.dashboards.queries import dashboard_files, load

IMCLUSTER = "panels"
DEADLINE_S = 180.0


def operator_panel(panel: Panel) -> bool:
    return panel.operator_only


@pytest.fixture(scope="module")
def prometheus(
    operator_with_metrics: Operator,  # noqa: F811
    metrics_port: int,  # noqa: F811
    namespace: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Prometheus]:
    # As the chart's operator ServiceMonitor has it scraped: the series keep their own namespace label.
    target = {"targets": [f"127.0.0.1:{metrics_port}"], "labels": {"namespace": namespace, "job": "courier-operator"}}
    config: dict[str, Any] = {
        "global": {"scrape_interval": "2s", "scrape_timeout": "2s"},
        "scrape_configs": [{"job_name": "courier-operator", "honor_labels": True, "static_configs": [target]}],
    }
    workdir: Path = tmp_path_factory.mktemp("prometheus-operator")
    with run_prometheus(config, workdir) as server:
        yield server


def test_every_operator_panel_returns_series_for_a_reconciled_imcluster(
    kube: Cluster,
    namespace: str,  # noqa: F811
    storage_class: str,  # noqa: F811
    operator_with_metrics: Operator,  # noqa: F811
    metrics_port: int,  # noqa: F811
    prometheus: Prometheus,
) -> None:
    def answering() -> tuple[bool, Any]:
        operator_with_metrics.alive()
        return scrape(metrics_port) is not None, None

    wait_until(f"the operator's /metrics on 127.0.0.1:{metrics_port}", answering)
    kube.apply(sample(namespace, storage_class, name=IMCLUSTER))
    wait_ready(kube, namespace, IMCLUSTER, operator_with_metrics)

    dashboards = [load(path) for path in dashboard_files()]
    # The IMCluster chosen in the variables; no Courier service is scraped here, so Job and Delivery node (which
    # no operator panel uses) stay at All.
    chosen = {"namespace": namespace, "imcluster": IMCLUSTER, "job": ".*", "node": ".*"}
    problems: list[str] = []

    def all_answer() -> tuple[bool, Any]:
        operator_with_metrics.alive()
        problems[:] = empty_panels(prometheus, dashboards, operator_panel, chosen)
        return not problems, problems

    # Rates need two scrapes of a series inside their window: wait for that, not for a fixed time.
    wait_until("every operator panel to return series", all_answer, DEADLINE_S)
    checked = [p for d in dashboards for p in dashboard_panels(d) if operator_panel(p)]
    assert len(checked) >= 10, checked
