"""The Secret the operator generates for each IMCluster: JWT signing keys, the internal token, the URL-signing
secret and the managed backends' passwords. Made once and never rewritten: a reconcile only adds keys a newer
operator knows and the Secret lacks, so tokens and passwords survive every reconcile and operator upgrade."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from im_operator.model import BACKENDS, CLUSTER_LABEL, MANAGED_BY, Cluster

# Keys of the generated Secret (names of values, not values).
SECRET = "secret"  # noqa: S105
INTERNAL_TOKEN = "internal-token"  # noqa: S105
JWT_KEYS = "jwt-keys"
JWT_ACTIVE_KID = "jwt-active-kid"
REDIS_PASSWORD = "redis-password"  # noqa: S105
DATABASE_PASSWORD = "database-password"  # noqa: S105
DATABASE_ROOT_PASSWORD = "database-root-password"  # noqa: S105
OBJECT_STORE_ACCESS_KEY = "object-store-access-key"
OBJECT_STORE_SECRET_KEY = "object-store-secret-key"  # noqa: S105

FIRST_KID = "k1"


def generate(token: Callable[[int], str] = secrets.token_hex) -> dict[str, str]:
    """Fresh values for every key. Hex only: passwords are spliced into URLs (redis://:$(REDIS_PASSWORD)@...)."""
    return {
        SECRET: token(32),
        INTERNAL_TOKEN: token(32),
        JWT_KEYS: json.dumps({FIRST_KID: token(48)}),
        JWT_ACTIVE_KID: FIRST_KID,
        REDIS_PASSWORD: token(24),
        DATABASE_PASSWORD: token(24),
        DATABASE_ROOT_PASSWORD: token(24),
        OBJECT_STORE_ACCESS_KEY: f"courier{token(6)}",
        OBJECT_STORE_SECRET_KEY: token(24),
    }


def missing(existing: Mapping[str, Any] | None, fresh: Mapping[str, str]) -> dict[str, str]:
    """The keys of ``fresh`` the existing Secret lacks; every key it has keeps its value."""
    data = (existing or {}).get("data") or {}
    return {key: value for key, value in fresh.items() if key not in data}


# Managed backends whose data is tied to passwords in the generated Secret, by component: a database keeps the
# password it was initialised with, MinIO keeps its configuration under its root credentials. (Redis takes its
# password anew at every start.)
PASSWORD_COMPONENTS = ("database", "minio")


def retained(spec: Mapping[str, Any]) -> bool:
    """Whether some managed backend keeps its volumes when the IMCluster is deleted (whenDeleted: Retain): then
    the Secret with their passwords must outlive the IMCluster too, or the kept data could not be opened."""
    for backend in BACKENDS:
        managed = (spec.get(backend) or {}).get("managed")
        if managed is not None and ((managed.get("storage") or {}).get("whenDeleted") == "Retain"):
            return True
    return False


def generated(cluster: Cluster, secret: Mapping[str, Any]) -> bool:
    """Whether the Secret is the operator's own: owned by the IMCluster, or labelled as made by the operator for an
    IMCluster of this name (a retained Secret has no owner, and outlives the IMCluster that made it)."""
    labels = (secret.get("metadata") or {}).get("labels") or {}
    labelled = labels.get(CLUSTER_LABEL) == cluster.name and labels.get("app.kubernetes.io/managed-by") == MANAGED_BY
    return cluster.owns(secret) or labelled


def owner_references(cluster: Cluster, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The generated Secret's owners: the IMCluster, unless backend data is retained (then none)."""
    return [] if retained(spec) else [cluster.owner_reference()]


def claim_names(cluster: Cluster) -> list[str]:
    """The PersistentVolumeClaims (volumeClaimTemplate "data", ordinal 0) whose data needs the generated passwords."""
    return [f"data-{cluster.child(component)}-0" for component in PASSWORD_COMPONENTS]


def manifest(cluster: Cluster, values: Mapping[str, str], spec: Mapping[str, Any]) -> dict[str, Any]:
    """The generated Secret to create (stringData: the API server encodes it)."""
    metadata = cluster.metadata(cluster.secret, "secrets")
    metadata["ownerReferences"] = owner_references(cluster, spec)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": dict(sorted(values.items())),
    }
