"""Every child of an IMCluster as a manifest, from the IMCluster alone: ``render(imcluster) -> list[manifest]``.

Pure and deterministic (same input, same output, no I/O, no randomness), so applying the result twice changes
nothing. The generated Secret and the ring ConfigMap depend on more than the spec and live in ``credentials``
and ``ring``; the pod templates here only refer to them by name.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from im_operator import credentials
from im_operator.kube import FIELD_MANAGER
from im_operator.model import (
    API_VERSION,
    BACKENDS,
    CLUSTER_LABEL,
    COMPONENT_LABEL,
    HTTP_PORT,
    KIND,
    RING_DIR,
    RING_FILE,
    RING_READERS,
    SERVICES,
    SQL_SERVICES,
    Cluster,
    InvalidSpec,
)
from services.common.settings import Settings

Manifest = dict[str, Any]

# Images of the managed backends: repository and the default tag (spec.<backend>.managed.version overrides the
# tag, managed.image the whole reference). Kafka's tag is the release the integration tests run against.
BACKEND_IMAGES = {
    "redis": ("redis", "7.4"),
    "kafka": ("apache/kafka", "4.4.0"),
    "objectStore": ("quay.io/minio/minio", "RELEASE.2025-09-07T16-13-09Z"),
    "mysql": ("mysql", "8.4"),
    "mariadb": ("mariadb", "11.4"),
    "postgresql": ("postgres", "17"),
}
# The uid each backend image runs its server as; the volume is made group-writable for it (fsGroup).
BACKEND_UIDS = {"redis": 999, "kafka": 1000, "objectStore": 1000, "mysql": 999, "mariadb": 999, "postgresql": 999}
COURIER_UID = 10001  # the non-root user of the Courier image (Dockerfile)

# spec.config path -> Settings path; the environment variable is COURIER_ + the Settings path joined by "__".
CONFIG_FIELDS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("largeGroupThreshold",), ("large_group_threshold",)),
    (("ackTimeoutSeconds",), ("ack_timeout_s",)),
    (("maxRedeliveries",), ("max_redeliveries",)),
    (("presenceTtlSeconds",), ("presence_ttl_s",)),
    (("maxTextLength",), ("max_text_length",)),
    (("recallWindowSeconds",), ("recall_window_s",)),
    (("editWindowSeconds",), ("edit_window_s",)),
    (("limits", "maxBodyBytes"), ("limits", "max_body_bytes")),
    *(
        (("limits", bucket, field), ("limits", bucket, field))
        for bucket in ("global", "ip", "user")
        for field in ("rate", "burst")
    ),
    (("jwt", "issuer"), ("jwt", "issuer")),
    (("jwt", "accessTtlSeconds"), ("jwt", "access_ttl_s")),
    (("jwt", "refreshTtlSeconds"), ("jwt", "refresh_ttl_s")),
    (("delivery", "sendQueueSize"), ("delivery", "send_queue_size")),
    (("delivery", "idleTimeoutSeconds"), ("delivery", "idle_timeout_s")),
    (("delivery", "syncPageLimit"), ("delivery", "sync_page_limit")),
    (("delivery", "retransmitTickSeconds"), ("delivery", "retransmit_tick_s")),
    (("file", "maxSizeBytes"), ("file", "max_size")),
    (("file", "partSizeBytes"), ("file", "part_size")),
    (("file", "urlTtlSeconds"), ("file", "url_ttl_s")),
    (("file", "downloadTtlSeconds"), ("file", "download_ttl_s")),
    (("kafka", "messagesPartitions"), ("kafka", "messages_partitions")),
    (("kafka", "dlqPartitions"), ("kafka", "dlq_partitions")),
    (("kafka", "replicationFactor"), ("kafka", "replication_factor")),
    (("ring", "vnodes"), ("ring", "vnodes")),
    (("ring", "reloadSeconds"), ("ring", "reload_s")),
    (("shutdown", "lagSeconds"), ("shutdown", "lag_s")),
    (("shutdown", "drainSeconds"), ("shutdown", "drain_s")),
)
# Between SIGTERM and exit (services.common.shutdown): serve on while the pod leaves its Services' endpoints, then
# spread the WebSockets' reconnects over the drain window. Pods get time for both and the final shutdown.
SHUTDOWN_LAG_S = 5
SHUTDOWN_DRAIN_S = 20
SHUTDOWN_MARGIN_S = 20
SOCKET_HOLDERS = ("gateway", "delivery")
DATABASE_DRIVERS = {"mysql": "mysql+asyncmy", "mariadb": "mysql+asyncmy", "postgresql": "postgresql+asyncpg"}
DATABASE_PORTS = {"mysql": 3306, "mariadb": 3306, "postgresql": 5432}
# Requests of pods whose spec gives no resources: every pod gets a scheduling guarantee (never BestEffort, the first
# evicted under node pressure) and the gateway's CPU autoscaling has a base to measure utilisation against. They are
# a floor, small enough that a whole IMCluster with its backends fits one 2-core node beside the control plane (kind);
# a production cluster gives each component its own `resources`.
COURIER_REQUESTS = {
    "gateway": {"cpu": "50m", "memory": "128Mi"},
    "delivery": {"cpu": "50m", "memory": "256Mi"},
}
SERVICE_REQUESTS = {"cpu": "25m", "memory": "128Mi"}
BACKEND_REQUESTS = {
    "redis": {"cpu": "50m", "memory": "128Mi"},
    "kafka": {"cpu": "100m", "memory": "1Gi"},
    "database": {"cpu": "100m", "memory": "512Mi"},
    "minio": {"cpu": "50m", "memory": "256Mi"},
}
# A container that fails without writing /dev/termination-log gets the end of its log as its termination message,
# which the pod's status keeps: the IMCluster's status quotes it (reconcile.pod_problem), so a component that
# crash-loops says why without anyone reading its logs.
TERMINATION_MESSAGE_POLICY = "FallbackToLogsOnError"
# Spread by node for the tiers holding client sockets, so losing one node drops only its share of them.
SPREAD_BY_DEFAULT = ("gateway", "delivery")
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"
# The adapter's name of the per-pod gauge services.common.metrics.WS_CONNECTIONS (operator/README.md shows the rule).
CONNECTIONS_METRIC = "courier_ws_connections"
# Delivery scale-downs move users between nodes (every departing member's share re-hashes): wait this long for the
# load to stay low and let one node go per period at most.
DELIVERY_SCALE_DOWN_WINDOW_S = 600
DELIVERY_SCALE_DOWN_PERIOD_S = 300
# The field manager that keeps a Deployment's replicas while they pass from the operator to an autoscaler.
REPLICAS_HANDOVER_MANAGER = "courier-replicas-handover"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
HTTP_ROUTE = (f"{GATEWAY_API_GROUP}/v1", "HTTPRoute")
# The kinds beyond workloads, Services and ConfigMaps that render() may produce (and the reconcile prunes).
RENDERED_POLICY_KINDS = (
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("networking.k8s.io/v1", "Ingress"),
    HTTP_ROUTE,
)
# Those of them from APIs a cluster serves only once their CRDs are installed (the platform's choice, not ours): the
# reconcile applies them only where served, and pruning skips a kind whose API is not there. Each with the spec field
# that asks for it and what to install.
OPTIONAL_KINDS = {HTTP_ROUTE: ("spec.gateway.httpRoute", "the Gateway API CRDs (standard channel, v1.0 or newer)")}


def render(
    imcluster: Mapping[str, Any], *, default_image: str = "", backend_images: Mapping[str, str] | None = None
) -> list[Manifest]:
    """The ConfigMap, Deployments, StatefulSets and Services of one IMCluster, in a fixed order.

    ``backend_images`` replaces BACKEND_IMAGES' defaults by key (an operator installed where those registries are
    out of reach points it at its own builds); a spec's managed.image and managed.version still win.

    Raises ``InvalidSpec`` for a spec the CRD schema let through but Courier cannot run.
    """
    cluster = Cluster.of(imcluster)
    spec: Mapping[str, Any] = imcluster.get("spec") or {}
    image = str(spec.get("image") or default_image)
    if not image:
        raise InvalidSpec(
            "spec.image is not set and the operator has no default image (COURIER_OPERATOR_DEFAULT_IMAGE)"
        )
    _check_external_urls(spec)
    config = config_map(cluster, spec)
    config_hash = hashlib.sha256(json.dumps(config["data"], sort_keys=True).encode()).hexdigest()[:16]
    pod = _CourierPods(cluster, spec, image, config_hash)
    children: list[Manifest] = [config]
    gateway = spec.get("gateway") or {}
    children.append(pod.deployment("gateway", "gateway", gateway, default_replicas=2))
    children.append(gateway_service(cluster, gateway.get("service") or {}))
    children.extend(_scaling(cluster, "gateway", gateway, default_replicas=2))
    port = int((gateway.get("service") or {}).get("port", 80))
    if gateway.get("ingress"):
        children.append(ingress(cluster, gateway["ingress"], port))
    if gateway.get("httpRoute"):
        children.append(http_route(cluster, gateway["httpRoute"], port))
    for service in SERVICES:
        settings = (spec.get("services") or {}).get(service) or {}
        children.append(pod.deployment(service, service, settings, default_replicas=1))
        children.append(_service(cluster, service, [_port("http", HTTP_PORT)]))
        children.extend(_scaling(cluster, service, settings, default_replicas=1))
    delivery = spec.get("delivery") or {}
    children.append(pod.delivery(delivery))
    children.append(_service(cluster, "delivery", [_port("http", HTTP_PORT)], headless=True, publish_not_ready=True))
    children.extend(_scaling(cluster, "delivery", delivery, default_replicas=2))
    for backend in ("redis", "kafka", "database", "objectStore"):
        managed = (spec.get(backend) or {}).get("managed")
        if managed is not None:
            children.extend(_managed_backend(cluster, spec, backend, managed, backend_images or {}))
    network = spec.get("networkPolicy") or {}
    if network.get("enabled"):
        children.extend(network_policies(cluster, spec, network))
    return children


# ---------------------------------------------------------------------------------------------------- settings


def settings_values(spec: Mapping[str, Any]) -> dict[str, Any]:
    """spec.config as the nested values of ``services.common.settings.Settings``."""
    config = spec.get("config") or {}
    nested: dict[str, Any] = {}
    for crd_path, settings_path in CONFIG_FIELDS:
        value = _dig(config, crd_path)
        if value is None:
            continue
        target = nested
        for key in settings_path[:-1]:
            target = target.setdefault(key, {})
        target[settings_path[-1]] = value
    return nested


class _SpecOnlySettings(Settings):
    """Settings built from given values only: the operator's own environment must not leak into the check."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def check_settings(spec: Mapping[str, Any]) -> None:
    """Refuse spec.config values the services themselves would refuse at start-up (their Settings decide)."""
    try:
        _SpecOnlySettings(**settings_values(spec))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = "spec.config." + ".".join(_crd_path(tuple(str(part) for part in error["loc"])))
            problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
        raise InvalidSpec("; ".join(problems)) from exc


