"""render(): placement and disruption of the pods (pod template knobs, default requests and spread, startup
probes, PodDisruptionBudgets), autoscalers, NetworkPolicies and the gateway's Ingress."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest
import yaml
from im_operator.kube import FIELD_MANAGER
from im_operator.render import CONNECTIONS_METRIC, REPLICAS_HANDOVER_MANAGER, render, replicas_handover

from tests.unit.operator.test_render import REPO, SCHEMA, by_name, sample

COURIER = ("gateway", "identity", "conversation", "message", "presence", "file", "delivery")
BACKENDS = ("redis", "kafka", "database", "minio")


def pods(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod templates by component, of every Deployment and StatefulSet."""
    return {
        c["metadata"]["labels"]["app.kubernetes.io/component"]: c["spec"]["template"]
        for c in children
        if c["kind"] in ("Deployment", "StatefulSet")
    }


def valid(manifest: dict[str, Any]) -> dict[str, Any]:
    jsonschema.Draft4Validator(SCHEMA).validate(manifest)
    return manifest


def refused(manifest: dict[str, Any]) -> str:
    with pytest.raises(jsonschema.ValidationError) as error:
        jsonschema.Draft4Validator(SCHEMA).validate(manifest)
    return str(error.value.message)


def test_no_pod_is_best_effort_and_given_resources_are_kept_as_they_are() -> None:
    spec = sample()
    spec["spec"]["services"]["file"]["resources"] = {"limits": {"cpu": "1", "memory": "1Gi"}}
    spec["spec"]["redis"]["managed"]["resources"] = {"requests": {"memory": "2Gi"}}
    templates = pods(render(spec, default_image="courier:1"))

    assert set(templates) == {*COURIER, *BACKENDS}
    for component, template in templates.items():
        for container in template["spec"]["containers"] + template["spec"].get("initContainers", []):
            resources = container["resources"]
            assert resources.get("requests") or resources.get("limits"), (component, container["name"])
    assert templates["identity"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "25m", "memory": "128Mi"}
    }
    # The sample's own delivery resources win; limits alone become requests on the API server (Guaranteed).
    assert templates["delivery"]["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert templates["file"]["spec"]["containers"][0]["resources"] == {"limits": {"cpu": "1", "memory": "1Gi"}}
    assert templates["redis"]["spec"]["containers"][0]["resources"] == {"requests": {"memory": "2Gi"}}
    assert templates["kafka"]["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "100m", "memory": "1Gi"}}


def test_gateway_and_delivery_spread_over_nodes_by_default_and_the_spec_can_replace_or_drop_it() -> None:
    templates = pods(render(sample(), default_image="courier:1"))
    for component in ("gateway", "delivery"):
        assert templates[component]["spec"]["topologySpreadConstraints"] == [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {
                    "matchLabels": {"im.courier.dev/cluster": "chat", "app.kubernetes.io/component": component}
                },
            }
        ]
    assert "topologySpreadConstraints" not in templates["identity"]["spec"]

    zones = [{"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}]
    spec = sample()
    spec["spec"]["gateway"]["pod"] = {"topologySpreadConstraints": zones}
    spec["spec"]["delivery"]["pod"] = {"topologySpreadConstraints": []}
    templates = pods(render(valid(spec), default_image="courier:1"))
    assert templates["gateway"]["spec"]["topologySpreadConstraints"] == zones
    assert "topologySpreadConstraints" not in templates["delivery"]["spec"]


def test_the_pod_template_places_every_component_and_keeps_the_operators_labels() -> None:
    pod = {
        "labels": {"team": "chat", "tier": "edge"},
        "annotations": {"prometheus.io/scrape": "true", "im.courier.dev/config-hash": "mine"},
        "nodeSelector": {"pool": "courier"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "courier", "effect": "NoSchedule"}],
        "affinity": {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"tier": "edge"}}}
                ]
            }
        },
        "priorityClassName": "courier-critical",
    }
    spec = sample()
    spec["spec"]["gateway"]["pod"] = copy.deepcopy(pod)
    spec["spec"]["services"]["message"]["pod"] = {"priorityClassName": "courier-normal"}
    spec["spec"]["database"]["managed"]["pod"] = {"nodeSelector": {"disk": "ssd"}}
    children = render(valid(spec), default_image="courier:1")
    templates = pods(children)

    gateway = templates["gateway"]
    assert gateway["metadata"]["labels"]["team"] == "chat"
    assert gateway["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
    assert gateway["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert gateway["metadata"]["annotations"]["im.courier.dev/config-hash"] != "mine"  # the operator's hash wins
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert gateway["spec"][key] == pod[key]
    assert templates["message"]["spec"]["priorityClassName"] == "courier-normal"
    assert "priorityClassName" not in templates["identity"]["spec"]
    assert templates["database"]["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert "nodeSelector" not in templates["redis"]["spec"]
    # Selectors never change with the template (they are immutable on a live Deployment).
    assert by_name(children)["Deployment/chat-gateway"]["spec"]["selector"]["matchLabels"] == {
        "im.courier.dev/cluster": "chat",
        "app.kubernetes.io/component": "gateway",
    }


def test_the_crd_schema_refuses_malformed_placement() -> None:
    # (Its CEL rules, reserved labels and a valued Exists toleration, are the API server's: tests/k8s checks them.)
    for pod, message in (
        ({"tolerations": [{"key": "a", "effect": "Sometimes"}]}, "'Sometimes' is not one of"),
        ({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone"}]}, "'whenUnsatisfiable' is a required"),
        ({"nodeSelector": {"pool": 3}}, "3 is not of type 'string'"),
        ({"priorityClassName": ""}, "should be non-empty"),
    ):
        spec = sample()
        spec["spec"]["gateway"]["pod"] = pod
        assert message in refused(spec), pod


def test_every_courier_container_and_backend_has_a_startup_probe_and_liveness_waits_for_it() -> None:
    templates = pods(render(sample(), default_image="courier:1"))
    for component, template in templates.items():
        [container] = template["spec"]["containers"]
        assert container["startupProbe"], component
        assert "initialDelaySeconds" not in container["livenessProbe"], component
        for init in template["spec"].get("initContainers", []):
            assert "startupProbe" not in init  # init containers run to completion: no probes
    gateway = templates["gateway"]["spec"]["containers"][0]["startupProbe"]
    assert gateway["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["periodSeconds"] * gateway["failureThreshold"] == 120
    database = templates["database"]["spec"]["containers"][0]["startupProbe"]
    assert database["periodSeconds"] * database["failureThreshold"] == 300


def test_disruption_budgets_cover_exactly_the_components_with_more_than_one_pod() -> None:
    spec = sample()
    spec["spec"]["services"]["identity"]["replicas"] = 3
    spec["spec"]["services"]["message"]["replicas"] = 1
    children = by_name(render(spec, default_image="courier:1"))

    budgets = {name: c for name, c in children.items() if name.startswith("PodDisruptionBudget/")}
    assert sorted(budgets) == [f"PodDisruptionBudget/chat-{c}" for c in ("delivery", "gateway", "identity")]
    identity = budgets["PodDisruptionBudget/chat-identity"]["spec"]
    assert identity == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"im.courier.dev/cluster": "chat", "app.kubernetes.io/component": "identity"}},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    # No backend runs more than one pod: none gets a budget (one would block every node drain).
    assert not any(name.endswith(tuple(f"-{b}" for b in BACKENDS)) for name in budgets)


def test_delivery_autoscales_the_imcluster_on_connections_and_scales_down_slowly() -> None:
    spec = sample()
    spec["spec"]["delivery"]["autoscaling"] = {"minReplicas": 3, "maxReplicas": 20, "connectionsPerPod": 8000}
    children = by_name(render(valid(spec), default_image="courier:1"))

    hpa = children["HorizontalPodAutoscaler/chat-delivery"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "im.courier.dev/v1alpha1",
        "kind": "IMCluster",
        "name": "chat",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "courier_ws_connections"},
                "target": {"type": "AverageValue", "averageValue": "8000"},
            },
        }
    ]
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == 600
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    # The StatefulSet keeps the replicas of spec.delivery.replicas, which the autoscaler writes through the scale
    # subresource: the operator is their one writer.
    assert children["StatefulSet/chat-delivery"]["spec"]["replicas"] == 2


def test_the_adapter_rule_the_readme_shows_is_the_one_the_e2e_tier_runs() -> None:
    """operator/README.md gives the prometheus-adapter rule that serves the delivery autoscaler's metric; the kind
    cluster's metrics pipeline (infra/images/metrics/adapter.yaml), where the autoscaler is tested, runs that rule."""
    readme = (REPO / "operator" / "README.md").read_text()
    section = readme[readme.index("## Autoscaling") :]
    shown = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    shipped = yaml.safe_load((REPO / "infra" / "images" / "metrics" / "adapter.yaml").read_text())
    assert shown == shipped
    assert [rule["name"]["matches"] for rule in shipped["rules"]] == [f"^{CONNECTIONS_METRIC}$"]


def test_gateway_autoscales_on_cpu_and_then_owns_the_deployments_replicas() -> None:
    spec = sample()
    spec["spec"]["gateway"]["autoscaling"] = {"maxReplicas": 8}
    children = by_name(render(valid(spec), default_image="courier:1"))

    hpa = children["HorizontalPodAutoscaler/chat-gateway"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat-gateway"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 8)
    assert hpa["metrics"][0]["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 70},
    }
    assert "replicas" not in children["Deployment/chat-gateway"]["spec"]
    assert children["Deployment/chat-identity"]["spec"]["replicas"] == 1
    assert "PodDisruptionBudget/chat-gateway" in children  # minReplicas 2


def test_replicas_pass_to_an_autoscaler_without_a_drop_to_one_pod() -> None:
    spec = sample()
    spec["spec"]["gateway"]["autoscaling"] = {"maxReplicas": 8}
    deployment = by_name(render(spec, default_image="courier:1"))["Deployment/chat-gateway"]
    owned_by = [
        {"manager": FIELD_MANAGER, "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}}}
    ]
    live = {"spec": {"replicas": 4}, "metadata": {"managedFields": owned_by}}

    handover = replicas_handover(deployment, live)
    assert handover == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "chat-gateway", "namespace": "team-a"},
        "spec": {"replicas": 4},
    }
    assert REPLICAS_HANDOVER_MANAGER != FIELD_MANAGER
    # Once the autoscaler (or the handover) owns the field, or while the operator still renders it: nothing to do.
    taken = {"spec": {"replicas": 4}, "metadata": {"managedFields": [{**owned_by[0], "fieldsV1": {"f:spec": {}}}]}}
    assert replicas_handover(deployment, taken) is None
    assert replicas_handover(deployment, None) is None
    still_rendered = by_name(render(sample(), default_image="courier:1"))["Deployment/chat-gateway"]
    assert replicas_handover(still_rendered, live) is None


def test_network_policies_let_only_the_gateway_take_outside_traffic_and_backends_only_courier() -> None:
    spec = sample()
    assert not [n for n in by_name(render(spec, default_image="courier:1")) if n.startswith("NetworkPolicy/")]
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    spec["spec"]["networkPolicy"] = {"enabled": True, "metricsFrom": [prometheus]}
    children = by_name(render(valid(spec), default_image="courier:1"))

    policies = {n.split("/")[1]: c["spec"] for n, c in children.items() if n.startswith("NetworkPolicy/")}
    assert sorted(policies) == ["chat-backends", "chat-gateway", "chat-internal"]
    http = [{"protocol": "TCP", "port": 8080}]

    def selected(policy: dict[str, Any]) -> list[str]:
        assert policy["podSelector"]["matchLabels"] == {"im.courier.dev/cluster": "chat"}
        [expression] = policy["podSelector"]["matchExpressions"]
        assert (expression["key"], expression["operator"]) == ("app.kubernetes.io/component", "In")
        return sorted(expression["values"])

    courier_pods = {
        "podSelector": {
            "matchLabels": {"im.courier.dev/cluster": "chat"},
            "matchExpressions": [{"key": "app.kubernetes.io/component", "operator": "In", "values": list(COURIER)}],
        }
    }
    assert selected(policies["chat-gateway"]) == ["gateway"]
    assert policies["chat-gateway"]["ingress"] == [{"ports": http}, {"from": [prometheus], "ports": http}]
    assert selected(policies["chat-internal"]) == sorted(set(COURIER) - {"gateway"})
    assert policies["chat-internal"]["ingress"] == [
        {"from": [courier_pods], "ports": http},
        {"from": [prometheus], "ports": http},
    ]
    assert selected(policies["chat-backends"]) == sorted(BACKENDS)
    assert policies["chat-backends"]["ingress"] == [{"from": [courier_pods]}]
    assert all(p["policyTypes"] == ["Ingress"] for p in policies.values())

    # External backends get no policy of ours; the gateway can be limited to an ingress controller.
    controller = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    spec["spec"]["redis"] = {"external": {"url": "redis://redis.example:6379/0"}}
    spec["spec"]["kafka"] = {"external": {"bootstrap": "kafka.example:9092"}}
    spec["spec"]["database"] = {"engine": "mysql", "external": {"url": "mysql+asyncmy://u:p@db.example/courier"}}
    spec["spec"]["networkPolicy"] = {"enabled": True, "gatewayFrom": [controller], "objectStoreFrom": [controller]}
    policies = {
        n.split("/")[1]: c["spec"]
        for n, c in by_name(render(spec, default_image="courier:1")).items()
        if "Network" in n
    }
    assert selected(policies["chat-backends"]) == ["minio"]
    assert policies["chat-backends"]["ingress"][1] == {
        "from": [controller],
        "ports": [{"protocol": "TCP", "port": 9000}],
    }
    assert policies["chat-gateway"]["ingress"] == [{"from": [controller], "ports": http}]


def test_the_gateway_ingress_routes_its_host_with_tls_from_cert_manager() -> None:
    spec = sample()
    spec["spec"]["gateway"]["service"]["port"] = 8000
    spec["spec"]["gateway"]["ingress"] = {
        "host": "chat.example.org",
        "className": "nginx",
        "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600"},
        "tls": {"secretName": "chat-tls", "clusterIssuer": "letsencrypt"},
    }
    ingress = by_name(render(valid(spec), default_image="courier:1"))["Ingress/chat-gateway"]

    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert ingress["metadata"]["annotations"] == {
        "cert-manager.io/cluster-issuer": "letsencrypt",
        "nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
    }
    assert ingress["spec"] == {
        "ingressClassName": "nginx",
        "rules": [
            {
                "host": "chat.example.org",
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": "chat-gateway", "port": {"number": 8000}}},
                        }
                    ]
                },
            }
        ],
        "tls": [{"hosts": ["chat.example.org"], "secretName": "chat-tls"}],
    }
    spec["spec"]["gateway"]["ingress"] = {"host": "Not A Host"}
    assert "does not match" in refused(spec)
    spec["spec"]["gateway"]["ingress"] = {"host": "chat.example.org", "tls": {"clusterIssuer": "x"}}
    assert "'secretName' is a required property" in refused(spec)
