"""The gateway's Gateway API HTTPRoute: rendered from spec.gateway.httpRoute, refused by the CRD's schema when
malformed, applied only where the API server serves HTTPRoutes (elsewhere the IMCluster says so in Degraded and the
rest of the pass goes on), and pruned when the setting goes away."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from im_operator.kube import NotFound, Ref
from im_operator.reconcile import Reconciler
from im_operator.render import HTTP_ROUTE, render
from im_operator.status import Component, Observation, build_status

from tests.unit.operator.test_metrics import MemoryKube, imcluster
from tests.unit.operator.test_placement import refused, valid
from tests.unit.operator.test_render import by_name, sample
from tests.unit.operator.test_status import RING, T0, conditions

ROUTE = {
    "parentRefs": [{"name": "public", "namespace": "infra", "sectionName": "https"}, {"name": "internal"}],
    "hostnames": ["chat.example.org", "*.chat.example.org"],
    "path": "/im",
    "annotations": {"example.org/team": "chat"},
}


def with_route(route: Mapping[str, Any] | None = None, *, port: int = 80) -> dict[str, Any]:
    spec = sample()
    spec["spec"]["gateway"]["service"]["port"] = port
    spec["spec"]["gateway"]["httpRoute"] = dict(route or ROUTE)
    return spec


def test_the_route_attaches_to_the_named_listeners_and_sends_its_hosts_and_path_to_the_gateway_service() -> None:
    route = by_name(render(valid(with_route(port=8000)), default_image="courier:1"))["HTTPRoute/chat-gateway"]

    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["metadata"]["labels"]["im.courier.dev/cluster"] == "chat"
    assert route["metadata"]["ownerReferences"][0]["kind"] == "IMCluster"
    assert route["metadata"]["annotations"] == {"example.org/team": "chat"}
    gateway = {"group": "gateway.networking.k8s.io", "kind": "Gateway"}
    assert route["spec"] == {
        "parentRefs": [
            {**gateway, "name": "public", "namespace": "infra", "sectionName": "https"},
            {**gateway, "name": "internal"},
        ],
        "hostnames": ["chat.example.org", "*.chat.example.org"],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/im"}}],
                "backendRefs": [{"group": "", "kind": "Service", "name": "chat-gateway", "port": 8000}],
            }
        ],
    }


def test_a_route_with_only_a_parent_takes_every_path_of_the_listeners_hostnames() -> None:
    route = by_name(render(with_route({"parentRefs": [{"name": "public"}]}), default_image="courier:1"))
    spec = route["HTTPRoute/chat-gateway"]["spec"]

    assert "hostnames" not in spec
    assert spec["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert "annotations" not in route["HTTPRoute/chat-gateway"]["metadata"]


def test_no_route_is_rendered_unless_asked_for() -> None:
    assert not [c for c in render(sample(), default_image="courier:1") if c["kind"] == "HTTPRoute"]


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"hostnames": ["chat.example.org"]}, "'parentRefs' is a required property"),
        ({"parentRefs": []}, "should be non-empty"),
        ({"parentRefs": [{"namespace": "infra"}]}, "'name' is a required property"),
        ({"parentRefs": [{"name": "public", "namespace": "Infra"}]}, "does not match"),
        ({"parentRefs": [{"name": "public", "sectionName": "HTTPS"}]}, "does not match"),
        ({"parentRefs": [{"name": "public"}], "hostnames": ["Chat.Example.org"]}, "does not match"),
        ({"parentRefs": [{"name": "public"}], "hostnames": ["chat.*.org"]}, "does not match"),
        ({"parentRefs": [{"name": "public"}], "path": "im"}, "does not match"),
        ({"parentRefs": [{"name": "public"}], "path": "/a b"}, "does not match"),
    ],
)
def test_the_crd_refuses_a_malformed_route(route: dict[str, Any], message: str) -> None:
    assert message in refused(with_route(route))


# ---------------------------------------------------------------------------------------------------- the pass


class Cluster(MemoryKube):
    """MemoryKube whose API server serves HTTPRoutes only once ``served`` is set (the Gateway API CRDs installed),
    answering 404 to their collection before, as kube-apiserver does; Events are kept."""

    def __init__(self) -> None:
        super().__init__()
        self.served = False
        self.events: list[dict[str, Any]] = []

    def _check(self, api_version: str, kind: str) -> None:
        if (api_version, kind) == HTTP_ROUTE and not self.served:
            raise NotFound(404, "NotFound", "the server could not find the requested resource")

    async def list_objects(
        self, api_version: str, kind: str, namespace: str, *, selector: str = ""
    ) -> list[dict[str, Any]]:
        self._check(api_version, kind)
        return await super().list_objects(api_version, kind, namespace, selector=selector)

    async def get(self, ref: Ref) -> dict[str, Any] | None:
        self._check(ref.api_version, ref.kind)
        return await super().get(ref)

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        self._check(manifest["apiVersion"], manifest["kind"])
        return await super().apply(manifest)

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        if manifest.get("kind") == "Event":
            self.events.append(dict(manifest))
        return await super().create(manifest)

    def kinds(self) -> set[str]:
        return {kind for (_, kind, _, _) in self.objects}

    def status(self, name: str = "chat") -> dict[str, Any]:
        found = self.objects[("im.courier.dev/v1alpha1", "IMCluster", "gw", name)]
        return dict(found.get("status") or {})


async def test_without_the_gateway_api_the_rest_is_applied_and_degraded_says_why_until_the_crds_arrive() -> None:
    kube = Cluster()
    reconciler = Reconciler(kube, now=lambda: T0, token=lambda n: "x" * n)  # type: ignore[arg-type]
    manifest = imcluster("gw", image="courier:test")
    manifest["spec"]["gateway"]["httpRoute"] = {"parentRefs": [{"name": "public"}]}
    await kube.apply(manifest)

    outcome = await reconciler.reconcile(manifest)

    assert outcome.problem is None
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap"} <= kube.kinds()
    assert "HTTPRoute" not in kube.kinds()
    degraded = {c["type"]: c for c in kube.status()["conditions"]}["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "APINotServed")
    assert (
        "spec.gateway.httpRoute: the API server does not serve gateway.networking.k8s.io/v1 HTTPRoute"
        in (degraded["message"])
    )
    assert "HTTPRoute/chat-gateway is not applied" in degraded["message"]
    warnings = [e for e in kube.events if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["APINotServed"]

    await reconciler.reconcile(manifest)  # the same again: no new Event
    assert len([e for e in kube.events if e["type"] == "Warning"]) == 1

    kube.served = True
    await reconciler.reconcile(manifest)

    route = kube.objects[(*HTTP_ROUTE, "gw", "chat-gateway")]
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == "chat-gateway"
    assert conditions(kube.status())["Degraded"] == ("False", "AsExpected")


async def test_removing_the_setting_prunes_the_route_and_pruning_needs_no_gateway_api() -> None:
    kube = Cluster()
    kube.served = True
    reconciler = Reconciler(kube, now=lambda: T0, token=lambda n: "x" * n)  # type: ignore[arg-type]
    manifest = imcluster("gw", image="courier:test")
    manifest["spec"]["gateway"]["httpRoute"] = {"parentRefs": [{"name": "public"}], "hostnames": ["chat.example.org"]}
    await kube.apply(manifest)
    await reconciler.reconcile(manifest)
    assert "HTTPRoute" in kube.kinds()

    del manifest["spec"]["gateway"]["httpRoute"]
    await kube.apply(manifest)
    await reconciler.reconcile(manifest)
    assert "HTTPRoute" not in kube.kinds()
    assert any(e["reason"] == "Deleted" and "HTTPRoute/chat-gateway" in e["message"] for e in kube.events)

    kube.served = False  # the CRDs uninstalled: an IMCluster without a route reconciles as before
    outcome = await reconciler.reconcile(manifest)
    assert outcome.problem is None
    assert conditions(kube.status())["Degraded"] == ("False", "AsExpected")


def test_a_route_the_api_server_cannot_take_leaves_ready_alone_and_a_stuck_rollout_comes_first() -> None:
    settled = [Component("gateway", 2, 2, 2, True), Component("delivery", 2, 2, 2, True)]
    why = "spec.gateway.httpRoute: the API server does not serve gateway.networking.k8s.io/v1 HTTPRoute"
    seen = Observation(generation=1, components=settled, ring=RING, ready_members=RING.members, not_served=[why])

    status = build_status({}, seen, now=T0)
    assert conditions(status)["Ready"] == ("True", "AllComponentsReady")
    assert conditions(status)["Degraded"] == ("True", "APINotServed")
    assert next(c for c in status["conditions"] if c["type"] == "Degraded")["message"] == why

    stuck = [Component("gateway", 2, 0, 2, False, stuck=True), settled[1]]
    status = build_status({}, Observation(generation=1, components=stuck, ring=RING, not_served=[why]), now=T0)
    assert conditions(status)["Degraded"] == ("True", "RolloutStuck")
