"""The real operator process serves Prometheus metrics on COURIER_OPERATOR_METRICS_PORT: after it reconciles the
sample IMCluster, every courier_operator_* name the dashboards and alert rules query is there, with values that
match the IMCluster's status."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

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
from tests.unit.dashboards.queries import OPERATOR_METRICS, all_queries, metric_names

Samples = list[tuple[str, dict[str, str], float]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def operator_with_metrics(
    kube: Cluster,
    namespace: str,  # noqa: F811
    operator_kubeconfig: Path,  # noqa: F811
    metrics_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    log = tmp_path_factory.mktemp("operator-metrics-log") / "operator.log"
    process = Operator(kube, namespace, operator_kubeconfig, log)
    # Operator.start passes the environment on as it is at that moment: set the port only around it.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COURIER_OPERATOR_METRICS_PORT", str(metrics_port))
        patch.setenv("COURIER_OPERATOR_METRICS_HOST", "127.0.0.1")
        process.start()
    yield process
    process.stop()
    print(f"\noperator log ({log}), last lines:\n" + "\n".join(process.output().splitlines()[-40:]))


def scrape(port: int) -> Samples | None:
    """Every sample of the operator's /metrics, or None while it does not answer yet."""
    with contextlib.suppress(httpx.HTTPError):
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        if answer.status_code == 200:
            return [
                (sample.name, dict(sample.labels), sample.value)
                for family in text_string_to_metric_families(answer.text)
                for sample in family.samples
            ]
    return None


def value(samples: Samples, name: str, **labels: str) -> float | None:
    for found, found_labels, number in samples:
        if found == name and labels.items() <= found_labels.items():
            return number
    return None


def used_operator_metrics() -> dict[str, list[str]]:
    used: dict[str, list[str]] = {}
    for query in all_queries():
        for name in metric_names(query.expr) & OPERATOR_METRICS:
            used.setdefault(name, []).append(query.label)
    return used


def test_operator_exports_every_metric_the_dashboards_and_alerts_use_after_a_reconcile(
    kube: Cluster,
    namespace: str,  # noqa: F811
    storage_class: str,  # noqa: F811
    operator_with_metrics: Operator,
    metrics_port: int,
) -> None:
    def answering() -> tuple[bool, Any]:
        operator_with_metrics.alive()
        return scrape(metrics_port) is not None, None

    wait_until(f"the operator's /metrics on 127.0.0.1:{metrics_port}", answering)
    kube.apply(sample(namespace, storage_class, name="watched"))
    wait_ready(kube, namespace, "watched", operator_with_metrics)
    status = kube.get("imcluster", "watched", "-n", namespace)["status"]

    def reported() -> tuple[bool, Any]:
        samples = scrape(metrics_port) or []
        published = value(samples, "courier_operator_ring_published", namespace=namespace, imcluster="watched")
        ok = value(samples, "courier_operator_reconciles_total", result="ok") or 0
        return published == 1 and ok >= 1, {"ring_published": published, "reconciles ok": ok}

    wait_until("the operator's metrics to show the reconciled IMCluster", reported)
    samples = scrape(metrics_port)
    assert samples is not None
    exported = {name for name, _, _ in samples}
    used = used_operator_metrics()
    absent = sorted(set(used) - exported)
    assert not absent, "the operator does not export:\n" + "\n".join(
        f"  {n} (used by {'; '.join(used[n])})" for n in absent
    )

    cluster = {"namespace": namespace, "imcluster": "watched"}
    assert value(samples, "courier_operator_ring_version", **cluster) == status["ring"]["version"]
    for component, counts in status["components"].items():
        labels = {**cluster, "component": component}
        assert value(samples, "courier_operator_components_desired", **labels) == counts["desired"], component
        assert value(samples, "courier_operator_components_ready", **labels) == counts["ready"], component
    assert (value(samples, "courier_operator_reconcile_duration_seconds_count") or 0) >= 1
    for result in ("ok", "retry", "permanent_error"):
        # Every result is there from the start, so a rate() of errors is 0 rather than absent.
        assert value(samples, "courier_operator_reconciles_total", result=result) is not None, result
