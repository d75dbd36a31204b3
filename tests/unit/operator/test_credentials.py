"""The generated Secret: every key made once; a later pass adds only the keys it lacks."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable

from im_operator import credentials
from im_operator.model import Cluster


def counter_token() -> Callable[[int], str]:
    numbers = itertools.count(1)
    return lambda size: f"{next(numbers):0{size * 2}x}"


def test_generated_values_are_hex_and_the_jwt_keys_are_a_json_map() -> None:
    values = credentials.generate()

    assert json.loads(values[credentials.JWT_KEYS]).keys() == {credentials.FIRST_KID}
    assert values[credentials.JWT_ACTIVE_KID] == credentials.FIRST_KID
    int(values[credentials.DATABASE_PASSWORD], 16)  # spliced into URLs: no characters that need quoting
    assert len(set(credentials.generate().values()) & set(values.values())) == 1  # only the kid repeats


def test_existing_keys_are_never_regenerated() -> None:
    existing = {"data": {credentials.SECRET: base64.b64encode(b"kept").decode()}}
    fresh = credentials.generate(counter_token())

    added = credentials.missing(existing, fresh)

    assert credentials.SECRET not in added
    assert set(added) == set(fresh) - {credentials.SECRET}
    assert credentials.missing({"data": dict.fromkeys(fresh, "x")}, fresh) == {}


def test_manifest_is_an_owned_opaque_secret() -> None:
    cluster = Cluster(name="chat", namespace="team-a", uid="u-1", generation=1)

    secret = credentials.manifest(cluster, {"b": "2", "a": "1"}, {"database": {"managed": {}}})

    assert secret["metadata"]["name"] == "chat-secrets"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert (secret["type"], list(secret["stringData"])) == ("Opaque", ["a", "b"])


def test_retained_backend_data_keeps_the_secret_without_an_owner() -> None:
    cluster = Cluster(name="chat", namespace="team-a", uid="u-1", generation=1)
    retain = {
        "redis": {"external": {"url": "redis://r"}},
        "database": {"managed": {"storage": {"whenDeleted": "Retain"}}},
    }
    delete = {"database": {"managed": {"storage": {"whenDeleted": "Delete"}}}, "kafka": {"managed": {}}}

    kept = credentials.manifest(cluster, {"a": "1"}, retain)

    assert kept["metadata"]["ownerReferences"] == []
    assert credentials.owner_references(cluster, delete) == [cluster.owner_reference()]
    # A retained Secret has no owner but stays the operator's own by its labels, also for a new IMCluster (new uid).
    successor = Cluster(name="chat", namespace="team-a", uid="u-2", generation=1)
    assert credentials.generated(successor, kept)
    assert not credentials.generated(successor, {"metadata": {"name": "chat-secrets", "labels": {}}})
    assert credentials.claim_names(cluster) == ["data-chat-database-0", "data-chat-minio-0"]
