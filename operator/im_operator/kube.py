"""The thin layer between the reconcile and the Kubernetes API: get, list, server-side apply, create, delete
and status patches on plain dicts, over the official client run in worker threads so the event loop never blocks.

Errors come out as ``ApiError`` (with ``NotFound`` and ``Conflict`` for the two the reconcile branches on); a
client library exception type never reaches the reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import kubernetes  # type: ignore[import-untyped]
import urllib3

FIELD_MANAGER = "courier-operator"
IMCLUSTER_API = "im.courier.dev/v1alpha1"
IMCLUSTER_KIND = "IMCluster"

# (apiVersion, kind) -> plural: the only kinds the operator touches.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Secret"): "secrets",
    ("v1", "Service"): "services",
    ("apps/v1", "Deployment"): "deployments",
    ("apps/v1", "StatefulSet"): "statefulsets",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("networking.k8s.io/v1", "Ingress"): "ingresses",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
    ("discovery.k8s.io/v1", "EndpointSlice"): "endpointslices",
    ("v1", "Event"): "events",
    ("v1", "Pod"): "pods",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    (IMCLUSTER_API, IMCLUSTER_KIND): "imclusters",
}


class ApiError(Exception):
    """The API server refused a request (or could not be reached: status 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def invalid(self) -> bool:
        """The object itself was refused (422 Invalid, 400 BadRequest): retrying the same object cannot help."""
        return self.status in (400, 422)


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


@dataclass(frozen=True)
class Ref:
    """Where one object lives."""

    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> Ref:
        meta = manifest["metadata"]
        return cls(manifest["apiVersion"], manifest["kind"], meta.get("namespace", ""), meta["name"])

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    """The collection in one namespace, or across all namespaces when ``namespace`` is empty."""
    plural = PLURALS[(api_version, kind)]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"


def object_path(ref: Ref) -> str:
    return f"{collection_path(ref.api_version, ref.kind, ref.namespace)}/{ref.name}"


class Kube:
    """One API client for the whole operator (urllib3's pool is thread-safe)."""

    def __init__(self, api_client: Any, *, timeout_s: float = 30.0, executor: Executor | None = None) -> None:
        self._api = api_client
        self._timeout_s = timeout_s
        self._executor = executor

    def with_own_thread(self) -> Kube:
        """The same client on a thread of its own: calls that must not queue behind the reconcile's (the leader
        election's renewals) use it."""
        return Kube(self._api, timeout_s=self._timeout_s, executor=ThreadPoolExecutor(1, thread_name_prefix="lease"))

    @classmethod
    def from_environment(cls) -> Kube:
        """In a pod: the ServiceAccount; elsewhere: the current kubeconfig context (KUBECONFIG)."""
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=configuration)
        return cls(kubernetes.client.ApiClient(configuration))

    def close(self) -> None:
        self._api.close()

    async def get(self, ref: Ref) -> dict[str, Any] | None:
        try:
            return await self._call("GET", object_path(ref))
        except NotFound:
            return None

    async def list_objects(
        self, api_version: str, kind: str, namespace: str, *, selector: str = ""
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else []
        answer = await self._call("GET", collection_path(api_version, kind, namespace), query=query)
        items: list[dict[str, Any]] = answer.get("items") or []
        return items

    async def apply(self, manifest: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply as the operator's field manager, taking over fields others changed."""
        query = [("fieldManager", field_manager), ("force", "true")]
        return await self._call(
            "PATCH",
            object_path(Ref.of(manifest)),
            body=manifest,
            query=query,
            content_type="application/apply-patch+yaml",
        )

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create (metadata.generateName works too); Conflict when the name is taken."""
        namespace = str(manifest["metadata"].get("namespace") or "")
        path = collection_path(manifest["apiVersion"], manifest["kind"], namespace)
        return await self._call("POST", path, body=manifest, query=[("fieldManager", FIELD_MANAGER)])

    async def replace(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """PUT the whole object; with metadata.resourceVersion set, Conflict when it changed since that read."""
        return await self._call(
            "PUT", object_path(Ref.of(manifest)), body=manifest, query=[("fieldManager", FIELD_MANAGER)]
        )

    async def pod_proxy_get(self, namespace: str, pod: str, port: int, path: str, *, timeout_s: float = 3.0) -> str:
        """GET ``path`` from a pod's port through the API server's pod proxy (the operator needs no route to the pod
        network of its own); the body as text. A short timeout: an unreachable pod must not hold up a pass."""
        path = f"{object_path(Ref('v1', 'Pod', namespace, f'{pod}:{port}'))}/proxy/{path.lstrip('/')}"
        answer = await self._in_thread(self._call_sync, "GET", path, None, [], "text/plain", "str", timeout_s)
        return str(answer)

    async def merge_patch(self, ref: Ref, patch: Mapping[str, Any], *, subresource: str = "") -> dict[str, Any]:
        path = object_path(ref) + (f"/{subresource}" if subresource else "")
        return await self._call(
            "PATCH",
            path,
            body=patch,
            query=[("fieldManager", FIELD_MANAGER)],
            content_type="application/merge-patch+json",
        )

    async def delete(self, ref: Ref, *, uid: str) -> None:
        """Delete exactly the object seen (the uid precondition), letting the garbage collector take its children."""
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "preconditions": {"uid": uid},
            "propagationPolicy": "Background",
        }
        # Already gone, or replaced by another object of that name (not ours to delete): nothing to do.
        with contextlib.suppress(NotFound, Conflict):
            await self._call("DELETE", object_path(ref), body=body)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        answer = await self._in_thread(self._call_sync, method, path, body, query or [], content_type)
        result: dict[str, Any] = answer if isinstance(answer, dict) else {}
        return result

    async def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _call_sync(
        self,
        method: str,
        path: str,
        body: Any,
        query: list[tuple[str, str]],
        content_type: str,
        response_type: str = "object",
        timeout_s: float | None = None,
    ) -> Any:
        accept = "application/json" if response_type == "object" else "*/*"
        try:
            answer = self._api.call_api(
                path,
                method,
                query_params=query,
                header_params={"Accept": accept, "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                response_type=response_type,
                _return_http_data_only=True,
                _request_timeout=timeout_s or self._timeout_s,
            )
        except kubernetes.client.exceptions.ApiException as exc:
            raise _api_error(int(exc.status or 0), str(exc.reason or ""), exc.body) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, "Unreachable", str(exc)) from exc
        return answer


def _api_error(status: int, reason: str, body: Any) -> ApiError:
    message = str(body or reason)
    try:
        parsed = json.loads(body) if isinstance(body, str | bytes) else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        message = str(parsed.get("message") or message)
        reason = str(parsed.get("reason") or reason)
    if status == 404:
        return NotFound(status, reason, message)
    if status == 409:
        return Conflict(status, reason, message)
    return ApiError(status, reason, message)
