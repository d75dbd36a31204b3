"""Data safety and status, unit by unit: Secret values hashed into the pod templates that read them, the ring
written only over the version that was read, rollouts that stop progressing, the ring version of each pod, and the
retry backoff."""

from __future__ import annotations

import copy
from typing import Any

from im_operator import ring
from im_operator.config import OperatorConfig
from im_operator.model import Cluster
from im_operator.reconcile import (
    SECRETS_HASH,
    Reconciler,
    missing_secret_refs,
    pod_problem,
    roll_on_secret_change,
    secret_references,
)
from im_operator.status import Component, Observation, PodRing, build_status

from tests.unit.operator.fake_kube import FakeKube

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z", "2026-01-01T00:11:00Z"


def workload(name: str, *env: tuple[str, str]) -> dict[str, Any]:
    refs = [{"name": f"V{i}", "valueFrom": {"secretKeyRef": {"name": s, "key": k}}} for i, (s, k) in enumerate(env)]
    return {
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"template": {"metadata": {}, "spec": {"containers": [{"name": "c", "env": refs}]}}},
    }


def annotation(manifest: dict[str, Any]) -> str | None:
    return manifest["spec"]["template"]["metadata"].get("annotations", {}).get(SECRETS_HASH)


def test_a_changed_secret_value_changes_the_hash_of_the_pods_that_read_it_only() -> None:
    file, gateway, plain = workload("file", ("s3", "secret")), workload("gateway", ("gen", "token")), workload("x")
    manifests = [file, gateway, plain]
    before = {"s3": {"secret": "b25l", "unread": "eA=="}, "gen": {"token": "dA=="}}
    assert secret_references(manifests) == [("gen", "token"), ("s3", "secret")]

    first = copy.deepcopy(manifests)
    roll_on_secret_change(first, before)
    unread = copy.deepcopy(manifests)
    roll_on_secret_change(unread, {**before, "s3": {**before["s3"], "unread": "eQ=="}})
    rotated = copy.deepcopy(manifests)
    roll_on_secret_change(rotated, {**before, "s3": {**before["s3"], "secret": "dHdv"}})

    assert annotation(first[0]) and annotation(first[1]) and annotation(first[2]) is None
    assert [annotation(m) for m in unread] == [annotation(m) for m in first]  # a key nobody reads changed
    assert annotation(rotated[0]) != annotation(first[0])
    assert annotation(rotated[1]) == annotation(first[1])


def test_missing_external_secret_references_are_named_with_their_field() -> None:
    spec = {"redis": {"external": {"secretRef": {"name": "r", "key": "url"}}}}
    assert missing_secret_refs(spec, {"r": None}) == ["Secret/r (spec.redis.external.secretRef)"]
    assert missing_secret_refs(spec, {"r": {"other": "x"}}) == ["key url in Secret/r (spec.redis.external.secretRef)"]
    assert missing_secret_refs(spec, {"r": {"url": "x"}}) == []


def test_a_pod_problem_is_the_waiting_reason_or_the_scheduler_message() -> None:
    pulling = {
        "metadata": {"name": "p"},
        "status": {
            "containerStatuses": [
                {"name": "gateway", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}
            ]
        },
    }
    pending = {
        "metadata": {"name": "q"},
        "status": {"conditions": [{"type": "PodScheduled", "status": "False", "message": "Insufficient cpu"}]},
    }
    assert pod_problem(pulling) == "pod p: gateway ImagePullBackOff: no such image"
    assert pod_problem(pending) == "pod q: Insufficient cpu"
    assert pod_problem({"metadata": {"name": "r"}, "status": {"phase": "Running"}}) == ""


def test_a_crash_looping_container_is_named_with_its_last_exit_and_the_last_line_it_logged() -> None:
    """What CI's e2e needed and did not have: the managed Kafka crash-looped, and the IMCluster said only that it
    waited. The termination message is the end of the container's log (FallbackToLogsOnError)."""
    log_tail = "formatting /var/lib/kafka/data/logs\nusage: kafka-storage format [-h] ...\n"
    log_tail += "kafka-storage: error: argument --cluster-id/-t: expected one argument\n\n"
    crashing = {
        "metadata": {"name": "chat-kafka-0"},
        "status": {
            "containerStatuses": [
                {
                    "name": "kafka",
                    "restartCount": 8,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": log_tail}},
                }
            ]
        },
    }
    silent = copy.deepcopy(crashing)
    del silent["status"]["containerStatuses"][0]["lastState"]["terminated"]["message"]

    assert pod_problem(crashing) == (
        "pod chat-kafka-0: kafka CrashLoopBackOff, last exit 1 (Error): "
        "kafka-storage: error: argument --cluster-id/-t: expected one argument"
    )
    assert pod_problem(silent) == "pod chat-kafka-0: kafka CrashLoopBackOff, last exit 1 (Error)"


def test_a_rollout_not_finished_within_the_deadline_turns_degraded_with_the_pod_reason() -> None:
    stuck = [Component("delivery", 2, 1, 2, False)]
    seen = Observation(generation=3, components=stuck, pod_problems={"delivery": "pod d-1: ImagePullBackOff"})

    first = build_status({}, seen, now=T0, rollout_deadline_s=600)
    later = build_status(first, seen, now=T1, rollout_deadline_s=600)
    overdue = build_status(later, seen, now=T2, rollout_deadline_s=600)
    settled = build_status(overdue, Observation(3, components=[Component("delivery", 2, 2, 2, True)]), now=T2)

    assert first["components"]["delivery"]["rollingOutSince"] == T0
    assert later["components"]["delivery"]["rollingOutSince"] == T0
    conditions = [{c["type"]: c for c in s["conditions"]}["Degraded"] for s in (first, later, overdue, settled)]
    assert [(c["status"], c["reason"]) for c in conditions] == [
        ("False", "AsExpected"),
        ("False", "AsExpected"),
        ("True", "RolloutStuck"),
        ("False", "AsExpected"),
    ]
    assert "delivery 1/2 (rolling out): not rolled out since " + T0 in conditions[2]["message"]
    assert "pod d-1: ImagePullBackOff" in conditions[2]["message"]
    assert "rollingOutSince" not in settled["components"]["delivery"]


