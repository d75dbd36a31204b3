"""The objects around the pods, on the real control plane: the pod template reaches the scheduled pods, no pod is
BestEffort, PodDisruptionBudgets really block a second eviction (the disruption controller runs) and go away when
a component drops to one pod, the autoscalers find their scale targets (delivery's being the IMCluster) and the
gateway's replicas pass to its autoscaler without shrinking, NetworkPolicies select exactly the pods they are
meant to, the Ingress is accepted, and the operator's namespaced Role reads no Secret outside its namespace.

The operator runs as the chart's ServiceAccount under the chart's RBAC (watchNamespaces mode: a Role)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.k8s.conftest import Cluster, CommandFailed, wait_until
from tests.k8s.test_operator import (  # noqa: F401 - module-scoped fixtures of the operator tests, reused here
    CLUSTER_LABEL,
    Operator,
    children,
    namespace,
    operator,
    operator_kubeconfig,
    release,
    sample,
    storage_class,
    wait_ready,
)

NAME = "placed"
COMPONENT = "app.kubernetes.io/component"
COURIER = ("gateway", "identity", "conversation", "message", "presence", "file", "delivery")
BACKENDS = ("redis", "kafka", "database", "minio")


@pytest.fixture(scope="module")
def priority_class(kube: Cluster, namespace: str) -> Iterator[str]:  # noqa: F811
    name = f"courier-test-{namespace}"
    kube.apply(
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": 1000}
    )
    yield name
    kube.kubectl("delete", "priorityclass", name, "--wait=false")


@pytest.fixture(scope="module")
def placed(
    kube: Cluster,
    namespace: str,  # noqa: F811
    storage_class: str,  # noqa: F811
    operator: Operator,  # noqa: F811
    priority_class: str,
) -> str:
    """The sample with three gateways placed by the pod template, delivery autoscaled, NetworkPolicies and an
    Ingress; Ready."""
    manifest = sample(namespace, storage_class, name=NAME)
    manifest["spec"]["gateway"].update(
        replicas=3,
        pod={
            "labels": {"team": "chat"},
            "annotations": {"example.org/owner": "chat-team"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "courier", "effect": "NoSchedule"}],
            "priorityClassName": priority_class,
        },
        ingress={
            "host": "chat.example.org",
            "className": "nginx",
            "tls": {"secretName": "chat-tls", "clusterIssuer": "letsencrypt"},
        },
    )
    manifest["spec"]["delivery"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 4}
    manifest["spec"]["networkPolicy"] = {"enabled": True}
    kube.apply(manifest)
    wait_ready(kube, namespace, NAME, operator)
    return NAME


def pods(kube: Cluster, where: str, selector: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = kube.get("pods", "-n", where, "-l", selector)["items"]
    return [p for p in found if not p["metadata"].get("deletionTimestamp")]


def component_pods(kube: Cluster, where: str, component: str) -> list[dict[str, Any]]:
    return pods(kube, where, f"{CLUSTER_LABEL}={NAME},{COMPONENT}={component}")


def selector_string(selector: dict[str, Any]) -> str:
    """A LabelSelector as kubectl's -l syntax."""
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        assert expression["operator"] == "In"
        parts.append(f"{expression['key']} in ({','.join(expression['values'])})")
    return ",".join(parts)


def test_the_pod_template_reaches_the_scheduled_pods_and_no_pod_is_best_effort(
    kube: Cluster,
    namespace: str,  # noqa: F811
    placed: str,
    priority_class: str,
) -> None:
    gateways = component_pods(kube, namespace, "gateway")
    assert len(gateways) == 3
    for pod in gateways:
        assert pod["metadata"]["labels"]["team"] == "chat"
        assert pod["metadata"]["annotations"]["example.org/owner"] == "chat-team"
        assert pod["spec"]["priorityClassName"] == priority_class
        assert pod["spec"]["priority"] == 1000  # resolved by the API server's Priority admission
        assert {"key": "dedicated", "operator": "Equal", "value": "courier", "effect": "NoSchedule"} in pod["spec"][
            "tolerations"
        ]
    # Spread by hostname: the three gateways use both of kwok's nodes.
    assert len({p["spec"]["nodeName"] for p in gateways}) == 2
    everything = pods(kube, namespace, f"{CLUSTER_LABEL}={NAME}")
    assert {p["metadata"]["labels"][COMPONENT] for p in everything} == {*COURIER, *BACKENDS}
    qos = {p["metadata"]["name"]: p["status"].get("qosClass") for p in everything}
    assert "BestEffort" not in qos.values(), qos
    assert all(qos.values()), qos


def evict(kube: Cluster, where: str, pod: str) -> str:
    """The Eviction API (what `kubectl drain` calls); its answer, or the refusal as CommandFailed."""
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": where}}
    return kube.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{where}/pods/{pod}/eviction", "-f", "-", stdin=json.dumps(body)
    )


