"""render(): every child of an IMCluster from the manifest alone, deterministic, owned, and refusing specs the
services would refuse."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from im_operator import credentials
from im_operator.model import CLUSTER_LABEL, InvalidSpec
from im_operator.render import CONFIG_FIELDS, render

from services.common.settings import Settings

REPO = Path(__file__).resolve().parents[3]
CRD = yaml.safe_load((REPO / "crds" / "imcluster.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
UID = "3f1d8f2e-5b7a-4c1e-9a57-0c1f4b2d9e61"


def sample(**spec: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((REPO / "crds" / "examples" / "imcluster.yaml").read_text())
    manifest["metadata"].update(namespace="team-a", uid=UID, generation=3)
    manifest["spec"].update(spec)
    return manifest


def by_name(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{c['kind']}/{c['metadata']['name']}": c for c in children}


def container(children: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = by_name(children)[f"{kind}/{name}"]["spec"]["template"]["spec"]["containers"][0]
    return found


def env(children: list[dict[str, Any]], kind: str, name: str) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(children, kind, name)["env"]}


def test_rendering_twice_gives_identical_json() -> None:
    first = render(sample(), default_image="courier:1")
    second = render(copy.deepcopy(sample()), default_image="courier:1")

    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_sample_renders_every_service_the_delivery_tier_and_the_managed_backends() -> None:
    names = sorted(by_name(render(sample(), default_image="courier:1")))

    workloads = ["gateway", "identity", "conversation", "message", "presence", "file"]
    assert names == sorted(
        ["ConfigMap/chat-config"]
        + [f"Deployment/chat-{w}" for w in workloads]
        + [f"Service/chat-{w}" for w in [*workloads, "delivery", "redis", "kafka", "database", "minio"]]
        + [f"StatefulSet/chat-{s}" for s in ("delivery", "redis", "kafka", "database", "minio")]
        # The components running more than one pod (the sample: gateway 2, message 2, delivery 2).
        + [f"PodDisruptionBudget/chat-{c}" for c in ("gateway", "message", "delivery")]
    )


def test_every_child_is_owned_by_the_imcluster_and_labelled_with_it() -> None:
    for child in render(sample(), default_image="courier:1"):
        meta = child["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["labels"][CLUSTER_LABEL] == "chat"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "im.courier.dev/v1alpha1",
                "kind": "IMCluster",
                "name": "chat",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_spec_image_wins_over_the_operator_default_and_one_of_them_is_required() -> None:
    children = render(sample(image="example.org/courier:2"), default_image="courier:1")
    assert container(children, "Deployment", "chat-gateway")["image"] == "example.org/courier:2"
    assert (
        container(render(sample(), default_image="courier:1"), "StatefulSet", "chat-delivery")["image"] == "courier:1"
    )

    with pytest.raises(InvalidSpec, match="spec.image is not set"):
        render(sample())


def test_services_run_their_own_command_with_settings_from_the_config_map_and_generated_secret() -> None:
    children = render(sample(), default_image="courier:1")

    message = container(children, "Deployment", "chat-message")
    assert message["command"] == ["courier", "run", "message"]
    assert message["envFrom"] == [{"configMapRef": {"name": "chat-config"}}]
    variables = env(children, "Deployment", "chat-message")
    assert variables["COURIER_JWT__KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "chat-secrets", "key": "jwt-keys"}
    assert variables["COURIER_DATABASE_URL"]["value"] == (
        "mysql+asyncmy://courier:$(DATABASE_PASSWORD)@chat-database.team-a.svc:3306/courier"
    )
    names = list(variables)
    assert names.index("DATABASE_PASSWORD") < names.index("COURIER_DATABASE_URL")  # $(VAR) needs it defined first
    pod = by_name(children)["Deployment/chat-message"]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["command"] == ["courier", "migrate"]


def test_credentials_go_only_to_the_services_that_use_them() -> None:
    children = render(sample(), default_image="courier:1")

    assert "COURIER_DATABASE_URL" not in env(children, "Deployment", "chat-gateway")
    assert "COURIER_S3__SECRET_KEY" not in env(children, "Deployment", "chat-message")
    assert env(children, "Deployment", "chat-file")["COURIER_S3__SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "chat-secrets",
        "key": credentials.OBJECT_STORE_SECRET_KEY,
    }
    assert "COURIER_REDIS__URL" in env(children, "Deployment", "chat-gateway")  # shared rate limits


def test_delivery_nodes_are_named_by_their_pod_and_ring_readers_mount_the_ring() -> None:
    children = render(sample(), default_image="courier:1")

    delivery = env(children, "StatefulSet", "chat-delivery")
    assert delivery["COURIER_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    for kind, name in (
        ("Deployment", "chat-gateway"),
        ("Deployment", "chat-message"),
        ("StatefulSet", "chat-delivery"),
    ):
        assert env(children, kind, name)["COURIER_RING__FILE"]["value"] == "/etc/courier/ring/ring.json"
        volumes = by_name(children)[f"{kind}/{name}"]["spec"]["template"]["spec"]["volumes"]
        assert {"name": "ring", "configMap": {"name": "chat-ring", "optional": True}} in volumes
    assert "COURIER_RING__FILE" not in env(children, "Deployment", "chat-identity")
    headless = by_name(children)["Service/chat-delivery"]["spec"]
    assert headless["clusterIP"] == "None"
    assert by_name(children)["StatefulSet/chat-delivery"]["spec"]["serviceName"] == "chat-delivery"


def test_external_backends_take_their_settings_from_the_referenced_secrets_and_run_no_statefulset() -> None:
    spec = {
        "redis": {"external": {"url": "rediss://redis.example:6380/0"}},
        "kafka": {"external": {"bootstrap": "k1.example:9092,k2.example:9092"}},
        "database": {"engine": "postgresql", "external": {"secretRef": {"name": "db", "key": "url"}}},
        "objectStore": {
            "bucket": "chat-files",
            "external": {
                "endpoint": "s3.example:443",
                "region": "eu-west-1",
                "accessKeyRef": {"name": "s3", "key": "access"},
                "secretKeyRef": {"name": "s3", "key": "secret"},
            },
        },
    }
    children = render(sample(**spec), default_image="courier:1")

    assert [c["metadata"]["name"] for c in children if c["kind"] == "StatefulSet"] == ["chat-delivery"]
    file_env = env(children, "Deployment", "chat-file")
    assert file_env["COURIER_DATABASE_URL"] == {
        "name": "COURIER_DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}},
    }
    assert file_env["COURIER_S3__ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3", "key": "access"}
    assert file_env["COURIER_REDIS__URL"] == {"name": "COURIER_REDIS__URL", "value": "rediss://redis.example:6380/0"}
    config = by_name(children)["ConfigMap/chat-config"]["data"]
    assert config["COURIER_KAFKA__BOOTSTRAP"] == "k1.example:9092,k2.example:9092"
    assert (config["COURIER_S3__ENDPOINT"], config["COURIER_S3__SECURE"], config["COURIER_S3__REGION"]) == (
        "s3.example:443",
        "true",
        "eu-west-1",
    )
    assert config["COURIER_S3__BUCKET"] == "chat-files"


def test_an_external_database_url_must_match_the_engine() -> None:
    spec = {"database": {"engine": "mysql", "external": {"url": "postgresql+asyncpg://u:p@db:5432/courier"}}}

    with pytest.raises(InvalidSpec, match=r"spec.database.external.url: engine mysql needs a mysql\+asyncmy://"):
        render(sample(**spec), default_image="courier:1")


def test_config_values_become_courier_settings_the_services_read() -> None:
    config = {"largeGroupThreshold": 200, "ackTimeoutSeconds": 12.5, "limits": {"global": {"rate": 100}}}
    data = by_name(render(sample(config=config), default_image="courier:1"))["ConfigMap/chat-config"]["data"]

    assert data["COURIER_LARGE_GROUP_THRESHOLD"] == "200"
    assert data["COURIER_ACK_TIMEOUT_S"] == "12.5"
    assert data["COURIER_LIMITS__GLOBAL__RATE"] == "100"
    assert data["COURIER_SERVICES__IDENTITY"] == "http://chat-identity.team-a.svc:8080"


def test_config_the_services_would_refuse_is_an_invalid_spec_naming_the_field() -> None:
    config = {"limits": {"user": {"rate": 50, "burst": 10}}}

    with pytest.raises(InvalidSpec) as invalid:
        render(sample(config=config), default_image="courier:1")

    assert str(invalid.value) == "spec.config.limits.user: burst must be greater than rate"


def test_a_config_change_rolls_the_pods_through_the_template_hash() -> None:
    def hash_of(manifest: dict[str, Any]) -> str:
        deployment = by_name(render(manifest, default_image="courier:1"))["Deployment/chat-gateway"]
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["im.courier.dev/config-hash"])

    assert hash_of(sample()) == hash_of(sample())
    assert hash_of(sample()) != hash_of(sample(config={"ackTimeoutSeconds": 5}))


def test_managed_storage_becomes_claim_templates_deleted_with_the_cluster_unless_retained() -> None:
    spec = {"redis": {"managed": {"storage": {"size": "2Gi", "storageClassName": "fast", "whenDeleted": "Retain"}}}}
    statefulset = by_name(render(sample(**spec), default_image="courier:1"))["StatefulSet/chat-redis"]["spec"]

    assert statefulset["volumeClaimTemplates"] == [
        {
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "2Gi"}},
                "storageClassName": "fast",
            },
        }
    ]
    assert statefulset["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}


def test_every_config_field_of_the_crd_is_rendered() -> None:
    config = SCHEMA["properties"]["spec"]["properties"]["config"]["properties"]

    def leaves(schema: dict[str, Any], prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        if "properties" not in schema:
            return [prefix]
        return [leaf for key, sub in schema["properties"].items() for leaf in leaves(sub, (*prefix, key))]

    in_crd = sorted(leaf for key, sub in config.items() for leaf in leaves(sub, (key,)))
    assert in_crd == sorted(crd_path for crd_path, _ in CONFIG_FIELDS)


def test_crd_config_defaults_are_the_services_own_defaults() -> None:
    config = SCHEMA["properties"]["spec"]["properties"]["config"]["properties"]
    defaults = Settings.model_fields

    assert config["largeGroupThreshold"]["default"] == defaults["large_group_threshold"].default
    assert config["ackTimeoutSeconds"]["default"] == defaults["ack_timeout_s"].default


def test_the_sample_manifest_satisfies_the_crd_schema() -> None:
    manifest = yaml.safe_load((REPO / "crds" / "examples" / "imcluster.yaml").read_text())

    jsonschema.Draft4Validator(SCHEMA).validate(manifest)


def test_tracing_is_off_unless_the_spec_names_a_collector() -> None:
    children = render(sample(), default_image="courier:1")

    for kind, name in (("Deployment", "chat-message"), ("StatefulSet", "chat-delivery")):
        assert not [n for n in env(children, kind, name) if n.startswith("OTEL_")]


def test_tracing_gives_every_process_the_standard_otel_variables() -> None:
    tracing = {"endpoint": "http://collector.monitoring:4318", "ratio": 0.25}
    children = render(sample(tracing=tracing), default_image="courier:1")

    for kind, name, service in (
        ("Deployment", "chat-gateway", "gateway"),
        ("Deployment", "chat-message", "message"),
        ("StatefulSet", "chat-delivery", "delivery"),
    ):
        variables = env(children, kind, name)
        values = {n: e.get("value") for n, e in variables.items()}
        assert values["OTEL_TRACES_EXPORTER"] == "otlp"
        assert values["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector.monitoring:4318"
        assert values["OTEL_SERVICE_NAME"] == f"courier-{service}"
        assert values["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert values["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
        assert "k8s.pod.name=$(POD_NAME)" in values["OTEL_RESOURCE_ATTRIBUTES"]
        # Kubernetes expands $(POD_NAME) only from a variable defined before it.
        names = [e["name"] for e in container(children, kind, name)["env"]]
        assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")


def test_a_sampler_without_a_ratio_gets_no_sampler_argument() -> None:
    children = render(
        sample(tracing={"endpoint": "http://collector:4318", "sampler": "always_on"}), default_image="courier:1"
    )

    variables = env(children, "Deployment", "chat-message")
    assert variables["OTEL_TRACES_SAMPLER"]["value"] == "always_on"
    assert "OTEL_TRACES_SAMPLER_ARG" not in variables


def test_the_crd_refuses_an_unknown_sampler_and_a_ratio_above_one() -> None:
    tracing = SCHEMA["properties"]["spec"]["properties"]["tracing"]

    assert tracing["required"] == ["endpoint"]
    assert "always_on" in tracing["properties"]["sampler"]["enum"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"endpoint": "http://c:4318", "sampler": "sometimes"}, tracing)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"endpoint": "http://c:4318", "ratio": 1.5}, tracing)


def test_operator_defaults_for_backend_images_replace_the_upstream_ones_and_the_spec_still_wins() -> None:
    defaults = {"redis": "courier-redis:7.0.15-abc", "mysql": "registry.example:5000/team/mariadb:10.11"}
    manifest = sample()
    manifest["spec"]["kafka"]["managed"]["image"] = "my-kafka:1"
    children = by_name(render(manifest, default_image="courier:1", backend_images=defaults))

    def image(name: str) -> str:
        return str(children[f"StatefulSet/{name}"]["spec"]["template"]["spec"]["containers"][0]["image"])

    assert image("chat-redis") == "courier-redis:7.0.15-abc"
    assert image("chat-database") == "registry.example:5000/team/mariadb:10.11"  # a registry port is not a tag
    assert image("chat-kafka") == "my-kafka:1"
    assert image("chat-minio").startswith("quay.io/minio/minio:")  # no default given: the upstream image
    manifest["spec"]["redis"]["managed"]["version"] = "7.2"
    redis = by_name(render(manifest, default_image="courier:1", backend_images=defaults))["StatefulSet/chat-redis"]
    assert redis["spec"]["template"]["spec"]["containers"][0]["image"] == "courier-redis:7.2"


def test_every_container_leaves_the_end_of_its_log_as_its_termination_message() -> None:
    """So a pod's status says why its container failed, and the IMCluster's status can quote it."""
    children = render(sample(), default_image="courier:1")
    pods = [c["spec"]["template"]["spec"] for c in children if c["kind"] in ("Deployment", "StatefulSet")]
    containers = [c for pod in pods for c in [*pod.get("initContainers", []), *pod["containers"]]]

    assert {c["name"] for c in containers} >= {"kafka", "database", "migrate", "message", "gateway", "delivery"}
    assert [c["name"] for c in containers if c.get("terminationMessagePolicy") != "FallbackToLogsOnError"] == []


def kafka_cluster_id(uid: str) -> str:
    manifest = sample()
    manifest["metadata"]["uid"] = uid
    kafka = container(render(manifest, default_image="courier:1"), "StatefulSet", "chat-kafka")
    return str(next(e["value"] for e in kafka["env"] if e["name"] == "CLUSTER_ID"))


def test_the_managed_kafka_cluster_id_never_reads_as_a_command_line_option() -> None:
    """Kafka's storage tool reads an id starting with '-' as an option and refuses to format: such a cluster's broker
    never started (1 uid in 64). Every other uid keeps the id it always had, or its Kafka's storage would refuse it."""
    for first in ("f8", "f9", "fa", "fb"):  # the bytes whose base64 starts with '-'
        uid = f"{first}1d8f2e-5b7a-4c1e-9a57-0c1f4b2d9e61"
        plain = base64.urlsafe_b64encode(uuid.UUID(uid).bytes).decode().rstrip("=")
        assert plain.startswith("-")
        changed = kafka_cluster_id(uid)
        assert not changed.startswith("-") and len(changed) == 22
        assert changed[1:] == plain[1:] and changed == kafka_cluster_id(uid), "deterministic, one letter apart"
    for uid in (UID, "0b1d8f2e-5b7a-4c1e-9a57-0c1f4b2d9e61", "fc1d8f2e-5b7a-4c1e-9a57-0c1f4b2d9e61"):
        assert kafka_cluster_id(uid) == base64.urlsafe_b64encode(uuid.UUID(uid).bytes).decode().rstrip("=")


def test_pods_get_time_to_drain_and_the_settings_that_make_them_drain() -> None:
    children = by_name(render(sample(), default_image="courier:1"))
    data = children["ConfigMap/chat-config"]["data"]
    assert (data["COURIER_SHUTDOWN__LAG_S"], data["COURIER_SHUTDOWN__DRAIN_S"]) == ("5", "20")
    grace = {
        name: children[name]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        for name in ("StatefulSet/chat-delivery", "Deployment/chat-gateway", "Deployment/chat-message")
    }
    assert grace == {"StatefulSet/chat-delivery": 45, "Deployment/chat-gateway": 45, "Deployment/chat-message": 25}
    # A draining delivery node's pod name must still resolve: pushes reach its sockets until they have moved.
    assert children["Service/chat-delivery"]["spec"]["publishNotReadyAddresses"] is True
    assert children["Service/chat-redis"]["spec"]["publishNotReadyAddresses"] is False

    tuned = by_name(render(sample(config={"shutdown": {"lagSeconds": 2, "drainSeconds": 60}}), default_image="c:1"))
    assert tuned["ConfigMap/chat-config"]["data"]["COURIER_SHUTDOWN__DRAIN_S"] == "60"
    assert tuned["StatefulSet/chat-delivery"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 82
