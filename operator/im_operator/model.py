"""What every part of the operator agrees on about an IMCluster: child names, labels, owner references, and the
error for a spec the API server accepted but Courier cannot run. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

API_VERSION = "im.courier.dev/v1alpha1"
KIND = "IMCluster"

CLUSTER_LABEL = "im.courier.dev/cluster"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY = "courier-operator"

# The stateless services behind the gateway, each a Deployment running `courier run <service>`.
SERVICES = ("identity", "conversation", "message", "presence", "file")
SQL_SERVICES = ("identity", "conversation", "message", "file")
# Processes that follow the ring: the gateway routes WebSockets by it, delivery nodes hand over users,
# and these push to the node that owns a user (services/run.py: Wiring.pusher()).
RING_READERS = ("gateway", "delivery", "conversation", "message", "presence")
BACKENDS = ("redis", "kafka", "database", "objectStore")

HTTP_PORT = 8080
RING_DIR = "/etc/courier/ring"
RING_FILE = "ring.json"


class InvalidSpec(ValueError):
    """The spec passed the CRD schema but cannot be run; the message names the field and says why."""


@dataclass(frozen=True)
class Cluster:
    """The identity of one IMCluster, read once from its manifest."""

    name: str
    namespace: str
    uid: str
    generation: int

    @classmethod
    def of(cls, imcluster: Mapping[str, Any]) -> Cluster:
        meta = imcluster.get("metadata") or {}
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
        )

    def child(self, component: str) -> str:
        return f"{self.name}-{component}"

    @property
    def config_map(self) -> str:
        return self.child("config")

    @property
    def ring_config_map(self) -> str:
        return self.child("ring")

    @property
    def secret(self) -> str:
        return self.child("secrets")

    def host(self, component: str) -> str:
        """The in-cluster DNS name of a component's Service."""
        return f"{self.child(component)}.{self.namespace}.svc"

    def labels(self, component: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": "courier",
            "app.kubernetes.io/instance": self.name,
            COMPONENT_LABEL: component,
            "app.kubernetes.io/part-of": "courier",
            "app.kubernetes.io/managed-by": MANAGED_BY,
            CLUSTER_LABEL: self.name,
        }

    def selector(self, component: str) -> dict[str, str]:
        """Pod selector labels: immutable once a Deployment or StatefulSet exists, so kept to these two."""
        return {CLUSTER_LABEL: self.name, COMPONENT_LABEL: component}

    def selector_string(self, component: str) -> str:
        return ",".join(f"{key}={value}" for key, value in self.selector(component).items())

    def owner_reference(self, *, controller: bool = True) -> dict[str, Any]:
        """The IMCluster as the controller of a child, or (``controller=False``) as one owner among others of an
        object another controller manages."""
        reference: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "name": self.name, "uid": self.uid}
        if controller:
            reference.update(controller=True, blockOwnerDeletion=True)
        return reference

    def metadata(self, name: str, component: str) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": self.namespace,
            "labels": self.labels(component),
            "ownerReferences": [self.owner_reference()],
        }

    def owns(self, obj: Mapping[str, Any]) -> bool:
        refs = (obj.get("metadata") or {}).get("ownerReferences") or []
        return any(ref.get("uid") == self.uid for ref in refs)