def _crd_path(settings_loc: tuple[str, ...]) -> tuple[str, ...]:
    for crd_path, settings_path in sorted(CONFIG_FIELDS, key=lambda pair: -len(pair[1])):
        if settings_loc[: len(settings_path)] == settings_path:
            return crd_path
    for crd_path, settings_path in CONFIG_FIELDS:  # a whole group (a bucket's own rule): its spec.config prefix
        if settings_path[: len(settings_loc)] == settings_loc:
            return crd_path[: len(settings_loc)]
    return settings_loc


def _dig(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = tree
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def config_map(cluster: Cluster, spec: Mapping[str, Any]) -> Manifest:
    """The COURIER_* settings every Courier process shares; nothing secret (those come from Secrets)."""
    check_settings(spec)
    data: dict[str, str] = {
        "COURIER_MODE": "prod",
        "COURIER_HOST": "0.0.0.0",  # noqa: S104 - a pod serves on its own network namespace
        "COURIER_PORT": str(HTTP_PORT),
        "COURIER_SHUTDOWN__LAG_S": str(SHUTDOWN_LAG_S),
        "COURIER_SHUTDOWN__DRAIN_S": str(SHUTDOWN_DRAIN_S),
    }
    for service in SERVICES:
        data[f"COURIER_SERVICES__{service.upper()}"] = f"http://{cluster.host(service)}:{HTTP_PORT}"
    for crd_path, settings_path in CONFIG_FIELDS:
        value = _dig(spec.get("config") or {}, crd_path)
        if value is not None:
            data["COURIER_" + "__".join(part.upper() for part in settings_path)] = _env_value(value)
    kafka = spec.get("kafka") or {}
    if kafka.get("managed") is not None:
        data["COURIER_KAFKA__BOOTSTRAP"] = f"{cluster.child('kafka')}-0.{cluster.host('kafka')}:9092"
    else:
        data["COURIER_KAFKA__BOOTSTRAP"] = str((kafka.get("external") or {}).get("bootstrap", ""))
    store = spec.get("objectStore") or {}
    data["COURIER_S3__BUCKET"] = str(store.get("bucket") or "courier-files")
    if store.get("managed") is not None:
        data["COURIER_S3__ENDPOINT"] = f"{cluster.host('minio')}:9000"
        data["COURIER_S3__SECURE"] = "false"
    else:
        external = store.get("external") or {}
        data["COURIER_S3__ENDPOINT"] = str(external.get("endpoint", ""))
        data["COURIER_S3__SECURE"] = _env_value(bool(external.get("secure", True)))
        if external.get("region"):
            data["COURIER_S3__REGION"] = str(external["region"])
    if store.get("publicEndpoint"):
        data["COURIER_S3__PUBLIC_ENDPOINT"] = str(store["publicEndpoint"])
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": cluster.metadata(cluster.config_map, "config"),
        "data": dict(sorted(data.items())),
    }


