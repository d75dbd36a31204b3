"""The operator's Prometheus metrics: reconcile passes by result and duration, and per IMCluster what its status
says about the ring and the components. Kept in their own registry, served on /metrics by ``serve``."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger("im_operator")

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

OK, RETRY, PERMANENT_ERROR = "ok", "retry", "permanent_error"
RESULTS = (OK, RETRY, PERMANENT_ERROR)
# A pass lists and applies a dozen objects: tens of milliseconds on a quiet API server, seconds on a busy one.
RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)

RECONCILES = Counter(
    "courier_operator_reconciles_total",
    "Reconcile passes over an IMCluster, by result (ok, retry, permanent_error).",
    ["result"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "courier_operator_reconcile_duration_seconds",
    "Time one reconcile pass over an IMCluster took.",
    buckets=RECONCILE_BUCKETS,
    registry=REGISTRY,
)
RING_PUBLISHED = Gauge(
    "courier_operator_ring_published",
    "1 when the IMCluster's RingPublished condition is True, else 0.",
    ["namespace", "imcluster"],
    registry=REGISTRY,
)
RING_VERSION = Gauge(
    "courier_operator_ring_version",
    "Version of the delivery ring the operator published for the IMCluster.",
    ["namespace", "imcluster"],
    registry=REGISTRY,
)
COMPONENTS_READY = Gauge(
    "courier_operator_components_ready",
    "Ready replicas of an IMCluster's component.",
    ["namespace", "imcluster", "component"],
    registry=REGISTRY,
)
COMPONENTS_DESIRED = Gauge(
    "courier_operator_components_desired",
    "Desired replicas of an IMCluster's component.",
    ["namespace", "imcluster", "component"],
    registry=REGISTRY,
)

# The components each IMCluster's gauges have series for, so a component gone external loses its series.
_components: dict[tuple[str, str], set[str]] = {}

for _result in RESULTS:  # every result's series exists from start-up, at 0
    RECONCILES.labels(_result)


def result_of(ready: bool, permanent: bool) -> str:
    """The result label of a pass: ok when the cluster is ready, else whether kopf will retry it."""
    if ready:
        return OK
    return PERMANENT_ERROR if permanent else RETRY


class Timed:
    """What ``timed_pass`` records when the pass ends: set ``result`` from its outcome."""

    def __init__(self) -> None:
        self.result = RETRY  # a pass that raised is retried (by kopf, or by the next event or drift round)


@contextmanager
def timed_pass() -> Iterator[Timed]:
    """Count one reconcile pass by its result and observe its duration, however it ends."""
    timed = Timed()
    started = time.perf_counter()
    try:
        yield timed
    finally:
        RECONCILE_DURATION.observe(time.perf_counter() - started)
        RECONCILES.labels(timed.result).inc()


def record_status(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """The gauges of one IMCluster from the status the reconcile computed for it."""
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    published = (conditions.get("RingPublished") or {}).get("status") == "True"
    RING_PUBLISHED.labels(namespace, name).set(1 if published else 0)
    ring = status.get("ring") or {}
    if "version" in ring:
        RING_VERSION.labels(namespace, name).set(int(ring.get("version") or 0))
    components = status.get("components") or {}
    for gone in _components.get((namespace, name), set()) - set(components):
        for gauge in (COMPONENTS_READY, COMPONENTS_DESIRED):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name, gone)
    _components[(namespace, name)] = set(components)
    for component, replicas in components.items():
        COMPONENTS_READY.labels(namespace, name, component).set(int((replicas or {}).get("ready") or 0))
        COMPONENTS_DESIRED.labels(namespace, name, component).set(int((replicas or {}).get("desired") or 0))


def forget(namespace: str, name: str) -> None:
    """Drop the series of an IMCluster that is gone."""
    for gauge in (RING_PUBLISHED, RING_VERSION):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    for component in _components.pop((namespace, name), set()):
        for gauge in (COMPONENTS_READY, COMPONENTS_DESIRED):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name, component)


def serve(port: int, host: str = "0.0.0.0") -> Any:  # noqa: S104 - the pod's metrics port, scraped from outside
    """Serve /metrics on ``host:port`` in a thread; returns the server (``shutdown()`` it at exit). Port 0 picks a
    free port (``server.server_port``)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server
