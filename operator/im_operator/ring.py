"""The published delivery ring: members from the delivery Service's EndpointSlices (ready pods only), and the
``<name>-ring`` ConfigMap whose ``ring.json`` gateways and pushers watch (the format ``services.common.ring.
RingSource`` reads). Pure: the reconcile passes in what it read and writes what comes back."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from im_operator.model import HTTP_PORT, RING_FILE, Cluster
from services.common.ring import DEFAULT_VNODES, Ring


@dataclass(frozen=True)
class PublishedRing:
    version: int
    members: tuple[str, ...]
    vnodes: int
    url_template: str

    def to_json(self) -> str:
        document = {**Ring.of(self.members, vnodes=self.vnodes, version=self.version).to_dict()}
        document["url_template"] = self.url_template
        return json.dumps(document, sort_keys=True)

    @classmethod
    def from_config_map(cls, config_map: Mapping[str, Any] | None) -> PublishedRing | None:
        """What a ConfigMap holds, or None when it is missing or unreadable (then it is written afresh)."""
        if not config_map:
            return None
        try:
            document = json.loads((config_map.get("data") or {})[RING_FILE])
            return cls(
                version=int(document.get("version") or 0),
                members=tuple(sorted(str(m) for m in document.get("members") or [])),
                vnodes=int(document.get("vnodes") or DEFAULT_VNODES),
                url_template=str(document.get("url_template") or ""),
            )
        except (KeyError, ValueError, TypeError, AttributeError):
            return None


def url_template(cluster: Cluster) -> str:
    """Each member's address: its stable DNS name under the headless delivery Service."""
    return f"http://{{member}}.{cluster.host('delivery')}:{HTTP_PORT}"


def ready_members(slices: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """Names of the pods behind serving endpoints, sorted and without duplicates (a pod can sit in several slices).

    The delivery Service publishes not-ready addresses (so that a draining node's name still resolves while its
    sockets move away), which makes every endpoint `ready`; `serving` is the pod's own readiness. Where a cluster
    reports no `serving`, `ready` stands in; a missing value means unknown, which the API says to read as ready."""
    members: set[str] = set()
    for endpoint_slice in slices:
        for endpoint in endpoint_slice.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            serving = conditions.get("serving", conditions.get("ready"))
            if serving is False or conditions.get("terminating") is True:
                continue
            target = endpoint.get("targetRef") or {}
            name = target.get("name") if target.get("kind") == "Pod" else endpoint.get("hostname")
            if name:
                members.add(str(name))
    return tuple(sorted(members))


def members_to_publish(
    previous: PublishedRing | None, ready: Iterable[str], *, pod_prefix: str, replicas: int
) -> tuple[str, ...]:
    """The ring's members: the ready delivery pods, and the published members that are only restarting.

    A delivery pod is a StatefulSet pod: one with an ordinal below the wanted replicas comes back under the same
    name. Keeping it in the ring while it restarts (a rolling upgrade, a crash) means its clients reconnect once,
    to the node the ring without it names (the gateway steers around a node that refuses or is gone), and stay
    there when it returns: no ring change, so no hand-off. Only scaling changes the membership: a new pod joins
    once ready, a pod above the replicas leaves at once (even while it still serves: it is
    about to stop)."""

    def wanted(member: str) -> bool:
        prefix, _, ordinal = member.rpartition("-")
        return prefix == pod_prefix and ordinal.isdigit() and int(ordinal) < replicas

    kept = {member for member in (previous.members if previous else ()) if wanted(member)}
    return tuple(sorted(kept | {member for member in ready if wanted(member)}))


def next_ring(
    previous: PublishedRing | None,
    members: Iterable[str],
    *,
    vnodes: int,
    template: str,
    floor_version: int = 0,
) -> PublishedRing | None:
    """The ring to publish, or None when the published one stands.

    The version goes up by one on every rewrite, starting above ``floor_version`` (the version in the status),
    so a recreated ConfigMap never goes back in time. An empty membership never replaces a non-empty one: with
    no ready node nothing can be routed anyway, and keeping the last members spares every client a reshuffle.
    """
    wanted = tuple(sorted(set(members)))
    if previous is not None:
        if (previous.members, previous.vnodes, previous.url_template) == (wanted, vnodes, template):
            return None
        if not wanted and previous.members:
            return None
    version = max(previous.version if previous else 0, floor_version) + 1
    return PublishedRing(version=version, members=wanted, vnodes=vnodes, url_template=template)


def config_map(cluster: Cluster, ring: PublishedRing) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": cluster.metadata(cluster.ring_config_map, "ring"),
        "data": {RING_FILE: ring.to_json()},
    }


def loaded_version(metrics_text: str) -> int | None:
    """The ring version a Courier process reports on /metrics (the ``courier_ring_version`` gauge), or None."""
    for line in metrics_text.splitlines():
        name, _, value = line.partition(" ")
        if name == "courier_ring_version":
            try:
                return int(float(value.split()[0]))
            except (ValueError, IndexError):
                return None
    return None
