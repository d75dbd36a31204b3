"""The operator's metrics: passes counted by result and timed, the status turned into gauges, served on /metrics."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml
from im_operator import metrics
from im_operator.kube import Conflict, Ref
from im_operator.reconcile import Reconciler

from services.common.ids import new_id

REPO = Path(__file__).resolve().parents[3]


def value(name: str, labels: Mapping[str, str] | None = None) -> float:
    return metrics.REGISTRY.get_sample_value(name, dict(labels or {})) or 0.0


class MemoryKube:
    """Just enough of ``Kube`` for a pass: objects by reference, apply and merge patch as plain updates."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._versions = itertools.count(1)

    @staticmethod
    def _key(ref: Ref) -> tuple[str, str, str, str]:
        return (ref.api_version, ref.kind, ref.namespace, ref.name)

    async def get(self, ref: Ref) -> dict[str, Any] | None:
        found = self.objects.get(self._key(ref))
        return copy.deepcopy(found) if found is not None else None

    async def list_objects(
        self, api_version: str, kind: str, namespace: str, *, selector: str = ""
    ) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o)
            for (a, k, n, _), o in self.objects.items()
            if (a, k) == (api_version, kind) and n == namespace
        ]

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(dict(manifest))
        obj["metadata"].setdefault("uid", new_id())
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[self._key(Ref.of(obj))] = obj
        return copy.deepcopy(obj)

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        if manifest.get("kind") == "Event":
            return dict(manifest)
        if self._key(Ref.of(manifest)) in self.objects:
            raise Conflict(409, "AlreadyExists", "exists")
        return await self.apply(manifest)

    async def merge_patch(self, ref: Ref, patch: Mapping[str, Any], *, subresource: str = "") -> dict[str, Any]:
        obj = self.objects[self._key(ref)]
        for key, part in patch.items():
            if isinstance(part, Mapping) and isinstance(obj.get(key), dict):
                obj[key].update(part)
            else:
                obj[key] = copy.deepcopy(part)
        return copy.deepcopy(obj)

    async def delete(self, ref: Ref, *, uid: str) -> None:
        self.objects.pop(self._key(ref), None)


def imcluster(namespace: str, **spec: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((REPO / "crds" / "examples" / "imcluster.yaml").read_text())
    manifest["metadata"].update(namespace=namespace, uid=new_id(), generation=1)
    manifest["spec"].update(spec)
    return manifest


def test_every_result_series_exists_before_any_pass() -> None:
    names = {s.labels.get("result") for m in metrics.REGISTRY.collect() for s in m.samples if s.name.endswith("_total")}
    assert set(metrics.RESULTS) <= names


def test_a_pass_that_raises_counts_as_a_retry_and_is_timed() -> None:
    before = value("courier_operator_reconciles_total", {"result": "retry"})
    count = value("courier_operator_reconcile_duration_seconds_count")
    try:
        with metrics.timed_pass():
            raise RuntimeError("api server gone")
    except RuntimeError:
        pass
    assert value("courier_operator_reconciles_total", {"result": "retry"}) == before + 1
    assert value("courier_operator_reconcile_duration_seconds_count") == count + 1


def test_the_status_becomes_ring_and_component_gauges() -> None:
    namespace = f"ns-{new_id()}"
    status = {
        "ring": {"version": 4, "members": ["delivery-0"]},
        "components": {"gateway": {"ready": 1, "desired": 2}, "delivery": {"ready": 2, "desired": 2}},
        "conditions": [{"type": "RingPublished", "status": "True"}],
    }
    metrics.record_status(namespace, "chat", status)
    labels = {"namespace": namespace, "imcluster": "chat"}
    assert value("courier_operator_ring_published", labels) == 1
    assert value("courier_operator_ring_version", labels) == 4
    assert value("courier_operator_components_ready", {**labels, "component": "gateway"}) == 1
    assert value("courier_operator_components_desired", {**labels, "component": "gateway"}) == 2

    del status["components"]["gateway"]  # type: ignore[attr-defined]
    status["conditions"] = [{"type": "RingPublished", "status": "False"}]
    metrics.record_status(namespace, "chat", status)
    assert value("courier_operator_ring_published", labels) == 0
    gateway = {**labels, "component": "gateway"}
    assert metrics.REGISTRY.get_sample_value("courier_operator_components_ready", gateway) is None

    metrics.forget(namespace, "chat")
    assert metrics.REGISTRY.get_sample_value("courier_operator_ring_version", labels) is None


async def test_reconcile_passes_are_counted_by_result() -> None:
    kube = MemoryKube()
    reconciler = Reconciler(kube, now=lambda: "2026-01-01T00:00:00Z", token=lambda n: "x" * n)  # type: ignore[arg-type]
    namespace = f"ns-{new_id()}"
    bad = imcluster(namespace)  # no image, and the operator has no default: a permanent problem
    bad["metadata"]["name"] = "bad"
    good = imcluster(namespace, image="courier:test")
    for manifest in (bad, good):
        await kube.apply(manifest)
    permanent = value("courier_operator_reconciles_total", {"result": "permanent_error"})
    retry = value("courier_operator_reconciles_total", {"result": "retry"})

    outcome = await reconciler.reconcile(bad)
    assert outcome.problem is not None
    assert outcome.problem.permanent
    outcome = await reconciler.reconcile(good)
    assert not outcome.ready  # no workload reports ready replicas here

    assert value("courier_operator_reconciles_total", {"result": "permanent_error"}) == permanent + 1
    assert value("courier_operator_reconciles_total", {"result": "retry"}) == retry + 1
    labels = {"namespace": namespace, "imcluster": good["metadata"]["name"]}
    assert value("courier_operator_ring_published", labels) == 0
    assert value("courier_operator_components_desired", {**labels, "component": "gateway"}) >= 1


def test_metrics_are_served_on_the_configured_address() -> None:
    server = metrics.serve(0, "127.0.0.1")
    try:
        answer = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert answer.status_code == 200
    assert "courier_operator_reconciles_total" in answer.text
    assert "courier_operator_reconcile_duration_seconds_bucket" in answer.text
    assert "courier_http_requests_total" not in answer.text  # the operator's own registry only


def test_the_metrics_address_comes_from_the_environment(monkeypatch: Any) -> None:
    from im_operator.config import OperatorConfig

    assert (OperatorConfig().metrics_port, OperatorConfig().metrics_host) == (9090, "0.0.0.0")
    monkeypatch.setenv("COURIER_OPERATOR_METRICS_PORT", "19090")
    monkeypatch.setenv("COURIER_OPERATOR_METRICS_HOST", "127.0.0.1")
    assert (OperatorConfig().metrics_port, OperatorConfig().metrics_host) == (19090, "127.0.0.1")
