"""The real operator process (``python -m im_operator``) against the real control plane, driven with kubectl.

Each module starts with `helm install` of charts/courier into a namespace of its own: the CRD and the RBAC the
tests run on are the chart's, and the operator process runs as the chart's ServiceAccount, watching that namespace.
kwok plays the kubelet, so pods turn Running and Ready without containers, and kube-controller-manager runs the
Deployment, StatefulSet, EndpointSlice and garbage-collector controllers the operator relies on.
Static PersistentVolumes of a test StorageClass back the managed backends' claims (nothing provisions here).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.conftest import REPO, Cluster, CommandFailed, wait_until

SAMPLE = REPO / "crds" / "examples" / "imcluster.yaml"
CHART = REPO / "charts" / "courier"
CHART_CRD = CHART / "crds" / "imcluster.yaml"
CLUSTER_LABEL = "im.courier.dev/cluster"
IMAGE = "registry.courier.invalid/courier:1"  # kwok never pulls it
PVS = 12
SERVICES = ("gateway", "identity", "conversation", "message", "presence", "file")
MANAGED_STATEFULSETS = ("redis", "kafka", "database", "minio")


def lease_name(kube: Cluster, namespace: str) -> str:
    """The Lease the chart's operator Deployment in ``namespace`` elects on."""
    deployments = kube.get("deployments", "-n", namespace, "-l", "app.kubernetes.io/component=operator")["items"]
    [container] = deployments[0]["spec"]["template"]["spec"]["containers"]
    return str(next(e["value"] for e in container["env"] if e["name"] == "COURIER_OPERATOR_LEASE_NAME"))


@dataclass
class Operator:
    """The operator subprocess; restartable, its log kept in a file."""

    cluster: Cluster
    namespace: str
    kubeconfig: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO)]),
            "COURIER_OPERATOR_NAMESPACES": self.namespace,
            "COURIER_OPERATOR_DEFAULT_IMAGE": IMAGE,
            "COURIER_OPERATOR_DRIFT_INTERVAL_S": "5",
            "COURIER_OPERATOR_RETRY_DELAY_S": "2",
            # Leader election on the Lease the chart's Role lets the ServiceAccount write.
            "POD_NAMESPACE": self.namespace,
            "COURIER_OPERATOR_LEASE_NAME": lease_name(self.cluster, self.namespace),
            **self.env,
        }
        with self.log.open("ab") as out:
            out.write(f"==== start {self.starts + 1}\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "im_operator"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
            )
        self.starts += 1

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"the operator exited:\n{self.output()[-5000:]}"


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def namespace(kube: Cluster) -> Iterator[str]:
    name = f"op-{uuid.uuid4().hex[:10]}"
    kube.kubectl("create", "namespace", name)
    wait_until(
        f"the default ServiceAccount in {name}",
        lambda: (bool(kube.find("serviceaccount", "default", "-n", name)), None),
    )
    yield name
    kube.kubectl("delete", "imclusters", "--all", "-n", name, "--wait=false")
    kube.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def storage_class(kube: Cluster, namespace: str) -> Iterator[str]:
    """A StorageClass of static volumes only for this module, so nothing else here can claim them."""
    name = f"courier-test-{namespace}"
    volumes = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{name}-{i}", "labels": {"courier-test": namespace}},
            "spec": {
                "capacity": {"storage": "20Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": name,
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": f"/tmp/{name}-{i}"},
            },
        }
        for i in range(PVS)
    ]
    storage = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name, "labels": {"courier-test": namespace}},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "Immediate",
    }
    kube.apply(storage, *volumes)
    yield name
    kube.kubectl("delete", "persistentvolumes,storageclasses", "-l", f"courier-test={namespace}", "--wait=false")


