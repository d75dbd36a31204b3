"""The one level-based reconcile of an IMCluster, and the ``Reconciler`` that runs it one pass at a time per
IMCluster, whoever asks: kopf's create/update/resume handlers, a child's event, or the drift loop.

A pass: render the children, make sure the generated Secret exists, apply every child with server-side apply,
delete children the spec no longer asks for, publish the ring from ready delivery endpoints, and write the
status. Every step is idempotent, so a pass over an unchanged cluster writes nothing at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from im_operator import credentials, metrics, ring
from im_operator.kube import ApiError, Conflict, Kube, NotFound, Ref
from im_operator.model import API_VERSION, CLUSTER_LABEL, COMPONENT_LABEL, HTTP_PORT, KIND, Cluster, InvalidSpec
from im_operator.render import (
    OPTIONAL_KINDS,
    RENDERED_POLICY_KINDS,
    REPLICAS_HANDOVER_MANAGER,
    render,
    replicas_handover,
)
from im_operator.status import (
    DEGRADED,
    READY,
    Component,
    Observation,
    PodRing,
    Problem,
    build_status,
    component_of,
    gateway_endpoint,
    status_patch,
)
from services.common.ring import DEFAULT_VNODES

log = logging.getLogger("im_operator")

# The kinds render() produces; children of these kinds that carry the cluster's label, are owned by it, and
# are no longer rendered get deleted.
CHILD_KINDS = (
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    *RENDERED_POLICY_KINDS,
)
EVENT_MESSAGE_LIMIT = 1000  # the API server refuses longer Event messages
SECRETS_HASH = "im.courier.dev/secrets-hash"
RING_REPORTERS = ("gateway", "delivery")  # the processes whose loaded ring the status lists
POD_PROXY_CONCURRENCY = 4
RING_WRITE_ATTEMPTS = 5


def utcnow_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Outcome:
    """How a pass ended, for the kopf handler to turn into success, a retry or a permanent failure."""

    ready: bool
    problem: Problem | None
    waiting_for: tuple[str, ...] = ()
    gone: bool = False
    """The IMCluster was deleted during the pass: nothing more to do, its children are the garbage collector's."""

    @property
    def message(self) -> str:
        if self.gone:
            return "deleted"
        if self.problem is not None:
            return f"{self.problem.reason}: {self.problem.message}"
        if self.waiting_for:
            return "not ready yet: waiting for " + ", ".join(self.waiting_for)
        return "ready" if self.ready else "not ready yet: no ready delivery node has joined the ring"


class NameTaken(Exception):
    """A child's name is held by an object this IMCluster does not own; the operator never takes it over."""


class SecretLost(Exception):
    """The generated Secret is gone while backend data made with its passwords remains."""


class OwnerGone(Exception):
    """The IMCluster was deleted while its pass ran. A child missing then was taken by the garbage collector, and
    creating it again would race the collector (a StatefulSet made again takes its volume claims back)."""