def _check_external_urls(spec: Mapping[str, Any]) -> None:
    database = spec.get("database") or {}
    url = str((database.get("external") or {}).get("url") or "")
    engine = str(database.get("engine") or "mysql")
    driver = DATABASE_DRIVERS[engine]
    if url and not url.startswith(f"{driver}://"):
        scheme = url.split("://", 1)[0] if "://" in url else "no scheme"
        raise InvalidSpec(f"spec.database.external.url: engine {engine} needs a {driver}:// URL, not {scheme}")
    redis_url = str(((spec.get("redis") or {}).get("external") or {}).get("url") or "")
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise InvalidSpec("spec.redis.external.url: must be a redis://, rediss:// or unix:// URL")


# ---------------------------------------------------------------------------------------------------- Courier pods


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


class _CourierPods:
    """Pod templates of the Courier processes of one IMCluster (all from the one image)."""

    def __init__(self, cluster: Cluster, spec: Mapping[str, Any], image: str, config_hash: str) -> None:
        self.cluster = cluster
        self.spec = spec
        self.image = image
        self.config_hash = config_hash

    def env(self, service: str) -> list[dict[str, Any]]:
        """Secret-bearing settings, per process: each gets only the credentials its service uses."""
        c, spec = self.cluster, self.spec
        env: list[dict[str, Any]] = [
            _secret_env("COURIER_SECRET", c.secret, credentials.SECRET),
            _secret_env("COURIER_INTERNAL_TOKEN", c.secret, credentials.INTERNAL_TOKEN),
            _secret_env("COURIER_JWT__KEYS", c.secret, credentials.JWT_KEYS),
            _secret_env("COURIER_JWT__ACTIVE_KID", c.secret, credentials.JWT_ACTIVE_KID),
        ]
        redis = spec.get("redis") or {}
        if redis.get("managed") is not None:
            # Kubernetes expands $(VAR) from variables defined earlier in the list: the password stays in its Secret.
            env.append(_secret_env("REDIS_PASSWORD", c.secret, credentials.REDIS_PASSWORD))
            env.append({"name": "COURIER_REDIS__URL", "value": f"redis://:$(REDIS_PASSWORD)@{c.host('redis')}:6379/0"})
        else:
            env.append(_external_url_env("COURIER_REDIS__URL", redis.get("external") or {}))
        if service in SQL_SERVICES:
            database = spec.get("database") or {}
            if database.get("managed") is not None:
                engine = str(database.get("engine") or "mysql")
                host = f"{c.host('database')}:{DATABASE_PORTS[engine]}"
                url = f"{DATABASE_DRIVERS[engine]}://courier:$(DATABASE_PASSWORD)@{host}/courier"
                env.append(_secret_env("DATABASE_PASSWORD", c.secret, credentials.DATABASE_PASSWORD))
                env.append({"name": "COURIER_DATABASE_URL", "value": url})
            else:
                env.append(_external_url_env("COURIER_DATABASE_URL", database.get("external") or {}))
        if service == "file":
            store = spec.get("objectStore") or {}
            if store.get("managed") is not None:
                env.append(_secret_env("COURIER_S3__ACCESS_KEY", c.secret, credentials.OBJECT_STORE_ACCESS_KEY))
                env.append(_secret_env("COURIER_S3__SECRET_KEY", c.secret, credentials.OBJECT_STORE_SECRET_KEY))
            else:
                external = store.get("external") or {}
                for name, ref in (
                    ("COURIER_S3__ACCESS_KEY", "accessKeyRef"),
                    ("COURIER_S3__SECRET_KEY", "secretKeyRef"),
                ):
                    env.append(_secret_env(name, external[ref]["name"], external[ref]["key"]))
        if service in RING_READERS:
            env.append({"name": "COURIER_RING__FILE", "value": f"{RING_DIR}/{RING_FILE}"})
        if service == "delivery":
            # The pod name is the node's stable member name on the ring.
            env.append({"name": "COURIER_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
        return env + self.tracing_env(service)

    def tracing_env(self, service: str) -> list[dict[str, Any]]:
        """The standard OTEL_* variables the processes read; none when spec.tracing is absent (tracing off)."""
        tracing = self.spec.get("tracing")
        if not tracing:
            return []
        sampler = str(tracing.get("sampler") or "parentbased_traceidratio")
        env: list[dict[str, Any]] = [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "OTEL_TRACES_EXPORTER", "value": "otlp"},
            {"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": "http/protobuf"},
            {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": str(tracing["endpoint"])},
            {"name": "OTEL_SERVICE_NAME", "value": f"courier-{service}"},
            {
                "name": "OTEL_RESOURCE_ATTRIBUTES",
                "value": f"k8s.namespace.name={self.cluster.namespace},k8s.pod.name=$(POD_NAME),"
                f"service.namespace={self.cluster.name}",
            },
            {"name": "OTEL_TRACES_SAMPLER", "value": sampler},
        ]
        if sampler.endswith("traceidratio"):
            env.append({"name": "OTEL_TRACES_SAMPLER_ARG", "value": _env_value(tracing.get("ratio", 0.1))})
        return env

    def container(self, service: str, resources: Mapping[str, Any]) -> dict[str, Any]:
        mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108 - the pod's own scratch volume
        if service in RING_READERS:
            mounts.append({"name": "ring", "mountPath": RING_DIR, "readOnly": True})
        container: dict[str, Any] = {
            "name": service,
            "image": self.image,
            "imagePullPolicy": str(self.spec.get("imagePullPolicy") or "IfNotPresent"),
            "command": ["courier", "run", service],
            "terminationMessagePolicy": TERMINATION_MESSAGE_POLICY,
            "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
            "envFrom": [{"configMapRef": {"name": self.cluster.config_map}}],
            "env": self.env(service),
            "readinessProbe": {
                "httpGet": {"path": "/readyz", "port": "http"},
                "periodSeconds": 5,
                "failureThreshold": 3,
            },
            # Liveness and readiness probes wait for this one (up to 2 minutes) instead of a fixed initial delay.
            "startupProbe": {
                "httpGet": {"path": "/healthz", "port": "http"},
                "periodSeconds": 2,
                "failureThreshold": 60,
            },
            "livenessProbe": {
                "httpGet": {"path": "/healthz", "port": "http"},
                "periodSeconds": 10,
                "failureThreshold": 6,
            },
            "securityContext": _container_security(),
            "volumeMounts": mounts,
            "resources": dict(resources),
        }
        return container

    def pod_template(self, component: str, service: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        c = self.cluster
        resources = with_default_requests(settings.get("resources"), COURIER_REQUESTS.get(component, SERVICE_REQUESTS))
        volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
        if service in RING_READERS:
            # Optional: a pod may start before the first ring is published (the gateway stays unready until then).
            volumes.append({"name": "ring", "configMap": {"name": c.ring_config_map, "optional": True}})
        pod: dict[str, Any] = {
            "automountServiceAccountToken": False,  # Courier never talks to the Kubernetes API
            "enableServiceLinks": False,
            "securityContext": _pod_security(COURIER_UID),
            "terminationGracePeriodSeconds": self.grace_period(component),
            "containers": [self.container(service, resources)],
            "volumes": volumes,
        }
        if service in SQL_SERVICES:
            # Every SQL service migrates before it serves; migrations take a database lock, so replicas starting
            # together wait for one another and the later ones find the schema at head.
            migrate = self.container(service, resources)
            migrate.update(name="migrate", command=["courier", "migrate"])
            for key in ("ports", "readinessProbe", "startupProbe", "livenessProbe"):
                del migrate[key]
            pod["initContainers"] = [migrate]
        pulls = self.spec.get("imagePullSecrets") or []
        if pulls:
            pod["imagePullSecrets"] = [{"name": str(p["name"])} for p in pulls]
        metadata = {
            "labels": c.labels(component),
            # A changed ConfigMap rolls the pods: envFrom is read only when a container starts.
            "annotations": {"im.courier.dev/config-hash": self.config_hash},
        }
        spread = [spread_by_hostname(c, component)] if component in SPREAD_BY_DEFAULT else []
        return customise_pod({"metadata": metadata, "spec": pod}, settings.get("pod") or {}, spread)

    def grace_period(self, component: str) -> int:
        """Long enough for the lag, the drain of the sockets this component holds, and the final shutdown."""
        shutdown = (self.spec.get("config") or {}).get("shutdown") or {}
        lag = float(shutdown.get("lagSeconds", SHUTDOWN_LAG_S))
        drain = float(shutdown.get("drainSeconds", SHUTDOWN_DRAIN_S)) if component in SOCKET_HOLDERS else 0.0
        return int(lag + drain + SHUTDOWN_MARGIN_S + 0.999)

    def deployment(
        self, component: str, service: str, settings: Mapping[str, Any], *, default_replicas: int
    ) -> Manifest:
        """A Deployment; without replicas under an autoscaler, which is then their one writer."""
        c = self.cluster
        spec: dict[str, Any] = {
            "replicas": int(settings.get("replicas", default_replicas)),
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": c.selector(component)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": self.pod_template(component, service, settings),
        }
        if settings.get("autoscaling"):
            del spec["replicas"]
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": c.metadata(c.child(component), component),
            "spec": spec,
        }

    def delivery(self, settings: Mapping[str, Any]) -> Manifest:
        """The delivery StatefulSet: its replicas always come from spec.delivery.replicas, which an autoscaler
        changes through the IMCluster's scale subresource, so the operator stays their one writer here."""
        c = self.cluster
        return {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": c.metadata(c.child("delivery"), "delivery"),
            "spec": {
                "replicas": int(settings.get("replicas", 2)),
                "serviceName": c.child("delivery"),
                # Pods start and stop all at once when scaling; a rolling update still replaces one at a time.
                "podManagementPolicy": "Parallel",
                "revisionHistoryLimit": 5,
                "updateStrategy": {"type": "RollingUpdate"},
                "selector": {"matchLabels": c.selector("delivery")},
                "template": self.pod_template("delivery", "delivery", settings),
            },
        }


def _external_url_env(name: str, external: Mapping[str, Any]) -> dict[str, Any]:
    ref = external.get("secretRef")
    if ref:
        return _secret_env(name, str(ref["name"]), str(ref["key"]))
    return {"name": name, "value": str(external.get("url", ""))}


def _pod_security(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


# ---------------------------------------------------------------------------------------------------- Services


def _port(name: str, port: int, target: str | int | None = None) -> dict[str, Any]:
    return {"name": name, "port": port, "targetPort": target if target is not None else name, "protocol": "TCP"}


def _service(
    cluster: Cluster,
    component: str,
    ports: list[dict[str, Any]],
    *,
    headless: bool = False,
    publish_not_ready: bool = False,
) -> Manifest:
    spec: dict[str, Any] = {"type": "ClusterIP", "selector": cluster.selector(component), "ports": ports}
    if headless:
        # DNS names per pod (<pod>.<service>) and EndpointSlices listing every pod with its readiness. Delivery
        # publishes not-ready pods too: a draining node's name must resolve while pushes still reach its sockets.
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = publish_not_ready
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": cluster.metadata(cluster.child(component), component),
        "spec": spec,
    }


def gateway_service(cluster: Cluster, service: Mapping[str, Any]) -> Manifest:
    port = _port("http", int(service.get("port", 80)), "http")
    if service.get("nodePort"):
        port["nodePort"] = int(service["nodePort"])
    manifest = _service(cluster, "gateway", [port])
    manifest["spec"]["type"] = str(service.get("type") or "ClusterIP")
    if service.get("annotations"):
        manifest["metadata"]["annotations"] = dict(sorted(service["annotations"].items()))
    return manifest


# ---------------------------------------------------------------------------------------------------- backends


def backend_image(backend: str, managed: Mapping[str, Any], defaults: Mapping[str, str] | None = None) -> str:
    """managed.image; else the default (the operator's own for this key, or BACKEND_IMAGES') with managed.version as
    its tag when set."""
    if managed.get("image"):
        return str(managed["image"])
    configured = (defaults or {}).get(backend)
    if configured:
        repository, tag = split_image(configured)
    else:
        repository, tag = BACKEND_IMAGES[backend]
    return f"{repository}:{managed.get('version') or tag}"


def split_image(ref: str) -> tuple[str, str]:
    """repository and tag of an image reference; a registry's port is not a tag, a missing tag is `latest`."""
    repository, colon, tag = ref.rpartition(":")
    if not colon or "/" in tag:
        return ref, "latest"
    return repository, tag


def kafka_cluster_id(uid: str) -> str:
    """KRaft's cluster id (a base64url UUID of 22 characters), fixed for the life of the IMCluster.

    Never one that starts with '-', as Kafka's own `random-uuid` never gives: Kafka's storage tool, and every image
    that runs it with `--cluster-id <id>`, reads such an id as an option and refuses to format, so the broker could
    never start. One uid in 64 encodes that way; its id is the same with the first byte's top bit cleared ('e'
    instead of '-'). Every other id is the plain encoding, so no running cluster's id changes."""
    try:
        raw = uuid.UUID(uid).bytes
    except ValueError:
        raw = hashlib.sha256(uid.encode()).digest()[:16]
    if raw[0] >> 2 == 62:  # base64's 62nd letter in the URL-safe alphabet: '-'
        raw = bytes([raw[0] & 0x7F]) + raw[1:]
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _managed_backend(
    cluster: Cluster,
    spec: Mapping[str, Any],
    backend: str,
    managed: Mapping[str, Any],
    default_images: Mapping[str, str],
) -> list[Manifest]:
    c = cluster
    secret = c.secret
    if backend == "redis":
        component, port, mount = "redis", 6379, "/data"
        container: dict[str, Any] = {
            "command": ["redis-server"],
            "args": ["--requirepass", "$(REDIS_PASSWORD)", "--appendonly", "yes", "--dir", "/data"],
            "env": [_secret_env("REDIS_PASSWORD", secret, credentials.REDIS_PASSWORD)],
        }
        uid_key = "redis"
    elif backend == "kafka":
        component, port, mount = "kafka", 9092, "/var/lib/kafka/data"
        advertised = f"PLAINTEXT://{c.child('kafka')}-0.{c.host('kafka')}:9092"
        settings = {
            "KAFKA_NODE_ID": "1",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
            "KAFKA_ADVERTISED_LISTENERS": advertised,
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
            # A subdirectory: the volume's root may hold lost+found, which Kafka refuses as a log directory.
            "KAFKA_LOG_DIRS": "/var/lib/kafka/data/logs",
            "CLUSTER_ID": kafka_cluster_id(c.uid),
        }
        container = {"env": [{"name": k, "value": v} for k, v in settings.items()]}
        uid_key = "kafka"
    elif backend == "objectStore":
        component, port, mount = "minio", 9000, "/data"
        container = {
            "command": ["minio"],
            "args": ["server", "/data", "--address", ":9000", "--console-address", ":9001"],
            "env": [
                _secret_env("MINIO_ROOT_USER", secret, credentials.OBJECT_STORE_ACCESS_KEY),
                _secret_env("MINIO_ROOT_PASSWORD", secret, credentials.OBJECT_STORE_SECRET_KEY),
            ],
        }
        uid_key = "objectStore"
    else:
        engine = str((spec.get("database") or {}).get("engine") or "mysql")
        component, port = "database", DATABASE_PORTS[engine]
        password = _secret_env("", secret, credentials.DATABASE_PASSWORD)
        root = _secret_env("", secret, credentials.DATABASE_ROOT_PASSWORD)
        if engine == "postgresql":
            mount = "/var/lib/postgresql/data"
            env = [
                {"name": "POSTGRES_DB", "value": "courier"},
                {"name": "POSTGRES_USER", "value": "courier"},
                {**password, "name": "POSTGRES_PASSWORD"},
                {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
            ]
        else:
            prefix = "MARIADB" if engine == "mariadb" else "MYSQL"
            mount = "/var/lib/mysql"
            env = [
                {"name": f"{prefix}_DATABASE", "value": "courier"},
                {"name": f"{prefix}_USER", "value": "courier"},
                {**password, "name": f"{prefix}_PASSWORD"},
                {**root, "name": f"{prefix}_ROOT_PASSWORD"},
            ]
        container = {"env": env}
        uid_key = engine
    image_key = uid_key if backend == "database" else backend
    storage = managed.get("storage") or {}
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(storage.get("size") or "1Gi")}},
    }
    if storage.get("storageClassName"):
        claim_spec["storageClassName"] = str(storage["storageClassName"])
    container = {
        "name": component,
        "image": backend_image(image_key, managed, default_images),
        "imagePullPolicy": "IfNotPresent",
        **container,
        "terminationMessagePolicy": TERMINATION_MESSAGE_POLICY,
        "ports": [{"name": component, "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": component}, "periodSeconds": 5, "failureThreshold": 3},
        # A first start initialises the data directory (MariaDB, PostgreSQL: a minute or more): up to 5 minutes.
        "startupProbe": {"tcpSocket": {"port": component}, "periodSeconds": 5, "failureThreshold": 60},
        "livenessProbe": {"tcpSocket": {"port": component}, "periodSeconds": 10, "failureThreshold": 3},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "data", "mountPath": mount}],
        "resources": with_default_requests(managed.get("resources"), BACKEND_REQUESTS[component]),
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": c.metadata(c.child(component), component),
        "spec": {
            "replicas": 1,
            "serviceName": c.child(component),
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": c.selector(component)},
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": str(storage.get("whenDeleted") or "Delete"),
                "whenScaled": "Retain",
            },
            "template": customise_pod(
                {
                    "metadata": {"labels": c.labels(component)},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "securityContext": _pod_security(BACKEND_UIDS[uid_key]),
                        "terminationGracePeriodSeconds": 60,
                        "containers": [container],
                    },
                },
                managed.get("pod") or {},
                [],
            ),
            # Only the claim's name and spec: volumeClaimTemplates cannot change once the StatefulSet exists.
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": claim_spec}],
        },
    }
    service = _service(c, component, [_port(component, port)], headless=True)
    return [statefulset, service]


