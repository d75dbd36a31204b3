"""The published ring: members from ready EndpointSlice endpoints; a new version only when membership changes;
a document services.common.ring.RingSource reads as the services do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from im_operator import ring
from im_operator.model import Cluster

from services.common.ring import RingSource

CLUSTER = Cluster(name="chat", namespace="team-a", uid="u-1", generation=1)
TEMPLATE = ring.url_template(CLUSTER)


def endpoint(pod: str, *, ready: bool | None = True, terminating: bool = False) -> dict[str, Any]:
    conditions: dict[str, Any] = {"terminating": terminating}
    if ready is not None:
        conditions["ready"] = ready
    return {"addresses": ["10.0.0.1"], "conditions": conditions, "targetRef": {"kind": "Pod", "name": pod}}


def test_ready_members_are_the_pods_of_ready_endpoints_sorted_once_each() -> None:
    slices = [
        {
            "endpoints": [
                endpoint("chat-delivery-2"),
                endpoint("chat-delivery-0"),
                endpoint("chat-delivery-1", ready=False),
            ]
        },
        {"endpoints": [endpoint("chat-delivery-0"), endpoint("chat-delivery-3", terminating=True)]},
        {"endpoints": [endpoint("chat-delivery-4", ready=None)]},
        {"endpoints": None},
    ]

    assert ring.ready_members(slices) == ("chat-delivery-0", "chat-delivery-2", "chat-delivery-4")


def test_first_ring_is_version_one_above_the_status_floor() -> None:
    first = ring.next_ring(None, ["b", "a"], vnodes=150, template=TEMPLATE)
    assert first is not None
    assert (first.version, first.members) == (1, ("a", "b"))

    recreated = ring.next_ring(None, ["a"], vnodes=150, template=TEMPLATE, floor_version=7)
    assert recreated is not None
    assert recreated.version == 8


def test_ring_is_rewritten_only_when_membership_changes() -> None:
    current = ring.PublishedRing(version=3, members=("a", "b"), vnodes=150, url_template=TEMPLATE)

    assert ring.next_ring(current, ["b", "a", "a"], vnodes=150, template=TEMPLATE) is None
    grown = ring.next_ring(current, ["a", "b", "c"], vnodes=150, template=TEMPLATE)
    assert grown is not None
    assert (grown.version, grown.members) == (4, ("a", "b", "c"))


def test_no_ready_member_keeps_the_last_published_ring() -> None:
    current = ring.PublishedRing(version=3, members=("a", "b"), vnodes=150, url_template=TEMPLATE)

    assert ring.next_ring(current, [], vnodes=150, template=TEMPLATE) is None


def test_config_map_round_trips_and_is_what_the_services_ring_source_reads(tmp_path: Path) -> None:
    published = ring.PublishedRing(
        version=5, members=("chat-delivery-0", "chat-delivery-1"), vnodes=150, url_template=TEMPLATE
    )
    config_map = ring.config_map(CLUSTER, published)

    assert config_map["metadata"]["name"] == "chat-ring"
    assert config_map["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert ring.PublishedRing.from_config_map(config_map) == published
    path = tmp_path / "ring.json"
    path.write_text(config_map["data"]["ring.json"])
    source = RingSource(nodes={}, file=str(path))
    assert source.ring.members == ("chat-delivery-0", "chat-delivery-1")
    assert source.ring.version == 5
    assert source.url_for("chat-delivery-1") == "http://chat-delivery-1.chat-delivery.team-a.svc:8080"


def test_an_unreadable_config_map_counts_as_none() -> None:
    assert ring.PublishedRing.from_config_map({"data": {"ring.json": "{not json"}}) is None
    assert ring.PublishedRing.from_config_map({"data": {}}) is None
    assert ring.PublishedRing.from_config_map(None) is None


def test_a_restarting_member_stays_in_the_ring_and_only_scaling_changes_it() -> None:
    published = ring.next_ring(None, ["chat-delivery-0", "chat-delivery-1"], vnodes=150, template=TEMPLATE)
    assert published is not None
    prefix = "chat-delivery"
    # chat-delivery-1 is being replaced (rolling upgrade): not ready, but it comes back under the same name.
    restarting = ring.members_to_publish(published, ["chat-delivery-0"], pod_prefix=prefix, replicas=2)
    assert restarting == ("chat-delivery-0", "chat-delivery-1")
    assert ring.next_ring(published, restarting, vnodes=150, template=TEMPLATE) is None, "no new ring version"
    # Scaled up: a new pod joins once it is ready, not before.
    assert ring.members_to_publish(
        published, ["chat-delivery-0", "chat-delivery-1"], pod_prefix=prefix, replicas=3
    ) == (
        "chat-delivery-0",
        "chat-delivery-1",
    )
    grown = ring.members_to_publish(
        published, ["chat-delivery-0", "chat-delivery-1", "chat-delivery-2"], pod_prefix=prefix, replicas=3
    )
    assert grown == ("chat-delivery-0", "chat-delivery-1", "chat-delivery-2")
    # Scaled down: a member above the replicas leaves at once, even while its pod still serves.
    bigger = ring.next_ring(published, grown, vnodes=150, template=TEMPLATE)
    assert ring.members_to_publish(bigger, grown, pod_prefix=prefix, replicas=2) == (
        "chat-delivery-0",
        "chat-delivery-1",
    )


def test_serving_is_the_readiness_when_the_service_publishes_not_ready_pods() -> None:
    draining = endpoint("chat-delivery-1", ready=True)
    draining["conditions"]["serving"] = False
    slices = [{"endpoints": [endpoint("chat-delivery-0"), draining]}]
    assert ring.ready_members(slices) == ("chat-delivery-0",)
