"""The Secret the operator generates for each IMCluster: JWT signing keys, the internal token, the URL-signing
secret and the managed backends' passwords. Made once and never rewritten: a reconcile only adds keys a newer
operator knows and the Secret lacks, so tokens and passwords survive every reconcile and operator upgrade."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from im_operator.model import Cluster

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


def manifest(cluster: Cluster, values: Mapping[str, str]) -> dict[str, Any]:
    """The generated Secret to create (stringData: the API server encodes it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": cluster.metadata(cluster.secret, "secrets"),
        "type": "Opaque",
        "stringData": dict(sorted(values.items())),
    }
