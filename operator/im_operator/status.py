"""The IMCluster's status from what the reconcile observed: per-component readiness, the gateway endpoint, the
published ring, and the conditions Ready, Progressing, Degraded and RingPublished in metav1.Condition shape.
Pure: time comes in as an argument, and a condition's lastTransitionTime moves only when its status does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from im_operator.model import Cluster
from im_operator.ring import PublishedRing

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
RING_PUBLISHED = "RingPublished"
CONDITION_TYPES = (READY, PROGRESSING, DEGRADED, RING_PUBLISHED)


@dataclass(frozen=True)
class Component:
    """Replicas of one Deployment or StatefulSet as its controller reports them."""

    name: str
    desired: int
    ready: int
    current: int
    up_to_date: bool
    stuck: bool = False

    @property
    def settled(self) -> bool:
        return self.up_to_date and self.ready >= self.desired and self.current == self.desired

    def summary(self) -> str:
        return f"{self.name} {self.ready}/{self.desired}" + ("" if self.up_to_date else " (rolling out)")


def component_of(name: str, workload: Mapping[str, Any]) -> Component:
    """Read a Deployment's or StatefulSet's status: up to date once its controller has seen the newest spec and
    every replica runs the newest template."""
    spec = workload.get("spec") or {}
    status = workload.get("status") or {}
    generation = int((workload.get("metadata") or {}).get("generation") or 0)
    desired = int(spec.get("replicas", 1))
    observed = int(status.get("observedGeneration") or 0) >= generation
    updated = int(status.get("updatedReplicas") or 0)
    if workload.get("kind") == "StatefulSet":
        revision = status.get("updateRevision")
        up_to_date = observed and updated >= desired and (not revision or status.get("currentRevision") == revision)
    else:
        up_to_date = observed and updated >= desired
    stuck = any(
        c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        for c in status.get("conditions") or []
    )
    return Component(
        name=name,
        desired=desired,
        ready=int(status.get("readyReplicas") or 0),
        current=int(status.get("replicas") or 0),
        up_to_date=up_to_date,
        stuck=stuck,
    )


def gateway_endpoint(cluster: Cluster, service: Mapping[str, Any]) -> str:
    """Where clients reach the gateway: the load balancer once it has an address, else the in-cluster name."""
    spec = service.get("spec") or {}
    port = int(((spec.get("ports") or [{}])[0]).get("port") or 80)
    if spec.get("type") == "LoadBalancer":
        for ingress in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
            address = ingress.get("hostname") or ingress.get("ip")
            if address:
                return f"http://{address}:{port}"
    if spec.get("type") == "NodePort":
        node_port = ((spec.get("ports") or [{}])[0]).get("nodePort")
        if node_port:
            return f"http://<node>:{node_port}"
    return f"http://{cluster.host('gateway')}:{port}"


@dataclass(frozen=True)
class PodRing:
    """The ring version one gateway or delivery pod says it routes by (its courier_ring_version gauge), or why
    it could not be read."""

    name: str
    component: str
    version: int | None = None
    error: str = ""

    def to_status(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "component": self.component}
        if self.version is not None:
            entry["version"] = self.version
        else:
            entry["error"] = self.error or "unknown"
        return entry


@dataclass(frozen=True)
class Problem:
    """Why the reconcile could not finish: a condition reason and a message for the user."""

    reason: str
    message: str
    permanent: bool = False


@dataclass(frozen=True)
class Observation:
    """Everything one reconcile pass saw; None/empty parts keep what the status already says."""

    generation: int
    problem: Problem | None = None
    components: Sequence[Component] = ()
    gateway_endpoint: str = ""
    gateway_type: str = ""
    delivery_selector: str = ""
    ring: PublishedRing | None = None
    ring_config_map: str = ""
    ready_members: tuple[str, ...] = ()
    notes: Sequence[str] = field(default_factory=tuple)
    pod_rings: Sequence[PodRing] = ()
    # Why the pods of a component are not ready (a container's waiting reason), for the Degraded message.
    pod_problems: Mapping[str, str] = field(default_factory=dict)
    # Children the spec asks for whose kind the API server does not serve (why each was left out).
    not_served: Sequence[str] = ()

    @property
    def delivery(self) -> Component | None:
        return next((c for c in self.components if c.name == "delivery"), None)

    @property
    def waiting_for(self) -> list[str]:
        waiting = [c.summary() for c in self.components if not c.settled]
        delivery = self.delivery
        # A delivery pod is ready in its StatefulSet's status before the EndpointSlice controller lists it, and only
        # the EndpointSlice puts it in the ring: the tier is not ready until the ring holds every wanted node.
        members = len(self.ring.members) if self.ring is not None else 0
        if delivery is not None and delivery.settled and 0 < members < delivery.desired:
            waiting.append(f"ring {members}/{delivery.desired} delivery nodes")
        return waiting

    @property
    def ready(self) -> bool:
        return (
            self.problem is None
            and bool(self.components)
            and not self.waiting_for
            and self.ring is not None
            and bool(self.ring.members)
        )


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    kind: str,
    status: bool,
    reason: str,
    message: str,
    *,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """The conditions with ``kind`` set; its lastTransitionTime changes only when its status changes."""
    value = "True" if status else "False"
    result: list[dict[str, Any]] = []
    found = False
    for condition in conditions:
        if condition.get("type") != kind:
            result.append(dict(condition))
            continue
        found = True
        since = condition.get("lastTransitionTime") if condition.get("status") == value else now
        result.append(_condition(kind, value, reason, message, generation, str(since or now)))
    if not found:
        result.append(_condition(kind, value, reason, message, generation, now))
    order = {name: index for index, name in enumerate(CONDITION_TYPES)}
    return sorted(result, key=lambda c: (order.get(str(c.get("type")), len(order)), str(c.get("type"))))


def _condition(kind: str, status: str, reason: str, message: str, generation: int, since: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def _seconds_between(since: str, now: str) -> float:
    return (datetime.fromisoformat(now) - datetime.fromisoformat(since)).total_seconds()


def stuck_components(previous: Mapping[str, Any], seen: Observation, *, now: str, deadline_s: float) -> dict[str, str]:
    """Components whose rollout does not progress, with why: a Deployment past its progressDeadlineSeconds, or any
    workload (StatefulSets have no deadline of their own) not rolled out for ``deadline_s`` since the status first
    saw it unsettled (``rollingOutSince``)."""
    before = previous.get("components") or {}
    stuck: dict[str, str] = {}
    for c in seen.components:
        since = (before.get(c.name) or {}).get("rollingOutSince")
        if c.stuck:
            stuck[c.name] = f"{c.summary()}: progress deadline exceeded"
        elif not c.settled and since and _seconds_between(str(since), now) > deadline_s:
            stuck[c.name] = f"{c.summary()}: not rolled out since {since}"
        if c.name in stuck and seen.pod_problems.get(c.name):
            stuck[c.name] += f" ({seen.pod_problems[c.name]})"
    return stuck


def build_status(
    previous: Mapping[str, Any], seen: Observation, *, now: str, rollout_deadline_s: float = 600.0
) -> dict[str, Any]:
    """The whole new status: what was seen, over what the previous status said about anything not seen."""
    status: dict[str, Any] = {key: value for key, value in previous.items() if key != "conditions"}
    status["observedGeneration"] = seen.generation
    conditions: list[dict[str, Any]] = [dict(c) for c in previous.get("conditions") or []]

    def put(kind: str, value: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, kind, value, reason, message, generation=seen.generation, now=now)

    if seen.components:
        before = previous.get("components") or {}
        status["components"] = {}
        for c in seen.components:
            entry: dict[str, Any] = {"ready": c.ready, "desired": c.desired}
            if not c.settled:
                entry["rollingOutSince"] = (before.get(c.name) or {}).get("rollingOutSince") or now
            status["components"][c.name] = entry
        delivery = seen.delivery
        if delivery is not None:
            status["delivery"] = {
                "replicas": delivery.current,
                "readyReplicas": delivery.ready,
                "readiness": f"{delivery.ready}/{delivery.desired}",
                "selector": seen.delivery_selector,
            }
    if seen.gateway_endpoint:
        status["gateway"] = {"endpoint": seen.gateway_endpoint, "serviceType": seen.gateway_type}
    if seen.ring is not None:
        status["ring"] = {
            "version": seen.ring.version,
            "members": list(seen.ring.members),
            "configMap": seen.ring_config_map,
        }
        if seen.pod_rings:
            current = sum(1 for p in seen.pod_rings if p.version == seen.ring.version)
            status["ring"]["pods"] = [p.to_status() for p in seen.pod_rings]
            status["ring"]["loaded"] = f"{current}/{len(seen.pod_rings)} pods on version {seen.ring.version}"

    if seen.problem is not None:
        put(READY, False, seen.problem.reason, seen.problem.message)
        put(DEGRADED, True, seen.problem.reason, seen.problem.message)
        put(PROGRESSING, False, seen.problem.reason, "blocked until the problem in the Degraded condition is fixed")
        status["conditions"] = conditions
        return status

    waiting = seen.waiting_for
    stuck = stuck_components(previous, seen, now=now, deadline_s=rollout_deadline_s)
    if seen.ready:
        assert seen.ring is not None
        put(
            READY,
            True,
            "AllComponentsReady",
            f"{len(seen.components)} components ready; ring version {seen.ring.version} "
            f"with {len(seen.ring.members)} members",
        )
    elif waiting:
        put(READY, False, "ComponentsNotReady", "waiting for " + ", ".join(waiting))
    else:
        put(READY, False, "RingNotPublished", "no ready delivery node has joined the ring yet")
    if waiting:
        put(PROGRESSING, True, "RollingOut", "rolling out " + ", ".join(waiting))
    else:
        put(PROGRESSING, False, "Settled", f"generation {seen.generation} is rolled out")
    if stuck:
        put(DEGRADED, True, "RolloutStuck", "rollout not progressing: " + "; ".join(stuck[n] for n in sorted(stuck)))
    elif seen.not_served:
        put(DEGRADED, True, "APINotServed", "; ".join(seen.not_served))
    else:
        put(DEGRADED, False, "AsExpected", "no problem seen")
    if seen.ring is not None and seen.ring.members and seen.ring.members == seen.ready_members:
        members = ", ".join(seen.ring.members)
        put(RING_PUBLISHED, True, "Published", f"version {seen.ring.version}: {members}")
    elif seen.ring is not None and seen.ring.members:
        kept = ", ".join(seen.ring.members)
        put(
            RING_PUBLISHED,
            False,
            "NoReadyMembers",
            f"no delivery node is ready; version {seen.ring.version} keeps {kept}",
        )
    else:
        put(RING_PUBLISHED, False, "NoReadyMembers", "no delivery node is ready yet")
    status["conditions"] = conditions
    return status


def status_patch(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch from the current status to the wanted one (None when nothing changes). Maps are
    merged key by key, so keys that disappeared (a component gone external) are removed with null."""
    if dict(current) == dict(wanted):
        return None
    patch: dict[str, Any] = {}
    for key in set(current) | set(wanted):
        old, new = current.get(key), wanted.get(key)
        if old == new:
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            inner = status_patch(old, new)
            if inner is not None:
                patch[key] = inner
        else:
            patch[key] = new
    return patch
