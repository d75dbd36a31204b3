"""The kopf side: one registry holding the IMCluster handlers, the watches of the children, and the drift loop.
Built by ``build_registry`` in the composition root (nothing registers at import time)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from im_operator.config import OperatorConfig
from im_operator.kube import ApiError, NotFound
from im_operator.model import API_VERSION, CLUSTER_LABEL, KIND
from im_operator.reconcile import Reconciler

GROUP, VERSION, PLURAL = "im.courier.dev", "v1alpha1", "imclusters"
# The children whose changes start a pass: EndpointSlices carry the delivery Service's labels (the controller
# copies them), so ready delivery pods reach the ring within one watch event. Secrets are watched apart (SECRETS,
# below): the ones an IMCluster references are the user's and carry no label of ours.
SECRETS = ("", "v1", "secrets")
CHILD_RESOURCES = (
    ("apps", "v1", "deployments"),
    ("apps", "v1", "statefulsets"),
    ("", "v1", "services"),
    ("", "v1", "configmaps"),
    ("discovery.k8s.io", "v1", "endpointslices"),
)
CHILD_KEYS = frozenset((group, plural) for group, _, plural in CHILD_RESOURCES)

log = logging.getLogger("im_operator")


def kopf_settings(settings: kopf.OperatorSettings) -> None:
    """Where kopf keeps its state, and what it watches."""
    # kopf's bookkeeping in annotations of our own prefix; the status stays the operator's alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # Events come only from the reconcile, which posts them itself; kopf would otherwise turn every log line,
    # including each "not ready yet" retry, into an Event.
    settings.posting.level = logging.CRITICAL
    # No watching of CRDs and namespaces for ones appearing later: that would need cluster-wide read access to
    # both. The chart installs the CRD before the operator, and startup fails loudly when it is missing.
    settings.scanning.disabled = True
    # Watch only the children of IMClusters, filtered by the API server rather than in this process.
    settings.watching.label_selectors[lambda res: (res.group, res.plural) in CHILD_KEYS] = CLUSTER_LABEL


def build_registry(reconciler: Reconciler, config: OperatorConfig) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    async def reconcile(body: kopf.Body, name: str, namespace: str | None, retry: int, **_: Any) -> None:
        outcome = await reconciler.reconcile(body)
        if outcome.gone:
            return
        if outcome.problem is not None and outcome.problem.permanent:
            raise kopf.PermanentError(outcome.message)
        if not outcome.ready:
            # Exponential backoff: a cluster waiting on something slow (volumes, image pulls, a missing Secret)
            # is looked at less and less often; any change of its children still starts a pass at once.
            raise kopf.TemporaryError(outcome.message, delay=config.retry_delay(retry))
        log.info("%s/%s is ready", namespace, name)

    @kopf.on.event(GROUP, VERSION, PLURAL, id="spec-changed", registry=registry)
    async def spec_changed(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> None:
        """A spec change not reconciled yet starts a pass at once, even while kopf holds the update handler back
        for a retry delay (the backoff of a cluster that was not ready must not delay the fix of its spec)."""
        generation = body.get("metadata", {}).get("generation")
        if namespace and generation != body.get("status", {}).get("observedGeneration"):
            await reconciler.kick(namespace, name)

    async def child_changed(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
        owner = labels.get(CLUSTER_LABEL)
        if namespace and owner:
            await reconciler.kick(namespace, owner)

    for group, version, plural in CHILD_RESOURCES:
        watch = kopf.on.event(
            group=group,
            version=version,
            plural=plural,
            id=f"child-{plural}",
            labels={CLUSTER_LABEL: kopf.PRESENT},
            registry=registry,
        )
        watch(child_changed)

    @kopf.on.event(*SECRETS, id="secrets", registry=registry)
    async def secret_changed(namespace: str | None, name: str, **_: Any) -> None:
        """A Secret an IMCluster uses (its generated one, or one its spec references) was created, changed or
        deleted: reconcile those IMClusters now (a changed value rolls their pods), not at the next drift pass."""
        for owner in reconciler.users_of_secret(namespace or "", name):
            await reconciler.kick(namespace or "", owner)

    drift: dict[str, asyncio.Task[None]] = {}

    @kopf.on.startup(id="drift-loop", registry=registry)
    async def start_drift_loop(**_: Any) -> None:
        try:
            for namespace in config.namespace_list() or [""]:
                await reconciler.kube.list_objects(API_VERSION, KIND, namespace)
        except NotFound as exc:
            raise kopf.PermanentError(
                f"the IMCluster CRD ({PLURAL}.{GROUP}) is not installed: kubectl apply -f crds/imcluster.yaml"
            ) from exc
        except ApiError as exc:
            raise kopf.PermanentError(f"cannot list IMClusters: {exc}") from exc
        # A plain task rather than kopf.timer: timers need a finalizer on every IMCluster, and a finalizer
        # leaves IMClusters undeletable whenever the operator is not running (uninstalled first, say).
        drift["task"] = asyncio.create_task(_drift_loop(reconciler, config), name="drift")

    @kopf.on.cleanup(id="drift-loop-stop", registry=registry)
    async def stop_drift_loop(**_: Any) -> None:
        task = drift.pop("task", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return registry


async def _drift_loop(reconciler: Reconciler, config: OperatorConfig) -> None:
    while True:
        await asyncio.sleep(config.drift_interval_s)
        try:
            count = await reconciler.kick_all(config.namespace_list())
            log.info("drift pass over %d IMClusters", count)
        except Exception:  # the loop must outlive any one failure; the next round retries
            log.exception("drift pass failed")