@pytest.fixture(scope="module")
def release(kube: Cluster, namespace: str) -> Iterator[str]:
    """charts/courier installed by the real helm into the test namespace, watching only it: the CRD, the
    ClusterRole and the operator's ServiceAccount every test here runs on. kwok only pretends to run the
    chart's operator pod, so the process that reconciles is the local one, under that ServiceAccount."""
    if kube.find("crd", "imclusters.im.courier.dev"):
        # Helm installs a chart's CRDs only when absent and never upgrades them; bring an older one up to
        # this checkout the way docs/operations.md tells operators to on upgrade.
        kube.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=helm", "-f", str(CHART_CRD))
    name = f"c-{namespace}"
    kube.helm(
        "install",
        name,
        str(CHART),
        "--namespace",
        namespace,
        "--set",
        f"operator.watchNamespaces={{{namespace}}}",
        "--wait",
        "--timeout",
        "180s",
    )
    kube.kubectl("wait", "--for=condition=Established", "crd/imclusters.im.courier.dev", "--timeout=60s")
    yield name
    kube.helm("uninstall", name, "--namespace", namespace, "--wait", "--timeout", "120s")


@pytest.fixture(scope="module")
def operator_kubeconfig(kube: Cluster, namespace: str, release: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig of the ServiceAccount the chart made for its operator, bound to the chart's ClusterRole."""
    [deployment] = kube.get("deployments", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")["items"]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    token = kube.kubectl("create", "token", account, "-n", namespace, "--duration=2h").strip()
    admin = yaml.safe_load(Path(kube.kubeconfig).read_text())
    server = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kube", "cluster": server}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "kube", "user": "operator", "namespace": namespace}}],
        "current-context": "operator",
    }
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def operator(
    kube: Cluster, namespace: str, operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    log = tmp_path_factory.mktemp("operator-log") / "operator.log"
    process = Operator(kube, namespace, operator_kubeconfig, log)
    process.start()
    yield process
    process.stop()
    print(f"\noperator log ({log}), last lines:\n" + "\n".join(process.output().splitlines()[-40:]))


def sample(namespace: str, storage_class: str, name: str = "chat") -> dict[str, Any]:
    """crds/examples/imcluster.yaml in the test namespace, its volumes on the test StorageClass."""
    manifest: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    manifest["metadata"].update(name=name, namespace=namespace)
    for backend in ("redis", "kafka", "database", "objectStore"):
        manifest["spec"][backend]["managed"]["storage"]["storageClassName"] = storage_class
    return manifest


@pytest.fixture(scope="module")
def chat(kube: Cluster, namespace: str, storage_class: str, operator: Operator) -> str:
    """The sample IMCluster, applied once and Ready."""
    kube.apply(sample(namespace, storage_class))
    took = wait_ready(kube, namespace, "chat", operator)
    print(f"\nsample IMCluster Ready {took:.1f}s after kubectl apply")
    return "chat"


# ---------------------------------------------------------------------------------------------------- helpers


def condition(imcluster: dict[str, Any], kind: str) -> dict[str, Any]:
    for found in (imcluster.get("status") or {}).get("conditions") or []:
        if found["type"] == kind:
            return dict(found)
    return {}


def wait_ready(kube: Cluster, namespace: str, name: str, operator: Operator) -> float:
    def ready() -> tuple[bool, Any]:
        operator.alive()
        imc = kube.get("imcluster", name, "-n", namespace)
        status = imc.get("status") or {}
        generation = imc["metadata"]["generation"]
        done = (
            condition(imc, "Ready").get("status") == "True"
            and status.get("observedGeneration") == generation
            and all(c.get("observedGeneration") == generation for c in status.get("conditions", []))
        )
        return done, status.get("conditions")

    return wait_until(f"IMCluster {name} to be Ready at its current generation", ready)


def children(kube: Cluster, namespace: str, name: str, kinds: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.get(kinds, "-n", namespace, "-l", f"{CLUSTER_LABEL}={name}")["items"]
    return items


def ring_document(kube: Cluster, namespace: str, name: str) -> dict[str, Any]:
    config_map = kube.get("configmap", f"{name}-ring", "-n", namespace)
    document: dict[str, Any] = json.loads(config_map["data"]["ring.json"])
    return document


def versions(kube: Cluster, namespace: str, name: str) -> dict[str, str]:
    items = children(kube, namespace, name, "deployments,statefulsets,services,configmaps,secrets")
    return {f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"] for o in items}


# ---------------------------------------------------------------------------------------------------- tests


def test_sample_brings_up_every_child_with_owner_references_and_ready_status(
    kube: Cluster, namespace: str, chat: str
) -> None:
    imc = kube.get("imcluster", chat, "-n", namespace)
    uid = imc["metadata"]["uid"]
    found = {
        f"{o['kind']}/{o['metadata']['name']}": o
        for o in children(kube, namespace, chat, "deployments,statefulsets,services,configmaps,secrets")
    }
    expected = (
        [f"Deployment/chat-{s}" for s in SERVICES]
        + [f"Service/chat-{s}" for s in (*SERVICES, "delivery", *MANAGED_STATEFULSETS)]
        + ["StatefulSet/chat-delivery"]
        + [f"StatefulSet/chat-{s}" for s in MANAGED_STATEFULSETS]
        + ["ConfigMap/chat-config", "ConfigMap/chat-ring", "Secret/chat-secrets"]
    )
    assert sorted(found) == sorted(expected)
    for key, obj in found.items():
        owners = obj["metadata"].get("ownerReferences") or []
        assert [(o["kind"], o["name"], o["uid"], o.get("controller")) for o in owners] == [
            ("IMCluster", chat, uid, True)
        ], key
    claims = children(kube, namespace, chat, "persistentvolumeclaims")
    assert sorted(c["metadata"]["name"] for c in claims) == sorted(f"data-chat-{s}-0" for s in MANAGED_STATEFULSETS)
    assert all(c["status"]["phase"] == "Bound" for c in claims)
    # The IMCluster is among each claim's owners: its deletion takes them along even if the StatefulSet controller
    # never got to add its own reference.
    for c in claims:
        assert ("IMCluster", chat, uid) in [(o["kind"], o["name"], o["uid"]) for o in c["metadata"]["ownerReferences"]]

    status = imc["status"]
    assert status["observedGeneration"] == imc["metadata"]["generation"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True",
        "Progressing": "False",
        "Degraded": "False",
        "RingPublished": "True",
    }
    for cond in status["conditions"]:
        assert set(cond) == {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
    assert status["components"]["gateway"] == {"ready": 2, "desired": 2}
    assert status["components"]["message"] == {"ready": 2, "desired": 2}
    assert status["gateway"]["endpoint"] == f"http://chat-gateway.{namespace}.svc:80"
    assert status["delivery"]["replicas"] == 2
    assert status["delivery"]["selector"] == f"{CLUSTER_LABEL}=chat,app.kubernetes.io/component=delivery"
    assert status["ring"]["members"] == ["chat-delivery-0", "chat-delivery-1"]
    ring = ring_document(kube, namespace, chat)
    assert ring["members"] == ["chat-delivery-0", "chat-delivery-1"]
    assert ring["version"] == status["ring"]["version"]
    assert ring["url_template"] == f"http://{{member}}.chat-delivery.{namespace}.svc:8080"
    printed = kube.kubectl("get", "imc", chat, "-n", namespace, "--no-headers").split()
    assert printed[:4] == [chat, "True", f"http://chat-gateway.{namespace}.svc:80", "2/2"]
    reasons = {
        e["reason"]
        for e in kube.get("events", "-n", namespace, "--field-selector", "involvedObject.kind=IMCluster")["items"]
    }
    assert {"Created", "RingPublished", "Ready"} <= reasons


def test_scaling_the_imcluster_grows_the_statefulset_then_the_ring_and_status(
    kube: Cluster, namespace: str, chat: str, operator: Operator
) -> None:
    before = ring_document(kube, namespace, chat)
    replicas = len(before["members"]) + 1

    kube.kubectl("scale", f"imc/{chat}", "-n", namespace, f"--replicas={replicas}")

    statefulset_took = wait_until(
        "the delivery StatefulSet to take the new replica count",
        lambda: (kube.get("statefulset", "chat-delivery", "-n", namespace)["spec"]["replicas"] == replicas, None),
    )

    def ring_grown() -> tuple[bool, Any]:
        ring = ring_document(kube, namespace, chat)
        return len(ring["members"]) == replicas and ring["version"] > before["version"], ring

    ring_took = wait_until("the ring ConfigMap to list the new member", ring_grown)
    wait_ready(kube, namespace, chat, operator)
    print(f"\nscale: StatefulSet after {statefulset_took:.1f}s, ring after {ring_took:.1f}s more")
    ring = ring_document(kube, namespace, chat)
    assert ring["members"] == [f"chat-delivery-{i}" for i in range(replicas)]
    status = kube.get("imcluster", chat, "-n", namespace)["status"]
    assert status["delivery"]["replicas"] == replicas
    assert status["delivery"]["readiness"] == f"{replicas}/{replicas}"
    published = {key: status["ring"][key] for key in ("version", "members", "configMap")}
    assert published == {"version": ring["version"], "members": ring["members"], "configMap": "chat-ring"}
    scale = json.loads(
        kube.kubectl("get", "--raw", f"/apis/im.courier.dev/v1alpha1/namespaces/{namespace}/imclusters/chat/scale")
    )
    assert scale["spec"]["replicas"] == replicas
    assert scale["status"]["replicas"] == replicas
    assert scale["status"]["selector"] == status["delivery"]["selector"]


def test_changing_the_image_rolls_every_deployment_and_the_delivery_tier(
    kube: Cluster, namespace: str, chat: str, operator: Operator
) -> None:
    image = f"registry.courier.invalid/courier:{uuid.uuid4().hex[:8]}"
    kube.kubectl("patch", "imc", chat, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": {"image": image}}))

    def rolled() -> tuple[bool, Any]:
        workloads = [
            *children(kube, namespace, chat, "deployments"),
            kube.get("statefulset", "chat-delivery", "-n", namespace),
        ]
        images = {o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]["image"] for o in workloads}
        return set(images.values()) == {image} and len(images) == len(SERVICES) + 1, images

    wait_until("every Courier workload's pod template to carry the new image", rolled)
    took = wait_ready(kube, namespace, chat, operator)
    print(f"\nimage change: Ready again {took:.1f}s after the templates changed")
    pods = kube.get("pods", "-n", namespace, "-l", f"{CLUSTER_LABEL}=chat,app.kubernetes.io/component=gateway")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert {p["spec"]["containers"][0]["image"] for p in live} == {image}
    managed = kube.get("statefulset", "chat-redis", "-n", namespace)
    assert managed["spec"]["template"]["spec"]["containers"][0]["image"].startswith("redis:")


def test_a_deleted_child_is_recreated(kube: Cluster, namespace: str, chat: str, operator: Operator) -> None:
    old = {
        kind: kube.get(kind, name, "-n", namespace)["metadata"]["uid"]
        for kind, name in (("deployment", "chat-identity"), ("service", "chat-gateway"), ("configmap", "chat-ring"))
    }
    kube.kubectl("delete", "deployment/chat-identity", "service/chat-gateway", "configmap/chat-ring", "-n", namespace)

    def recreated() -> tuple[bool, Any]:
        now = {}
        for kind, name in (("deployment", "chat-identity"), ("service", "chat-gateway"), ("configmap", "chat-ring")):
            found = kube.find(kind, name, "-n", namespace)
            now[kind] = found["metadata"]["uid"] if found else None
        return all(now[k] and now[k] != old[k] for k in old), now

    took = wait_until("the deleted children to be recreated", recreated)
    print(f"\ndeleted children recreated after {took:.1f}s")
    wait_ready(kube, namespace, chat, operator)
    deployment = kube.get("deployment", "chat-identity", "-n", namespace)
    assert deployment["metadata"]["ownerReferences"][0]["name"] == chat


def test_an_operator_restart_changes_nothing(kube: Cluster, namespace: str, chat: str, operator: Operator) -> None:
    wait_ready(kube, namespace, chat, operator)
    before = versions(kube, namespace, chat)
    imc_before = kube.get("imcluster", chat, "-n", namespace)

    operator.stop()
    operator.start()

    def resumed_and_drifted() -> tuple[bool, Any]:
        operator.alive()
        log = operator.output().split(f"==== start {operator.starts}\n")[-1]
        # The resume pass, then two full drift passes: every child applied again at least twice.
        return f"{namespace}/{chat} is ready" in log and log.count("drift pass over") >= 2, log[-2000:]

    took = wait_until("the restarted operator to resume and make two drift passes", resumed_and_drifted)
    print(f"\nrestart: resumed and drifted twice in {took:.1f}s")
    assert versions(kube, namespace, chat) == before
    imc_after = kube.get("imcluster", chat, "-n", namespace)
    assert imc_after["status"] == imc_before["status"]
    assert imc_after["metadata"]["generation"] == imc_before["metadata"]["generation"]


def test_the_api_server_refuses_specs_its_rules_forbid(kube: Cluster, namespace: str, release: str) -> None:
    both = sample(namespace, "unused", name="both")
    both["spec"]["redis"]["external"] = {"url": "redis://redis.example:6379/0"}
    with pytest.raises(CommandFailed) as refused:
        kube.apply(both)
    assert "exactly one of managed or external must be set" in refused.value.output

    long_name = sample(namespace, "unused", name="x" * 41)
    with pytest.raises(CommandFailed) as refused:
        kube.apply(long_name)
    assert "at most 40 characters" in refused.value.output

    not_a_url = sample(namespace, "unused", name="traced")
    not_a_url["spec"]["tracing"] = {"endpoint": "collector:4318"}
    with pytest.raises(CommandFailed) as refused:
        kube.apply(not_a_url)
    assert "tracing.endpoint must be an http:// or https:// URL" in refused.value.output


def test_the_api_server_refuses_changing_immutable_fields(kube: Cluster, namespace: str, chat: str) -> None:
    for patch, message in (
        ({"spec": {"database": {"engine": "postgresql"}}}, "database engine is immutable"),
        (
            {"spec": {"redis": {"managed": {"storage": {"size": "50Gi"}}}}},
            "storage size and storageClassName are immutable",
        ),
    ):
        with pytest.raises(CommandFailed) as refused:
            kube.kubectl("patch", "imc", chat, "-n", namespace, "--type=merge", "-p", json.dumps(patch))
        assert message in refused.value.output


def external_cluster(namespace: str, name: str, secret: str) -> dict[str, Any]:
    """An IMCluster whose backends are all external, credentials in the Secret ``secret``."""
    ref = {"name": secret}
    return {
        "apiVersion": "im.courier.dev/v1alpha1",
        "kind": "IMCluster",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "gateway": {"replicas": 1},
            "delivery": {"replicas": 1},
            "config": {"limits": {"user": {"rate": 50, "burst": 10}}},
            "redis": {"external": {"secretRef": {**ref, "key": "redis-url"}}},
            "kafka": {"external": {"bootstrap": "kafka-0.kafka.example:9092"}},
            "database": {"engine": "postgresql", "external": {"secretRef": {**ref, "key": "database-url"}}},
            "objectStore": {
                "external": {
                    "endpoint": "s3.example:443",
                    "accessKeyRef": {**ref, "key": "s3-access"},
                    "secretKeyRef": {**ref, "key": "s3-secret"},
                }
            },
        },
    }


def test_a_spec_the_services_would_refuse_is_marked_degraded_and_recovers_once_fixed(
    kube: Cluster, namespace: str, operator: Operator
) -> None:
    name = "ext"
    kube.apply(external_cluster(namespace, name, "ext-backends"))

    def marked() -> tuple[bool, Any]:
        imc = kube.get("imcluster", name, "-n", namespace)
        degraded, ready = condition(imc, "Degraded"), condition(imc, "Ready")
        done = (
            degraded.get("status") == "True"
            and degraded.get("reason") == "InvalidSpec"
            and ready.get("status") == "False"
            and imc["status"].get("observedGeneration") == imc["metadata"]["generation"]
        )
        return done, imc.get("status")

    wait_until("the invalid spec to be marked Degraded", marked)
    degraded = condition(kube.get("imcluster", name, "-n", namespace), "Degraded")
    assert degraded["message"] == "spec.config.limits.user: burst must be greater than rate"
    assert children(kube, namespace, name, "deployments,statefulsets") == []
    events = kube.get("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]
    assert any(e["type"] == "Warning" and e["reason"] == "InvalidSpec" for e in events)
    assert "failed permanently" in operator.output()

    # Fixed spec, but the referenced Secret does not exist yet: named in the condition, nothing started.
    fix = {"spec": {"config": {"limits": {"user": {"rate": 50, "burst": 200}}}}}
    kube.kubectl("patch", "imc", name, "-n", namespace, "--type=merge", "-p", json.dumps(fix))

    def waiting_for_secret() -> tuple[bool, Any]:
        degraded = condition(kube.get("imcluster", name, "-n", namespace), "Degraded")
        return degraded.get("reason") == "MissingSecret", degraded

    wait_until("the missing Secret to be reported", waiting_for_secret)
    assert "Secret/ext-backends" in condition(kube.get("imcluster", name, "-n", namespace), "Degraded")["message"]

    values = {
        "redis-url": "redis://:pw@redis.example:6379/0",
        "database-url": "postgresql+asyncpg://courier:pw@pg.example:5432/courier",
        "s3-access": "access",
        "s3-secret": "secret",
    }
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "ext-backends", "namespace": namespace},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
        }
    )
    took = wait_ready(kube, namespace, name, operator)
    print(f"\nexternal backends: Ready {took:.1f}s after the Secret appeared")
    assert children(kube, namespace, name, "statefulsets")[0]["metadata"]["name"] == "ext-delivery"  # no managed ones
    env = kube.get("deployment", "ext-file", "-n", namespace)["spec"]["template"]["spec"]["containers"][0]["env"]
    by_name = {e["name"]: e for e in env}
    assert by_name["COURIER_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "ext-backends",
        "key": "database-url",
    }
    assert by_name["COURIER_REDIS__URL"]["valueFrom"]["secretKeyRef"] == {"name": "ext-backends", "key": "redis-url"}
    assert by_name["COURIER_S3__ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "ext-backends",
        "key": "s3-access",
    }
    user_secret = kube.get("secret", "ext-backends", "-n", namespace)
    assert not user_secret["metadata"].get("ownerReferences")  # never owned: it must outlive the IMCluster
    config = kube.get("configmap", "ext-config", "-n", namespace)["data"]
    assert config["COURIER_KAFKA__BOOTSTRAP"] == "kafka-0.kafka.example:9092"
    assert config["COURIER_S3__ENDPOINT"] == "s3.example:443"


def test_deleting_the_imcluster_leaves_nothing_behind(
    kube: Cluster, namespace: str, storage_class: str, operator: Operator
) -> None:
    name = "gone"
    kube.apply(sample(namespace, storage_class, name=name))
    wait_ready(kube, namespace, name, operator)
    assert children(kube, namespace, name, "persistentvolumeclaims")

    kube.kubectl("delete", "imcluster", name, "-n", namespace, "--wait=true", "--timeout=60s")

    kinds = (
        "deployments,statefulsets,replicasets,controllerrevisions,services,endpointslices,configmaps,secrets,"
        "persistentvolumeclaims,pods"
    )

    def nothing_left() -> tuple[bool, Any]:
        # What holds a child up: a finalizer, an owner still there (or none at all), a deletion under way.
        left = {
            f"{o['kind']}/{o['metadata']['name']}": {
                key: o["metadata"].get(key) for key in ("deletionTimestamp", "finalizers", "ownerReferences")
            }
            for o in children(kube, namespace, name, kinds)
        }
        return not left, left

    took = wait_until("the garbage collector to remove every child", nothing_left)
    print(f"\ndeletion: every child gone {took:.1f}s after the IMCluster")
    assert kube.find("imcluster", name, "-n", namespace) is None
    # The other IMClusters of the namespace keep running.
    assert kube.find("imcluster", "chat", "-n", namespace) is not None


def test_the_operator_logged_no_tracebacks(operator: Operator) -> None:
    operator.alive()
    assert "Traceback" not in operator.output(), operator.output()[-5000:]