# ---------------------------------------------------------------------------------------------------- placement


def with_default_requests(resources: Mapping[str, Any] | None, defaults: Mapping[str, str]) -> dict[str, Any]:
    """The spec's resources, with ``defaults`` as requests when it gives neither requests nor limits (limits alone
    become the requests too, by the API server's own defaulting): no pod is ever BestEffort."""
    given = dict(resources or {})
    if not given.get("requests") and not given.get("limits"):
        given["requests"] = dict(defaults)
    return given


def spread_by_hostname(cluster: Cluster, component: str) -> dict[str, Any]:
    """Pods of a component on as many nodes as possible; a soft rule, so a small cluster still schedules them."""
    return {
        "maxSkew": 1,
        "topologyKey": HOSTNAME_TOPOLOGY,
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": cluster.selector(component)},
    }


def customise_pod(
    template: Mapping[str, Any], overrides: Mapping[str, Any], default_spread: list[dict[str, Any]]
) -> dict[str, Any]:
    """A pod template with a component's spec.<component>.pod applied. The operator's own labels and annotations
    win over the user's (selectors and the config hash depend on them); topologySpreadConstraints replace the
    default spread, and an empty list turns it off."""
    metadata = template["metadata"]
    pod = dict(template["spec"])
    for key in ("nodeSelector", "affinity", "tolerations", "priorityClassName"):
        if overrides.get(key):
            pod[key] = copy.deepcopy(overrides[key])
    spread = overrides.get("topologySpreadConstraints", default_spread)
    if spread:
        pod["topologySpreadConstraints"] = copy.deepcopy(list(spread))
    result: dict[str, Any] = {"metadata": {"labels": {**(overrides.get("labels") or {}), **metadata["labels"]}}}
    annotations = {**(overrides.get("annotations") or {}), **(metadata.get("annotations") or {})}
    if annotations:
        result["metadata"]["annotations"] = annotations
    result["spec"] = pod
    return result


