"""The status: component readiness from workload status, metav1.Condition bookkeeping, minimal patches."""

from __future__ import annotations

from typing import Any

from im_operator.model import Cluster
from im_operator.ring import PublishedRing
from im_operator.status import (
    Component,
    Observation,
    Problem,
    build_status,
    component_of,
    gateway_endpoint,
    set_condition,
    status_patch,
)

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
RING = PublishedRing(version=2, members=("d-0", "d-1"), vnodes=150, url_template="")


def deployment(replicas: int, ready: int, updated: int, *, generation: int = 2, observed: int = 2) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
        },
    }


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_a_workload_is_settled_once_every_replica_is_updated_and_ready() -> None:
    assert component_of("gateway", deployment(2, 2, 2)).settled
    assert not component_of("gateway", deployment(2, 2, 1)).settled
    assert not component_of("gateway", deployment(2, 2, 2, observed=1)).settled
    statefulset = {
        "kind": "StatefulSet",
        "metadata": {"generation": 1},
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": 1,
            "replicas": 2,
            "readyReplicas": 2,
            "updatedReplicas": 2,
            "currentRevision": "a",
            "updateRevision": "b",
        },
    }
    assert not component_of("delivery", statefulset).settled


def test_last_transition_time_moves_only_when_the_status_flips() -> None:
    first = set_condition([], "Ready", False, "ComponentsNotReady", "waiting", generation=1, now=T0)
    same = set_condition(first, "Ready", False, "ComponentsNotReady", "still waiting", generation=2, now=T1)
    flipped = set_condition(same, "Ready", True, "AllComponentsReady", "ok", generation=2, now=T1)

    assert same[0]["lastTransitionTime"] == T0
    assert (same[0]["message"], same[0]["observedGeneration"]) == ("still waiting", 2)
    assert flipped[0]["lastTransitionTime"] == T1


def test_all_settled_with_a_published_ring_is_ready() -> None:
    seen = Observation(
        generation=2,
        components=[Component("gateway", 2, 2, 2, True), Component("delivery", 2, 2, 2, True)],
        gateway_endpoint="http://chat-gateway.ns.svc:80",
        gateway_type="ClusterIP",
        delivery_selector="sel",
        ring=RING,
        ring_config_map="chat-ring",
        ready_members=("d-0", "d-1"),
    )

    status = build_status({}, seen, now=T0)

    assert conditions(status) == {
        "Ready": ("True", "AllComponentsReady"),
        "Progressing": ("False", "Settled"),
        "Degraded": ("False", "AsExpected"),
        "RingPublished": ("True", "Published"),
    }
    assert status["observedGeneration"] == 2
    assert status["delivery"] == {"replicas": 2, "readyReplicas": 2, "readiness": "2/2", "selector": "sel"}
    assert status["ring"] == {"version": 2, "members": ["d-0", "d-1"], "configMap": "chat-ring"}
    assert all(c["observedGeneration"] == 2 for c in status["conditions"])


def test_a_rolling_component_is_progressing_and_named_in_ready() -> None:
    seen = Observation(
        generation=3, components=[Component("gateway", 2, 1, 2, False)], ring=RING, ready_members=RING.members
    )

    status = build_status({}, seen, now=T0)

    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["message"]) == ("False", "waiting for gateway 1/2 (rolling out)")
    assert conditions(status)["Progressing"] == ("True", "RollingOut")


def test_a_ready_delivery_pod_not_yet_in_the_ring_keeps_the_cluster_progressing() -> None:
    # The StatefulSet counts d-1 ready; its EndpointSlice does not list it yet, so the ring has d-0 alone.
    one = PublishedRing(version=1, members=("d-0",), vnodes=150, url_template="")
    seen = Observation(
        generation=2,
        components=[Component("gateway", 2, 2, 2, True), Component("delivery", 2, 2, 2, True)],
        ring=one,
        ready_members=one.members,
    )

    status = build_status({}, seen, now=T0)

    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["message"]) == ("False", "waiting for ring 1/2 delivery nodes")
    assert conditions(status)["Progressing"] == ("True", "RollingOut")
    assert conditions(status)["RingPublished"] == ("True", "Published")


def test_a_problem_is_degraded_and_keeps_what_was_seen_before() -> None:
    previous = {"components": {"gateway": {"ready": 2, "desired": 2}}, "conditions": []}

    status = build_status(previous, Observation(generation=4, problem=Problem("InvalidSpec", "bad", True)), now=T0)

    assert conditions(status)["Degraded"] == ("True", "InvalidSpec")
    assert conditions(status)["Ready"] == ("False", "InvalidSpec")
    assert status["components"] == previous["components"]
    assert status["observedGeneration"] == 4


def test_status_patch_is_none_when_nothing_changed_and_nulls_vanished_keys() -> None:
    current = {"components": {"redis": {"ready": 1, "desired": 1}, "gateway": {"ready": 1, "desired": 1}}}
    wanted = {"components": {"gateway": {"ready": 1, "desired": 1}}}

    assert status_patch(current, current) is None
    assert status_patch(current, wanted) == {"components": {"redis": None}}


def test_gateway_endpoint_prefers_the_load_balancer_address() -> None:
    cluster = Cluster(name="chat", namespace="ns", uid="u", generation=1)
    service = {"spec": {"type": "LoadBalancer", "ports": [{"port": 443}]}, "status": {}}

    assert gateway_endpoint(cluster, service) == "http://chat-gateway.ns.svc:443"
    service["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}
    assert gateway_endpoint(cluster, service) == "http://203.0.113.7:443"
