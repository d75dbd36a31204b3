"""operator/im_operator/rbac.yaml against the calls the operator really makes: every request of a reconcile that
creates, changes and prunes every kind of child is granted, and every granted verb is one of those requests or of
kopf's watches. A new call without its rule fails here, and so does a rule nothing uses any more."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from im_operator import handlers
from im_operator.kube import PLURALS, Ref
from im_operator.reconcile import Reconciler

from tests.unit.operator.test_metrics import MemoryKube, imcluster

REPO = Path(__file__).resolve().parents[3]
RULES = yaml.safe_load((REPO / "operator" / "im_operator" / "rbac.yaml").read_text())["rules"]

Access = tuple[str, str, str]  # (API group, resource[/subresource], verb)

# What kopf itself does with IMClusters (handlers.py): list and watch them, and patch its progress annotations.
# The finalizers rule is checked by the API server's admission (blockOwnerDeletion), not called by anyone.
KOPF_ACCESS = {
    ("im.courier.dev", "imclusters", "list"),
    ("im.courier.dev", "imclusters", "watch"),
    ("im.courier.dev", "imclusters", "patch"),
    ("im.courier.dev", "imclusters/finalizers", "update"),
}


def resource(api_version: str, kind: str, subresource: str = "") -> tuple[str, str]:
    group = api_version.rpartition("/")[0]
    plural = PLURALS[(api_version, kind)]
    return group, f"{plural}/{subresource}" if subresource else plural


class RecordingKube(MemoryKube):
    """MemoryKube that notes the RBAC verb of every request (server-side apply: create, then patch)."""

    def __init__(self) -> None:
        super().__init__()
        self.used: set[Access] = set()

    async def put(self, manifest: Mapping[str, Any]) -> None:
        """Store an object as a user would make it: not a request of the operator."""
        await super().apply(manifest)

    def note(self, api_version: str, kind: str, verb: str, subresource: str = "") -> None:
        self.used.add((*resource(api_version, kind, subresource), verb))

    async def get(self, ref: Ref) -> dict[str, Any] | None:
        self.note(ref.api_version, ref.kind, "get")
        return await super().get(ref)

    async def list_objects(
        self, api_version: str, kind: str, namespace: str, *, selector: str = ""
    ) -> list[dict[str, Any]]:
        self.note(api_version, kind, "list")
        items = await super().list_objects(api_version, kind, namespace, selector=selector)
        for item in items:  # as the API server lists built-in kinds
            item.pop("apiVersion", None)
            item.pop("kind", None)
        return items

    async def apply(self, manifest: Mapping[str, Any], **_: Any) -> dict[str, Any]:
        ref = Ref.of(manifest)
        exists = self._key(ref) in self.objects
        self.note(ref.api_version, ref.kind, "patch" if exists else "create")
        return await super().apply(manifest)

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        self.note(manifest["apiVersion"], manifest["kind"], "create")
        return await super().create(manifest)

    async def merge_patch(self, ref: Ref, patch: Mapping[str, Any], *, subresource: str = "") -> dict[str, Any]:
        self.note(ref.api_version, ref.kind, "patch", subresource)
        return await super().merge_patch(ref, patch, subresource=subresource)

    async def delete(self, ref: Ref, *, uid: str) -> None:
        self.note(ref.api_version, ref.kind, "delete")
        await super().delete(ref, uid=uid)

    async def pod_proxy_get(self, namespace: str, pod: str, port: int, path: str) -> str:
        self.note("v1", "Pod", "get", "proxy")
        return "courier_ring_version 1\n"


def granted() -> set[Access]:
    return {
        (group, name, verb)
        for rule in RULES
        for group in rule["apiGroups"]
        for name in rule["resources"]
        for verb in rule["verbs"]
    }


def everything(namespace: str) -> dict[str, Any]:
    """An IMCluster with every kind of child the operator can render."""
    manifest = imcluster(namespace, image="courier:test")
    manifest["spec"]["gateway"].update(
        autoscaling={"maxReplicas": 6},
        ingress={"host": "chat.example.org", "tls": {"secretName": "chat-tls", "clusterIssuer": "letsencrypt"}},
        httpRoute={"parentRefs": [{"name": "public", "namespace": "infra"}], "hostnames": ["chat.example.org"]},
    )
    manifest["spec"]["delivery"]["autoscaling"] = {"maxReplicas": 10}
    manifest["spec"]["networkPolicy"] = {"enabled": True}
    return manifest


async def exercise() -> set[Access]:
    """Three passes: the first creates every child, the second applies them again, the third (a key gone from the
    generated Secret, every optional child switched off, a backend made external) patches and prunes."""
    kube = RecordingKube()
    reconciler = Reconciler(kube, now=lambda: "2026-01-01T00:00:00Z", token=lambda n: "x" * n)  # type: ignore[arg-type]
    first = everything("rbac")
    await kube.put(first)
    # A running gateway pod: the pass reads its loaded ring through the pod proxy.
    running = {
        "metadata": {"name": "chat-gateway-0", "namespace": "rbac"},
        "status": {"phase": "Running", "podIP": "10.0.0.9"},
    }
    await kube.put({"apiVersion": "v1", "kind": "Pod", **running})
    await reconciler.reconcile(first)
    # A managed backend's claim the StatefulSet controller has not owned yet: the pass makes the IMCluster its owner.
    claim = {"name": "data-chat-minio-0", "namespace": "rbac"}
    await kube.put({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": claim})
    await reconciler.reconcile(first)
    secret = kube.objects[("v1", "Secret", "rbac", "chat-secrets")]
    secret["data"] = dict.fromkeys(
        sorted(secret.pop("stringData"))[1:], ""
    )  # as the API server stores it, one key less
    second = imcluster("rbac", image="courier:test")
    second["metadata"] = first["metadata"]
    second["spec"]["services"]["message"]["replicas"] = 1
    second["spec"]["redis"] = {"external": {"secretRef": {"name": "redis", "key": "url"}}}
    await kube.put(second)
    redis = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis", "namespace": "rbac"}}
    await kube.put({**redis, "data": {"url": "cmVkaXM6Ly94"}})
    await reconciler.reconcile(second)
    left = {f"{kind}/{name}" for (_, kind, _, name) in kube.objects}
    pruned = {
        "PodDisruptionBudget/chat-message",
        "HorizontalPodAutoscaler/chat-gateway",
        "Ingress/chat-gateway",
        "HTTPRoute/chat-gateway",
    }
    assert not left & pruned, left
    return kube.used


def watched() -> set[Access]:
    """What kopf lists and watches for the handlers: the children, and the Secrets IMClusters use."""
    resources = (*handlers.CHILD_RESOURCES, handlers.SECRETS)
    return {(group, plural, verb) for group, _, plural in resources for verb in ("list", "watch")}


async def test_every_request_of_the_reconcile_is_granted() -> None:
    used = await exercise()
    missing = sorted((used | watched()) - granted())
    assert not missing, f"add rules to operator/im_operator/rbac.yaml for {missing}"
    # The exercise reached what it is meant to: pruning and the optional kinds.
    assert ("policy", "poddisruptionbudgets", "delete") in used
    assert ("networking.k8s.io", "ingresses", "create") in used
    assert ("gateway.networking.k8s.io", "httproutes", "delete") in used
    assert ("", "secrets", "patch") in used
    assert ("", "persistentvolumeclaims", "patch") in used
    assert ("", "pods/proxy", "get") in used


async def test_every_granted_verb_is_used() -> None:
    used = await exercise()
    unused = sorted(granted() - used - watched() - KOPF_ACCESS)
    assert not unused, f"operator/im_operator/rbac.yaml grants what the operator never asks for: {unused}"


class DeletedDuringThePass(RecordingKube):
    """The IMCluster is found by the pass's first read and gone from then on, as if deleted right after it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get(self, ref: Ref) -> dict[str, Any] | None:
        if ref.kind == "IMCluster":
            self.reads += 1
            if self.reads > 1:
                return None
        return await super().get(ref)


async def test_a_pass_whose_imcluster_is_deleted_meanwhile_creates_no_child() -> None:
    """A child the garbage collector took during the pass is not made again: deleting an IMCluster leaves nothing
    behind (a StatefulSet made again would take its volume claims back)."""
    kube = DeletedDuringThePass()
    reconciler = Reconciler(kube, now=lambda: "2026-01-01T00:00:00Z", token=lambda n: "x" * n)  # type: ignore[arg-type]
    body = everything("rbac")
    await kube.put(body)
    outcome = await reconciler.reconcile(body)
    assert outcome.gone
    assert not {kind for (_, kind, _, _) in kube.objects} & {"Deployment", "StatefulSet", "Service"}