def _scaling(cluster: Cluster, component: str, settings: Mapping[str, Any], *, default_replicas: int) -> list[Manifest]:
    """The HorizontalPodAutoscaler of a component whose spec asks for one, and its PodDisruptionBudget when more
    than one pod runs (a budget over a single pod would either block node drains or protect nothing)."""
    autoscaling = settings.get("autoscaling")
    children: list[Manifest] = []
    if autoscaling:
        children.append(autoscaler(cluster, component, autoscaling))
        most_of_the_time = int(autoscaling.get("minReplicas", 2))
    else:
        most_of_the_time = int(settings.get("replicas", default_replicas))
    if most_of_the_time > 1:
        children.append(disruption_budget(cluster, component))
    return children


def disruption_budget(cluster: Cluster, component: str) -> Manifest:
    """At most one pod of the component evicted at a time (node drains, cluster upgrades). Pods that are not
    ready may always go: a stuck crash-looping pod must not hold a drain forever."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": cluster.metadata(cluster.child(component), component),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": cluster.selector(component)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def autoscaler(cluster: Cluster, component: str, autoscaling: Mapping[str, Any]) -> Manifest:
    """The gateway's HPA scales its Deployment on CPU; delivery's scales the IMCluster itself (its scale
    subresource, spec.delivery.replicas) on WebSocket connections per pod, so the operator stays the one writer of
    the delivery StatefulSet's replicas and publishes the ring from the same number."""
    c = cluster
    bounds = {"minReplicas": int(autoscaling.get("minReplicas", 2)), "maxReplicas": int(autoscaling["maxReplicas"])}
    if component == "delivery":
        target: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "name": c.name}
        metric: dict[str, Any] = {
            "type": "Pods",
            "pods": {
                "metric": {"name": CONNECTIONS_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(autoscaling.get("connectionsPerPod", 5000))},
            },
        }
        window = int(autoscaling.get("scaleDownStabilizationSeconds", DELIVERY_SCALE_DOWN_WINDOW_S))
        behavior: dict[str, Any] = {
            "scaleDown": {
                "stabilizationWindowSeconds": window,
                "selectPolicy": "Min",
                "policies": [{"type": "Pods", "value": 1, "periodSeconds": DELIVERY_SCALE_DOWN_PERIOD_S}],
            },
            "scaleUp": {
                "stabilizationWindowSeconds": 0,
                "selectPolicy": "Max",
                "policies": [
                    {"type": "Pods", "value": 2, "periodSeconds": 60},
                    {"type": "Percent", "value": 50, "periodSeconds": 60},
                ],
            },
        }
    else:
        target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": c.child(component)}
        utilisation = int(autoscaling.get("targetCPUUtilizationPercentage", 70))
        metric = {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": utilisation}},
        }
        window = int(autoscaling.get("scaleDownStabilizationSeconds", 300))
        behavior = {"scaleDown": {"stabilizationWindowSeconds": window}}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": c.metadata(c.child(component), component),
        "spec": {"scaleTargetRef": target, **bounds, "metrics": [metric], "behavior": behavior},
    }