@contextlib.contextmanager
def cordoned(kube: Cluster) -> Iterator[None]:
    """Every node unschedulable for a moment, so an evicted pod's replacement stays Pending (kwok would otherwise
    have it Ready within milliseconds). The k8s tier holds its lock: no other test schedules meanwhile."""
    nodes = [n["metadata"]["name"] for n in kube.get("nodes")["items"]]
    for node in nodes:
        kube.kubectl("cordon", node)
    try:
        yield
    finally:
        for node in nodes:
            kube.kubectl("uncordon", node)


def test_a_disruption_budget_lets_one_gateway_go_and_refuses_the_second(
    kube: Cluster,
    namespace: str,  # noqa: F811
    placed: str,
) -> None:
    budget_name = f"{NAME}-gateway"

    def budget(healthy: int, allowed: int) -> Callable[[], tuple[bool, Any]]:
        def probe() -> tuple[bool, Any]:
            status = kube.get("pdb", budget_name, "-n", namespace).get("status") or {}
            return (status.get("currentHealthy"), status.get("disruptionsAllowed")) == (healthy, allowed), status

        return probe

    wait_until("the disruption controller to allow one gateway disruption", budget(3, 1))
    budgets = sorted(p["metadata"]["name"] for p in children(kube, namespace, NAME, "poddisruptionbudgets"))
    assert budgets == [f"{NAME}-{c}" for c in ("delivery", "gateway", "message")]
    first, second = sorted(p["metadata"]["name"] for p in component_pods(kube, namespace, "gateway"))[:2]

    with cordoned(kube):
        assert '"code":201' in evict(kube, namespace, first)
        wait_until("the budget to count the evicted gateway as gone", budget(2, 0))
        with pytest.raises(CommandFailed) as refused:
            evict(kube, namespace, second)
        assert "disruption budget" in refused.value.output
        assert second in {p["metadata"]["name"] for p in component_pods(kube, namespace, "gateway")}
    wait_until("the replacement gateway to start and the budget to allow one again", budget(3, 1))


def test_a_component_dropping_to_one_pod_loses_its_budget(
    kube: Cluster,
    namespace: str,  # noqa: F811
    placed: str,
    operator: Operator,  # noqa: F811
) -> None:
    assert kube.find("pdb", f"{NAME}-message", "-n", namespace)
    patch = {"spec": {"services": {"message": {"replicas": 1}}}}
    kube.kubectl("patch", "imc", NAME, "-n", namespace, "--type=merge", "-p", json.dumps(patch))
    wait_until(
        "the message budget to be pruned",
        lambda: (kube.find("pdb", f"{NAME}-message", "-n", namespace) is None, None),
    )
    wait_ready(kube, namespace, NAME, operator)
    assert kube.find("pdb", f"{NAME}-gateway", "-n", namespace)


def test_the_delivery_autoscaler_finds_the_imcluster_as_its_scale_target(
    kube: Cluster,
    namespace: str,  # noqa: F811
    placed: str,
) -> None:
    hpa = kube.get("hpa", f"{NAME}-delivery", "-n", namespace)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "im.courier.dev/v1alpha1", "kind": "IMCluster", "name": NAME}

    def able_to_scale() -> tuple[bool, Any]:
        conditions = (kube.get("hpa", f"{NAME}-delivery", "-n", namespace).get("status") or {}).get("conditions")
        found = {c["type"]: c for c in conditions or []}
        able = found.get("AbleToScale") or {}
        return able.get("status") == "True" and able.get("reason") == "SucceededGetScale", conditions

    wait_until("the HPA controller to read the IMCluster's scale subresource", able_to_scale)
    status = kube.get("hpa", f"{NAME}-delivery", "-n", namespace)["status"]
    # It read the current count through the IMCluster (there is no custom metrics API here to scale on).
    assert status["currentReplicas"] == 2


def test_the_gateway_replicas_pass_to_its_autoscaler_without_shrinking(
    kube: Cluster,
    namespace: str,  # noqa: F811
    placed: str,
    operator: Operator,  # noqa: F811
) -> None:
    deployment = f"{NAME}-gateway"
    assert kube.get("deployment", deployment, "-n", namespace)["spec"]["replicas"] == 3
    patch = {"spec": {"gateway": {"autoscaling": {"minReplicas": 2, "maxReplicas": 5}}}}
    kube.kubectl("patch", "imc", NAME, "-n", namespace, "--type=merge", "-p", json.dumps(patch))

    def handed_over() -> tuple[bool, Any]:
        live = json.loads(
            kube.kubectl("get", "deployment", deployment, "-n", namespace, "-o", "json", "--show-managed-fields")
        )
        managers = {
            (m["manager"], m["operation"]): m.get("fieldsV1", {}).get("f:spec", {})
            for m in live["metadata"]["managedFields"]
        }
        operator_owns = "f:replicas" in managers.get(("courier-operator", "Apply"), {})
        return not operator_owns and kube.find("hpa", deployment, "-n", namespace) is not None, managers

    wait_until("the operator to stop owning the gateway's replicas and the HPA to exist", handed_over)
    log_mark = operator.output().count("drift pass over")
    wait_until(
        "two more drift passes",
        lambda: (operator.output().count("drift pass over") >= log_mark + 2, None),
    )
    assert kube.get("deployment", deployment, "-n", namespace)["spec"]["replicas"] == 3
    events = kube.get("events", "-n", namespace, "--field-selector", f"involvedObject.name={deployment}")["items"]
    scaled = [e["message"] for e in events if e["reason"] == "ScalingReplicaSet"]
    assert not [m for m in scaled if "Scaled down" in m], scaled