def test_the_status_lists_each_pods_loaded_ring_version() -> None:
    published = ring.PublishedRing(version=4, members=("d-0",), vnodes=150, url_template="")
    pods = [PodRing("d-0", "delivery", 4), PodRing("g-1", "gateway", 3), PodRing("g-2", "gateway", error="403")]

    status = build_status({}, Observation(generation=1, ring=published, pod_rings=pods), now=T0)

    assert status["ring"]["loaded"] == "1/3 pods on version 4"
    assert status["ring"]["pods"] == [
        {"name": "d-0", "component": "delivery", "version": 4},
        {"name": "g-1", "component": "gateway", "version": 3},
        {"name": "g-2", "component": "gateway", "error": "403"},
    ]


def test_the_loaded_version_is_read_from_the_metrics_text() -> None:
    text = "# HELP courier_ring_version Version\n# TYPE courier_ring_version gauge\ncourier_ring_version 7.0\n"
    assert ring.loaded_version(text) == 7
    assert ring.loaded_version("courier_ring_members 3.0\n") is None


def test_retries_back_off_exponentially_up_to_the_cap() -> None:
    config = OperatorConfig(retry_delay_s=2, max_retry_delay_s=60)
    assert [config.retry_delay(n) for n in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    assert config.retry_delay(10_000) == 60


async def test_a_ring_write_over_a_changed_config_map_retries_from_a_fresh_read() -> None:
    kube = FakeKube()
    imcluster = {
        "apiVersion": "im.courier.dev/v1alpha1",
        "kind": "IMCluster",
        "metadata": {"name": "chat", "namespace": "ns", "uid": "u-1", "generation": 1},
        "spec": {"delivery": {"replicas": 2}},
    }
    kube.put(imcluster)
    kube.put(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "chat-delivery-x", "namespace": "ns"},
            "endpoints": [
                {"conditions": {"serving": True}, "targetRef": {"kind": "Pod", "name": f"chat-delivery-{i}"}}
                for i in (0, 1)
            ],
        }
    )
    reconciler = Reconciler(kube)  # type: ignore[arg-type]
    cluster = Cluster.of(imcluster)
    other = ring.config_map(cluster, ring.PublishedRing(5, ("chat-delivery-0",), 150, ring.url_template(cluster)))
    kube.put(ring.config_map(cluster, ring.PublishedRing(4, (), 150, ring.url_template(cluster))))
    # Another operator publishes version 5 between this pass's read and its write.
    kube.before_write = lambda: kube.put(other)

    published, _members = await reconciler._publish_ring(cluster, imcluster)

    assert published is not None
    stored = ring.PublishedRing.from_config_map(kube.objects[("ConfigMap", "ns", "chat-ring")])
    assert stored == published
    assert (stored.version, stored.members) == (6, ("chat-delivery-0", "chat-delivery-1"))


def claim(name: str, *owners: dict[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "ns"}
    if owners:
        metadata["ownerReferences"] = list(owners)
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata}


def backend(name: str, when_deleted: str) -> dict[str, Any]:
    return {
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": when_deleted, "whenScaled": "Retain"},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}}],
        },
    }


async def test_the_imcluster_owns_the_claims_that_go_with_their_statefulset_and_not_the_kept_ones() -> None:
    kube = FakeKube()
    cluster = Cluster.of({"metadata": {"name": "chat", "namespace": "ns", "uid": "u-1", "generation": 1}})
    statefulset = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "chat-redis", "uid": "s-1"}
    statefulset["controller"] = True
    ours = {"apiVersion": "im.courier.dev/v1alpha1", "kind": "IMCluster", "name": "chat", "uid": "u-1"}
    # The StatefulSet controller has not owned the MinIO claim yet; the Kafka claim is kept but was ours before.
    kube.put(claim("data-chat-minio-0"))
    kube.put(claim("data-chat-redis-0", statefulset))
    kube.put(claim("data-chat-kafka-0", ours))
    kube.put(claim("data-chat-postgres-0", ours))  # a backend made external since: no StatefulSet applied
    applied = [
        backend("chat-minio", "Delete"),
        backend("chat-redis", "Delete"),
        backend("chat-kafka", "Retain"),
        backend("chat-database", "Delete"),  # its claim not made yet
        {"kind": "StatefulSet", "metadata": {"name": "chat-delivery"}, "spec": {"replicas": 2}},
    ]

    await Reconciler(kube)._own_claims(cluster, applied)  # type: ignore[arg-type]

    def owners(name: str) -> list[dict[str, Any]]:
        found = kube.objects[("PersistentVolumeClaim", "ns", name)]
        return list(found["metadata"].get("ownerReferences") or [])

    assert owners("data-chat-minio-0") == [ours]
    assert owners("data-chat-redis-0") == [statefulset, ours]
    assert owners("data-chat-kafka-0") == []
    assert owners("data-chat-postgres-0") == []
    assert ("PersistentVolumeClaim", "ns", "data-chat-database-0") not in kube.objects
    # A second pass changes nothing.
    version = kube.version
    await Reconciler(kube)._own_claims(cluster, applied)  # type: ignore[arg-type]
    assert kube.version == version