def replicas_handover(manifest: Mapping[str, Any], live: Mapping[str, Any] | None) -> Manifest | None:
    """What to apply, under REPLICAS_HANDOVER_MANAGER, before a Deployment that no longer renders its replicas (an
    autoscaler took them over) while the live object still has them owned by the operator's apply: the live count.
    Without it, server-side apply would drop the field the operator alone owned, and the Deployment would shrink to
    one pod until the autoscaler's next sync. None when there is nothing to hand over."""
    if manifest["kind"] != "Deployment" or "replicas" in manifest["spec"] or live is None:
        return None
    replicas = (live.get("spec") or {}).get("replicas")
    owned = any(
        entry.get("manager") == FIELD_MANAGER
        and entry.get("operation") == "Apply"
        and "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
        for entry in (live.get("metadata") or {}).get("managedFields") or []
    )
    if replicas is None or not owned:
        return None
    meta = manifest["metadata"]
    return {
        "apiVersion": manifest["apiVersion"],
        "kind": manifest["kind"],
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": {"replicas": int(replicas)},
    }


# ---------------------------------------------------------------------------------------------------- network


def _from_pods(cluster: Cluster, components: tuple[str, ...]) -> dict[str, Any]:
    return {
        "podSelector": {
            "matchLabels": {CLUSTER_LABEL: cluster.name},
            "matchExpressions": [{"key": COMPONENT_LABEL, "operator": "In", "values": list(components)}],
        }
    }