class Reconciler:
    """Runs passes: one at a time per IMCluster; kicks that arrive during a pass fold into one more pass."""

    def __init__(
        self,
        kube: Kube,
        *,
        default_image: str = "",
        backend_images: Mapping[str, str] | None = None,
        now: Callable[[], str] = utcnow_rfc3339,
        token: Callable[[int], str] = secrets.token_hex,
        rollout_deadline_s: float = 600.0,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self.kube = kube
        self.default_image = default_image
        self.backend_images = dict(backend_images or {})
        self.rollout_deadline_s = rollout_deadline_s
        self._leading = leading
        # (namespace, Secret name) -> the IMClusters that use it, as of their last pass: maps a Secret's watch
        # event to the IMClusters to reconcile.
        self._secret_users: dict[tuple[str, str], set[str]] = {}
        self._now = now
        self._token = token
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._queued: set[tuple[str, str]] = set()

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def reconcile(self, imcluster: Mapping[str, Any]) -> Outcome:
        """One full pass over the IMCluster kopf handed in (its create/update/resume handlers)."""
        cluster = Cluster.of(imcluster)
        async with self._lock((cluster.namespace, cluster.name)):
            # Read it again under the lock: a pass started by a child's change may have written the status since
            # kopf's copy was taken, and conditions must build on the status as it is.
            fresh = await self.kube.get(Ref(API_VERSION, KIND, cluster.namespace, cluster.name))
            if fresh is None:
                metrics.forget(cluster.namespace, cluster.name)
                return Outcome(ready=False, problem=None, gone=True)  # deleted meanwhile: nothing left to wait for
            return await self._pass(fresh)

    async def kick(self, namespace: str, name: str) -> None:
        """Something about this IMCluster's children changed: make sure a pass starts after now. A kick that
        finds another one already queued returns at once; the queued pass will read the newest state."""
        key = (namespace, name)
        if key in self._queued:
            return
        self._queued.add(key)
        try:
            async with self._lock(key):
                self._queued.discard(key)
                imcluster = await self.kube.get(Ref(API_VERSION, KIND, namespace, name))
                if imcluster is None or (imcluster.get("metadata") or {}).get("deletionTimestamp"):
                    metrics.forget(namespace, name)
                    return  # gone or going: the garbage collector removes the children
                await self._pass(imcluster)
        except ApiError as exc:
            log.warning("reconcile of %s/%s after a change of its children failed: %s", namespace, name, exc)
        finally:
            self._queued.discard(key)

    def users_of_secret(self, namespace: str, name: str) -> list[str]:
        """The IMClusters whose last pass used this Secret (generated, or referenced by the spec)."""
        return sorted(self._secret_users.get((namespace, name), ()))

    def _remember_secrets(self, cluster: Cluster, names: Iterable[str]) -> None:
        for users in self._secret_users.values():
            users.discard(cluster.name)
        for name in names:
            self._secret_users.setdefault((cluster.namespace, name), set()).add(cluster.name)
        self._secret_users = {key: users for key, users in self._secret_users.items() if users}

    async def kick_all(self, namespaces: Iterable[str]) -> int:
        """A pass over every IMCluster in the namespaces (all of them for an empty list): the drift repair."""
        found: list[dict[str, Any]] = []
        for namespace in list(namespaces) or [""]:
            found += await self.kube.list_objects(API_VERSION, KIND, namespace)
        keys = [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in found]
        await asyncio.gather(*(self.kick(namespace, name) for namespace, name in keys))
        return len(keys)

    # ------------------------------------------------------------------------------------------------ one pass

    async def _pass(self, imcluster: Mapping[str, Any]) -> Outcome:
        """One pass, counted by its result and timed (courier_operator_reconcile*); none at all while this process
        is not sure it still leads (leader election), not even a status write."""
        if not self._leading():
            log.warning("not reconciling %s: the Lease was not renewed in time", Cluster.of(imcluster).name)
            return Outcome(ready=False, problem=None, waiting_for=("the leader election Lease",))
        with metrics.timed_pass() as timed:
            outcome = await self._pass_once(imcluster)
            permanent = outcome.problem is not None and outcome.problem.permanent
            timed.result = metrics.result_of(outcome.ready, permanent)
            return outcome

    async def _pass_once(self, imcluster: Mapping[str, Any]) -> Outcome:
        cluster = Cluster.of(imcluster)
        try:
            manifests = render(imcluster, default_image=self.default_image, backend_images=self.backend_images)
        except InvalidSpec as exc:
            return await self._finish(
                imcluster, Observation(cluster.generation, Problem("InvalidSpec", str(exc), True))
            )
        spec = imcluster.get("spec") or {}
        try:
            missing = await self._ensure_secret(cluster, imcluster)
            references = secret_references(manifests)
            self._remember_secrets(cluster, {name for name, _ in references} | {cluster.secret})
            found = await self._read_secrets(cluster, {name for name, _ in references})
            missing += missing_secret_refs(spec, found)
            if missing:
                problem = Problem("MissingSecret", "missing " + "; ".join(missing))
                return await self._finish(imcluster, Observation(cluster.generation, problem))
            roll_on_secret_change(manifests, found)
            applied, not_served = await self._apply(cluster, imcluster, manifests)
            await self._own_claims(cluster, applied)
            published, members = await self._publish_ring(cluster, imcluster)
        except OwnerGone as exc:
            log.info("%s/%s was deleted during its pass (at %s): stopped", cluster.namespace, cluster.name, exc)
            return Outcome(ready=False, problem=None, gone=True)
        except SecretLost as exc:
            return await self._finish(imcluster, Observation(cluster.generation, Problem("SecretLost", str(exc))))
        except NameTaken as exc:
            return await self._finish(imcluster, Observation(cluster.generation, Problem("NameConflict", str(exc))))
        except ApiError as exc:
            # The API server refusing a child the spec produced (a bad quantity, say) will not change by retrying.
            problem = Problem("ApplyFailed", str(exc), permanent=exc.invalid)
            return await self._finish(imcluster, Observation(cluster.generation, problem))
        workloads = [o for o in applied if o["kind"] in ("Deployment", "StatefulSet")]
        components = sorted(
            (component_of(o["metadata"]["labels"][COMPONENT_LABEL], o) for o in workloads), key=lambda c: c.name
        )
        gateway = next(
            o for o in applied if o["kind"] == "Service" and o["metadata"]["name"] == cluster.child("gateway")
        )
        seen = Observation(
            generation=cluster.generation,
            components=components,
            gateway_endpoint=gateway_endpoint(cluster, gateway),
            gateway_type=str((gateway.get("spec") or {}).get("type") or "ClusterIP"),
            delivery_selector=cluster.selector_string("delivery"),
            ring=published,
            ring_config_map=cluster.ring_config_map,
            ready_members=members,
            pod_rings=await self._pod_rings(cluster),
            pod_problems=await self._pod_problems(cluster, components),
            not_served=[not_served_message(m) for m in not_served],
        )
        return await self._finish(imcluster, seen)

    async def _finish(self, imcluster: Mapping[str, Any], seen: Observation) -> Outcome:
        cluster = Cluster.of(imcluster)
        previous: Mapping[str, Any] = imcluster.get("status") or {}
        wanted = build_status(previous, seen, now=self._now(), rollout_deadline_s=self.rollout_deadline_s)
        metrics.record_status(cluster.namespace, cluster.name, wanted)
        patch = status_patch(previous, wanted)
        if patch is not None:
            ref = Ref(API_VERSION, KIND, cluster.namespace, cluster.name)
            try:
                await self.kube.merge_patch(ref, {"status": patch}, subresource="status")
            except ApiError as exc:
                log.warning("cannot write the status of %s/%s: %s", cluster.namespace, cluster.name, exc)
            await self._announce_transitions(imcluster, previous, wanted, seen)
        return Outcome(ready=seen.ready, problem=seen.problem, waiting_for=tuple(seen.waiting_for))

    async def _announce_transitions(
        self, imcluster: Mapping[str, Any], previous: Mapping[str, Any], wanted: Mapping[str, Any], seen: Observation
    ) -> None:
        """An Event when the cluster turns ready or a problem appears; not on every pass that finds it so."""
        before = {c.get("type"): c for c in previous.get("conditions") or []}
        for condition in wanted.get("conditions") or []:
            old = before.get(condition["type"]) or {}
            if (old.get("status"), old.get("reason")) == (condition["status"], condition["reason"]):
                continue
            if seen.problem is not None and condition["type"] == READY:
                await self._event(imcluster, "Warning", seen.problem.reason, seen.problem.message)
            elif condition["type"] == READY and condition["status"] == "True":
                await self._event(imcluster, "Normal", "Ready", condition["message"])
            elif condition["type"] == DEGRADED and condition["status"] == "True" and seen.problem is None:
                await self._event(imcluster, "Warning", condition["reason"], condition["message"])

    async def _event(self, imcluster: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """A core/v1 Event about the IMCluster, posted directly: kopf's own poster only works inside its handlers,
        and passes also run from child watches and the drift loop. A lost Event never fails a pass."""
        if len(message) > EVENT_MESSAGE_LIMIT:
            message = message[: EVENT_MESSAGE_LIMIT - 3] + "..."
        try:
            await self.kube.create(event_manifest(imcluster, kind, reason, message, now=self._now()))
        except ApiError as exc:
            log.warning("cannot post Event %s about %s: %s", reason, Cluster.of(imcluster).name, exc)

    # ------------------------------------------------------------------------------------------------ steps

    async def _ensure_secret(self, cluster: Cluster, imcluster: Mapping[str, Any]) -> list[str]:
        """Create the generated Secret once; later only add keys it lacks, and keep its owner reference in step
        with whenDeleted (no owner while backend data is retained, so the Secret outlives the IMCluster with it).
        A Secret of that name the user made (to bring their own keys) is used as it is and never changed: then
        missing keys are a problem to report. A generated Secret that is gone while a backend's volume still holds
        data made with its passwords is not made again (new passwords would lock that data out): SecretLost."""
        spec = imcluster.get("spec") or {}
        ref = Ref("v1", "Secret", cluster.namespace, cluster.secret)
        existing = await self.kube.get(ref)
        fresh = credentials.generate(self._token)
        if existing is None:
            await self._refuse_if_data_remains(cluster)
            try:
                await self.kube.create(credentials.manifest(cluster, fresh, spec))
            except Conflict:
                existing = await self.kube.get(ref)  # made meanwhile (another pass of an older operator)
            else:
                await self._event(imcluster, "Normal", "Created", f"generated Secret/{cluster.secret}")
                return []
        if existing is None:
            return []
        lacking = credentials.missing(existing, fresh)
        if not credentials.generated(cluster, existing):
            if lacking:
                return [f"keys {', '.join(sorted(lacking))} in Secret/{cluster.secret} (not generated by the operator)"]
            return []
        patch: dict[str, Any] = {}
        owners = credentials.owner_references(cluster, spec)
        if ((existing.get("metadata") or {}).get("ownerReferences") or []) != owners:
            patch["metadata"] = {"ownerReferences": owners}
        if lacking:
            patch["stringData"] = lacking
        if not patch:
            return []
        await self.kube.merge_patch(ref, patch)
        if lacking:
            added = ", ".join(sorted(lacking))
            await self._event(imcluster, "Normal", "Updated", f"added {added} to Secret/{cluster.secret}")
        return []

    async def _own_claims(self, cluster: Cluster, applied: Iterable[Mapping[str, Any]]) -> None:
        """The IMCluster as an owner of the claims that go with their StatefulSet (whenDeleted: Delete), and of no
        other claim of the cluster (kept ones, Retain, or a backend's made external). The StatefulSet controller
        owns such a claim itself only once its informer has seen it: a StatefulSet deleted before that leaves the
        claim with no owner, and the garbage collector never removes it. So a claim of a Ready IMCluster always has
        an owner whose deletion takes it along, and a kept claim never has this one."""
        going = claims_going_with(applied)
        found = await self.kube.list_objects(
            "v1", "PersistentVolumeClaim", cluster.namespace, selector=f"{CLUSTER_LABEL}={cluster.name}"
        )
        for claim in found:
            metadata = claim.get("metadata") or {}
            if metadata.get("deletionTimestamp"):
                continue
            owners = metadata.get("ownerReferences") or []
            wanted = [o for o in owners if o.get("uid") != cluster.uid]
            if metadata.get("name") in going:
                wanted.append(cluster.owner_reference(controller=False))
            if wanted == owners:
                continue
            ref = Ref("v1", "PersistentVolumeClaim", cluster.namespace, str(metadata.get("name")))
            try:
                await self.kube.merge_patch(
                    ref, {"metadata": {"ownerReferences": wanted, "resourceVersion": metadata.get("resourceVersion")}}
                )
            except (Conflict, NotFound):  # changed or gone since the read: the next pass looks again
                continue

    async def _refuse_if_data_remains(self, cluster: Cluster) -> None:
        kept = []
        for name in credentials.claim_names(cluster):
            claim = await self.kube.get(Ref("v1", "PersistentVolumeClaim", cluster.namespace, name))
            if claim is not None and not (claim.get("metadata") or {}).get("deletionTimestamp"):
                kept.append(f"PersistentVolumeClaim/{name}")
        if kept:
            raise SecretLost(
                f"Secret/{cluster.secret} is gone but {', '.join(kept)} still hold data made with its passwords; "
                "restore the Secret (from a backup), or delete those claims to start empty. The operator does not "
                "generate new passwords over existing data."
            )

    async def _read_secrets(self, cluster: Cluster, names: Iterable[str]) -> dict[str, dict[str, str] | None]:
        """The data of each named Secret (None when it does not exist), read once per pass."""
        found: dict[str, dict[str, str] | None] = {}
        for name in sorted(set(names)):
            secret = await self.kube.get(Ref("v1", "Secret", cluster.namespace, name))
            found[name] = None if secret is None else dict(secret.get("data") or {})
        return found

    async def _pod_rings(self, cluster: Cluster) -> list[PodRing]:
        """The ring version every running gateway and delivery pod has loaded, read from its /metrics through the
        API server's pod proxy; a pod that cannot be read is listed with the reason."""
        found: list[tuple[str, str]] = []
        for component in RING_REPORTERS:
            pods = await self.kube.list_objects(
                "v1", "Pod", cluster.namespace, selector=cluster.selector_string(component)
            )
            found += [(p["metadata"]["name"], component) for p in pods if _running(p)]
        limit = asyncio.Semaphore(POD_PROXY_CONCURRENCY)

        async def read(name: str, component: str) -> PodRing:
            async with limit:
                try:
                    text = await self.kube.pod_proxy_get(cluster.namespace, name, HTTP_PORT, "metrics")
                except ApiError as exc:
                    return PodRing(name, component, error=str(exc)[:200])
            version = ring.loaded_version(text)
            return PodRing(name, component, version, "" if version is not None else "no courier_ring_version")

        return list(await asyncio.gather(*(read(name, component) for name, component in sorted(found))))

    async def _pod_problems(self, cluster: Cluster, components: Iterable[Component]) -> dict[str, str]:
        """For components not rolled out yet, what one of their pods is waiting on (ImagePullBackOff...)."""
        problems: dict[str, str] = {}
        for component in components:
            if component.settled:
                continue
            pods = await self.kube.list_objects(
                "v1", "Pod", cluster.namespace, selector=cluster.selector_string(component.name)
            )
            reason = next((r for r in map(pod_problem, pods) if r), "")
            if reason:
                problems[component.name] = reason
        return problems

    async def _still_there(self, cluster: Cluster) -> bool:
        """Whether this IMCluster still exists and is not being deleted (asked before a child is created)."""
        found = await self.kube.get(Ref(API_VERSION, KIND, cluster.namespace, cluster.name))
        meta = (found or {}).get("metadata") or {}
        return meta.get("uid") == cluster.uid and not meta.get("deletionTimestamp")

    async def _apply(
        self, cluster: Cluster, imcluster: Mapping[str, Any], manifests: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Apply the children and prune the ones no longer rendered. Returns the applied children as the API server
        answered, and the rendered ones left out because the API server does not serve their kind (OPTIONAL_KINDS:
        a listing answered 404, so there is nothing of that kind to prune either)."""
        existing: dict[tuple[str, str], dict[str, Any]] = {}
        unserved: set[tuple[str, str]] = set()
        selector = f"{CLUSTER_LABEL}={cluster.name}"
        for api_version, kind in CHILD_KINDS:
            try:
                found = await self.kube.list_objects(api_version, kind, cluster.namespace, selector=selector)
            except NotFound:
                if (api_version, kind) not in OPTIONAL_KINDS:
                    raise
                unserved.add((api_version, kind))
                continue
            for obj in found:
                obj.setdefault("apiVersion", api_version)  # the API server leaves it out of a list's items
                existing[(kind, obj["metadata"]["name"])] = obj
        created: list[str] = []
        updated: list[str] = []
        applied: list[dict[str, Any]] = []
        not_served = [m for m in manifests if (m["apiVersion"], m["kind"]) in unserved]
        for manifest in manifests:
            if (manifest["apiVersion"], manifest["kind"]) in unserved:
                continue
            ref = Ref.of(manifest)
            before = existing.get((ref.kind, ref.name))
            if before is None:
                before = await self.kube.get(ref)  # unlabelled, so not listed: someone else's object?
            if before is not None and not cluster.owns(before):
                raise NameTaken(f"{ref} already exists and does not belong to this IMCluster; rename or delete it")
            if before is None and not await self._still_there(cluster):
                raise OwnerGone(str(ref))
            handover = replicas_handover(manifest, before)
            if handover is not None:
                await self.kube.apply(handover, field_manager=REPLICAS_HANDOVER_MANAGER)
            after = await self.kube.apply(manifest)
            applied.append(after)
            if before is None:
                created.append(str(ref))
            elif _changed(before, after):
                updated.append(str(ref))
        rendered = {(m["kind"], m["metadata"]["name"]) for m in manifests} | {("ConfigMap", cluster.ring_config_map)}
        deleted: list[str] = []
        for (kind, name), obj in sorted(existing.items()):
            if (kind, name) not in rendered and cluster.owns(obj):
                ref = Ref(obj["apiVersion"], kind, cluster.namespace, name)
                await self.kube.delete(ref, uid=obj["metadata"]["uid"])
                deleted.append(str(ref))
        for reason, names in (("Created", created), ("Updated", updated), ("Deleted", deleted)):
            if names:
                log.info("%s/%s: %s %s", cluster.namespace, cluster.name, reason.lower(), ", ".join(names))
                await self._event(imcluster, "Normal", reason, f"{reason.lower()} {', '.join(names)}")
        return applied, not_served

    async def _publish_ring(
        self, cluster: Cluster, imcluster: Mapping[str, Any]
    ) -> tuple[ring.PublishedRing | None, tuple[str, ...]]:
        slices = await self.kube.list_objects(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            cluster.namespace,
            selector=f"kubernetes.io/service-name={cluster.child('delivery')}",
        )
        members = ring.ready_members(slices)
        for _attempt in range(RING_WRITE_ATTEMPTS):
            try:
                return await self._write_ring(cluster, imcluster, members), members
            except Conflict as exc:
                # Another writer (an operator that still believes it leads, say) changed it since the read.
                log.warning("%s/%s: ring write conflict, reading it again: %s", cluster.namespace, cluster.name, exc)
        raise Conflict(409, "Conflict", f"ConfigMap/{cluster.ring_config_map} kept changing under every write")

    async def _write_ring(
        self, cluster: Cluster, imcluster: Mapping[str, Any], members: tuple[str, ...]
    ) -> ring.PublishedRing | None:
        """Publish the ring if it changed, conditional on the ConfigMap being as read (its resourceVersion, or
        absent): Conflict otherwise, so two operators never overwrite each other's ring."""
        ref = Ref("v1", "ConfigMap", cluster.namespace, cluster.ring_config_map)
        current = await self.kube.get(ref)
        if current is not None and not cluster.owns(current):
            raise NameTaken(f"{ref} already exists and does not belong to this IMCluster; rename or delete it")
        previous = ring.PublishedRing.from_config_map(current)
        status_ring = (imcluster.get("status") or {}).get("ring") or {}
        spec = imcluster.get("spec") or {}
        vnodes = (spec.get("config") or {}).get("ring", {}).get("vnodes") or DEFAULT_VNODES
        replicas = int((spec.get("delivery") or {}).get("replicas", 2))
        wanted = ring.next_ring(
            previous,
            ring.members_to_publish(previous, members, pod_prefix=cluster.child("delivery"), replicas=replicas),
            vnodes=int(vnodes),
            template=ring.url_template(cluster),
            floor_version=int(status_ring.get("version") or 0),
        )
        if wanted is None:
            return previous
        manifest = ring.config_map(cluster, wanted)
        if current is None:
            await self.kube.create(manifest)  # Conflict (AlreadyExists) when another writer made it first
        else:
            manifest["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            await self.kube.apply(manifest)
        joined = ", ".join(wanted.members) or "no members yet"
        log.info("%s/%s: ring version %d: %s", cluster.namespace, cluster.name, wanted.version, joined)
        await self._event(imcluster, "Normal", "RingPublished", f"ring version {wanted.version}: {joined}")
        return wanted


def claims_going_with(applied: Iterable[Mapping[str, Any]]) -> set[str]:
    """The claims of the applied StatefulSets' volumeClaimTemplates that go when their StatefulSet does."""
    claims = set()
    for obj in applied:
        spec = obj.get("spec") or {}
        if obj.get("kind") != "StatefulSet" or not spec.get("volumeClaimTemplates"):
            continue
        if (spec.get("persistentVolumeClaimRetentionPolicy") or {}).get("whenDeleted", "Retain") != "Delete":
            continue
        for template in spec["volumeClaimTemplates"]:
            for ordinal in range(int(spec.get("replicas", 1))):
                claims.add(f"{template['metadata']['name']}-{obj['metadata']['name']}-{ordinal}")
    return claims


def not_served_message(manifest: Mapping[str, Any]) -> str:
    """Why a rendered child of an optional kind was not applied, and what makes it appear."""
    api_version, kind = manifest["apiVersion"], manifest["kind"]
    field, crds = OPTIONAL_KINDS[(api_version, kind)]
    return (
        f"{field}: the API server does not serve {api_version} {kind}, so {Ref.of(manifest)} is not applied; "
        f"install {crds} and the next pass applies it"
    )


def _pod_templates(manifests: Iterable[Mapping[str, Any]]) -> Iterable[dict[str, Any]]:
    for manifest in manifests:
        if manifest["kind"] in ("Deployment", "StatefulSet"):
            yield manifest["spec"]["template"]


def _secret_key_refs(template: Mapping[str, Any]) -> list[tuple[str, str]]:
    pod = template.get("spec") or {}
    refs = []
    for container in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                refs.append((str(ref["name"]), str(ref["key"])))
    return sorted(set(refs))


def secret_references(manifests: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Every (Secret, key) a rendered pod template reads."""
    return sorted({ref for template in _pod_templates(manifests) for ref in _secret_key_refs(template)})


def missing_secret_refs(spec: Mapping[str, Any], found: Mapping[str, Mapping[str, str] | None]) -> list[str]:
    """External backends' secret references that do not resolve yet (a pod would not start without them)."""
    wanted: list[tuple[str, str, str]] = []
    for backend in ("redis", "database"):
        ref = ((spec.get(backend) or {}).get("external") or {}).get("secretRef")
        if ref:
            wanted.append((f"spec.{backend}.external.secretRef", ref["name"], ref["key"]))
    store = (spec.get("objectStore") or {}).get("external") or {}
    for field in ("accessKeyRef", "secretKeyRef"):
        if store.get(field):
            wanted.append((f"spec.objectStore.external.{field}", store[field]["name"], store[field]["key"]))
    missing = []
    for where, name, key in wanted:
        data = found.get(name)
        if data is None:
            missing.append(f"Secret/{name} ({where})")
        elif key not in data:
            missing.append(f"key {key} in Secret/{name} ({where})")
    return missing


def roll_on_secret_change(manifests: Iterable[dict[str, Any]], found: Mapping[str, Mapping[str, str] | None]) -> None:
    """Annotate each pod template with a hash of the Secret values it reads: environment variables from Secrets are
    read only when a container starts, so a changed value must roll the pods like a changed ConfigMap does."""
    for template in _pod_templates(manifests):
        refs = _secret_key_refs(template)
        if not refs:
            continue
        values = [(name, key, (found.get(name) or {}).get(key)) for name, key in refs]
        digest = hashlib.sha256(json.dumps(values).encode()).hexdigest()[:16]
        template.setdefault("metadata", {}).setdefault("annotations", {})[SECRETS_HASH] = digest


def _running(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and bool(status.get("podIP"))


def pod_problem(pod: Mapping[str, Any]) -> str:
    """Why a pod is not ready, in a few words: a container's waiting reason (with, for one that keeps failing, its
    last exit and the last line of its termination message: the end of its log, render.TERMINATION_MESSAGE_POLICY),
    else an unschedulable or not-ready condition's message; empty when nothing is wrong."""
    name = (pod.get("metadata") or {}).get("name", "")
    status = pod.get("status") or {}
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in ("ContainerCreating", "PodInitializing"):
            ended = (container.get("lastState") or {}).get("terminated")
            if ended:
                said = [line.strip() for line in str(ended.get("message") or "").splitlines() if line.strip()]
                detail = f", last exit {ended.get('exitCode')} ({ended.get('reason')})"
                detail += f": {said[-1]}" if said else ""
            else:
                detail = f": {waiting['message']}" if waiting.get("message") else ""
            return f"pod {name}: {container.get('name')} {waiting['reason']}{detail}"[:300]
    for condition in status.get("conditions") or []:
        if condition.get("status") == "False" and condition.get("type") in ("PodScheduled", "Ready"):
            why = condition.get("message") or condition.get("reason") or f"not {condition['type']}"
            return f"pod {name}: {why}"[:300]
    return ""


def _changed(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Whether an apply changed the object. Workloads count spec changes only (their generation): controllers
    write their status all the time, between the listing and the apply too."""
    old, new = before["metadata"], after["metadata"]
    if "generation" in old and "generation" in new:
        return bool(old["generation"] != new["generation"])
    return bool(old.get("resourceVersion") != new.get("resourceVersion"))


def event_manifest(imcluster: Mapping[str, Any], kind: str, reason: str, message: str, *, now: str) -> dict[str, Any]:
    meta = imcluster.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "type": kind,
        "reason": reason,
        "message": message,
        "source": {"component": "courier-operator"},
        "reportingComponent": "courier-operator",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
