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
    """Names of the pods behind ready endpoints, sorted and without duplicates (a pod can sit in several slices)."""
    members: set[str] = set()
    for endpoint_slice in slices:
        for endpoint in endpoint_slice.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            # A missing `ready` means unknown, which the API says to read as ready; terminating pods are never ready.
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            target = endpoint.get("targetRef") or {}
            name = target.get("name") if target.get("kind") == "Pod" else endpoint.get("hostname")
            if name:
                members.add(str(name))
    return tuple(sorted(members))


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