def _policy(cluster: Cluster, component: str, selects: tuple[str, ...], rules: list[dict[str, Any]]) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": cluster.metadata(cluster.child(component), component),
        "spec": {
            "podSelector": _from_pods(cluster, selects)["podSelector"],
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def network_policies(cluster: Cluster, spec: Mapping[str, Any], network: Mapping[str, Any]) -> list[Manifest]:
    """Ingress rules for every pod of the IMCluster: the gateway takes traffic from anywhere (or from
    networkPolicy.gatewayFrom), the services and delivery nodes only from the cluster's own Courier pods, and the
    managed backends only from the Courier pods on their own port. networkPolicy.metricsFrom may scrape every
    Courier pod; networkPolicy.objectStoreFrom may reach managed MinIO (presigned URLs)."""
    http = [{"protocol": "TCP", "port": HTTP_PORT}]
    courier = ("gateway", *SERVICES, "delivery")
    metrics_from = list(network.get("metricsFrom") or [])
    scrape = [{"from": copy.deepcopy(metrics_from), "ports": http}] if metrics_from else []
    outside: dict[str, Any] = {"ports": http}  # no "from": any source
    if network.get("gatewayFrom"):
        outside["from"] = copy.deepcopy(list(network["gatewayFrom"]))
    policies = [
        _policy(cluster, "gateway", ("gateway",), [outside, *scrape]),
        _policy(
            cluster,
            "internal",
            (*SERVICES, "delivery"),
            [{"from": [_from_pods(cluster, courier)], "ports": http}, *scrape],
        ),
    ]
    managed = [b for b in BACKENDS if (spec.get(b) or {}).get("managed") is not None]
    if managed:
        backend_rules: list[dict[str, Any]] = [{"from": [_from_pods(cluster, courier)]}]
        store_from = list(network.get("objectStoreFrom") or [])
        if store_from and "objectStore" in managed:
            backend_rules.append(
                {
                    "from": copy.deepcopy(store_from),
                    "ports": [{"protocol": "TCP", "port": 9000}],
                }
            )
        policies.append(_policy(cluster, "backends", tuple(backend_component(b) for b in managed), backend_rules))
    return policies


def ingress(cluster: Cluster, settings: Mapping[str, Any], port: int) -> Manifest:
    """An Ingress to the gateway Service; with tls.secretName, TLS terminates at the ingress controller, and an
    issuer (tls.clusterIssuer or tls.issuer) lets cert-manager's ingress-shim obtain that Secret."""
    host = str(settings["host"])
    annotations = dict(settings.get("annotations") or {})
    tls = settings.get("tls") or {}
    if tls.get("clusterIssuer"):
        annotations["cert-manager.io/cluster-issuer"] = str(tls["clusterIssuer"])
    if tls.get("issuer"):
        annotations["cert-manager.io/issuer"] = str(tls["issuer"])
    backend = {"service": {"name": cluster.child("gateway"), "port": {"number": port}}}
    spec: dict[str, Any] = {
        "rules": [
            {
                "host": host,
                "http": {
                    "paths": [{"path": str(settings.get("path") or "/"), "pathType": "Prefix", "backend": backend}]
                },
            }
        ]
    }
    if settings.get("className"):
        spec["ingressClassName"] = str(settings["className"])
    if tls.get("secretName"):
        spec["tls"] = [{"hosts": [host], "secretName": str(tls["secretName"])}]
    metadata = cluster.metadata(cluster.child("gateway"), "gateway")
    if annotations:
        metadata["annotations"] = dict(sorted(annotations.items()))
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata, "spec": spec}