def test_network_policies_select_exactly_their_pods_and_peers(
    kube: Cluster,
    namespace: str,  # noqa: F811
    placed: str,
) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in children(kube, namespace, NAME, "networkpolicies")}
    assert sorted(policies) == [f"{NAME}-backends", f"{NAME}-gateway", f"{NAME}-internal"]

    def components(selector: dict[str, Any]) -> set[str]:
        return {p["metadata"]["labels"][COMPONENT] for p in pods(kube, namespace, selector_string(selector))}

    assert components(policies[f"{NAME}-gateway"]["podSelector"]) == {"gateway"}
    assert policies[f"{NAME}-gateway"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}]}]
    assert components(policies[f"{NAME}-internal"]["podSelector"]) == set(COURIER) - {"gateway"}
    assert components(policies[f"{NAME}-backends"]["podSelector"]) == set(BACKENDS)
    for name in (f"{NAME}-internal", f"{NAME}-backends"):
        [rule] = policies[name]["ingress"]
        [peer] = rule["from"]
        assert set(peer) == {"podSelector"}  # this namespace only
        assert components(peer["podSelector"]) == set(COURIER), name


def test_the_gateway_ingress_carries_tls_and_the_cert_manager_issuer(
    kube: Cluster,
    namespace: str,  # noqa: F811
    placed: str,
) -> None:
    ingress = kube.get("ingress", f"{NAME}-gateway", "-n", namespace)
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ingress["spec"]["tls"] == [{"hosts": ["chat.example.org"], "secretName": "chat-tls"}]
    [rule] = ingress["spec"]["rules"]
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": f"{NAME}-gateway", "port": {"number": 80}}


def test_the_api_server_refuses_bad_placement_autoscaling_and_ingress(
    kube: Cluster,
    namespace: str,  # noqa: F811
    release: str,  # noqa: F811
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"gateway": {"pod": {"labels": {"app.kubernetes.io/component": "x"}}}}, "are the operator's"),
        (
            {"gateway": {"pod": {"tolerations": [{"key": "a", "operator": "Exists", "value": "b"}]}}},
            "operator Exists takes no value",
        ),
        ({"delivery": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}}, "must not exceed maxReplicas"),
        (
            {
                "gateway": {
                    "ingress": {"host": "a.example", "tls": {"secretName": "s", "issuer": "i", "clusterIssuer": "c"}}
                }
            },
            "at most one of clusterIssuer or issuer",
        ),
        ({"networkPolicy": {"enabled": True, "gatewayFrom": [{}]}}, "a peer needs podSelector"),
    ]
    for patch, message in cases:
        manifest = sample(namespace, "unused", name="refused")
        for key, value in patch.items():
            manifest["spec"].setdefault(key, {}).update(value)
        with pytest.raises(CommandFailed) as refused:
            kube.apply(manifest)
        assert message in refused.value.output, patch


def test_the_operators_role_reads_secrets_only_in_its_namespace(
    kube: Cluster,
    namespace: str,  # noqa: F811
    release: str,  # noqa: F811
) -> None:
    [deployment] = kube.get("deployments", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")["items"]
    account = f"system:serviceaccount:{namespace}:{deployment['spec']['template']['spec']['serviceAccountName']}"

    def can(*args: str) -> str:
        try:
            return kube.kubectl("auth", "can-i", *args, f"--as={account}").strip()
        except CommandFailed as answer:  # `can-i` exits 1 for "no"
            return answer.output.strip()

    # In its namespace it reads and watches Secrets (the ones IMClusters use roll their pods); nowhere else.
    for verb in ("get", "list", "watch"):
        assert can(verb, "secrets", "-n", namespace) == "yes", verb
        assert can(verb, "secrets", "-n", "default") == "no", verb
    assert can("create", "poddisruptionbudgets.policy", "-n", namespace) == "yes"
    assert can("delete", "deployments.apps", "-n", namespace) == "no"
    assert not kube.find("clusterrole", f"{release}-courier-operator")
    assert kube.find("role", f"{release}-courier-operator", "-n", namespace)