def http_route(cluster: Cluster, settings: Mapping[str, Any], port: int) -> Manifest:
    """An HTTPRoute (Gateway API) from the listeners of the given Gateways to the gateway Service, for the path prefix.
    TLS has no place here: it terminates at the Gateway's HTTPS listener, with the certificate Secret that listener
    names (which cert-manager's gateway-shim fills when the Gateway carries an issuer annotation)."""
    parents = []
    for ref in settings["parentRefs"]:
        parent = {"group": GATEWAY_API_GROUP, "kind": "Gateway", "name": str(ref["name"])}
        parent.update((key, str(ref[key])) for key in ("namespace", "sectionName") if ref.get(key))
        parents.append(parent)
    spec: dict[str, Any] = {"parentRefs": parents}
    if settings.get("hostnames"):
        spec["hostnames"] = [str(host) for host in settings["hostnames"]]
    spec["rules"] = [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": str(settings.get("path") or "/")}}],
            "backendRefs": [{"group": "", "kind": "Service", "name": cluster.child("gateway"), "port": port}],
        }
    ]
    metadata = cluster.metadata(cluster.child("gateway"), "gateway")
    if settings.get("annotations"):
        metadata["annotations"] = dict(sorted(settings["annotations"].items()))
    api_version, kind = HTTP_ROUTE
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec}


def backend_component(backend: str) -> str:
    """The component (child name suffix) of a managed backend."""
    return {"objectStore": "minio"}.get(backend, backend)
