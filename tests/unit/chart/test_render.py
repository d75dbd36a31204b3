"""What the chart renders: the operator Deployment, its RBAC, the optional parts and the `helm test` hook."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.unit.chart.conftest import CHART, MONITORING_APIS, REPO, Helm, by_kind, load_yaml, one
from tests.unit.dashboards.queries import SHIPPED_ALERTS

ALL_ENABLED = CHART / "ci" / "all-enabled-values.yaml"


def test_operator_runs_two_replicas_rolled_with_a_kopf_liveness_probe(helm: Helm) -> None:
    deployment = one(helm.template(), "Deployment", "-operator")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "im_operator"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    port = next(p for p in container["ports"] if p["name"] == probe["port"])
    assert port["containerPort"] == 8080


def test_operator_replicas_elect_a_leader_on_a_lease_they_alone_may_write(helm: Helm) -> None:
    docs = helm.template()
    env = {
        e["name"]: e.get("value")
        for e in one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["COURIER_OPERATOR_LEADER_ELECTION"] == "true"
    assert env["COURIER_OPERATOR_LEASE_NAME"] == "courier-operator"
    role = one(docs, "Role", "-operator-lease")
    assert {"resources": ["leases"], "resourceNames": ["courier-operator"], "verbs": ["get", "update"]}.items() <= (
        role["rules"][1].items()
    )
    assert one(docs, "RoleBinding", "-operator-lease")["roleRef"]["name"] == role["metadata"]["name"]


def test_several_operator_replicas_without_leader_election_are_refused(helm: Helm) -> None:
    error = helm.template_error("--set", "operator.leaderElection.enabled=false")
    assert "operator.replicas > 1 needs operator.leaderElection.enabled" in error
    single = helm.template("--set", "operator.leaderElection.enabled=false", "--set", "operator.replicas=1")
    assert one(single, "Deployment", "-operator")["spec"]["replicas"] == 1
    assert not by_kind(single, "Role")


def test_operator_image_comes_from_values_and_a_digest_wins_over_the_tag(helm: Helm) -> None:
    default = one(helm.template(), "Deployment", "-operator")
    assert default["spec"]["template"]["spec"]["containers"][0]["image"] == "courier:0.1.0"
    tagged = one(
        helm.template("--set", "image.repository=reg.example/courier", "--set", "image.tag=1.2.3"), "Deployment"
    )
    assert tagged["spec"]["template"]["spec"]["containers"][0]["image"] == "reg.example/courier:1.2.3"
    digest = "sha256:" + "ab" * 32
    pinned = one(helm.template("--set", f"image.digest={digest}", "--set", "image.tag=1.2.3"), "Deployment")
    assert pinned["spec"]["template"]["spec"]["containers"][0]["image"] == f"courier@{digest}"


def test_every_pod_runs_as_the_images_non_root_user_with_a_read_only_root(helm: Helm) -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile
    docs = helm.template("-f", str(ALL_ENABLED))
    pods = [d["spec"]["template"]["spec"] for d in by_kind(docs, "Deployment")] + [
        d["spec"] for d in by_kind(docs, "Pod")
    ]
    assert len(pods) == 2
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_cluster_role_grants_exactly_the_operators_rbac_rules(helm: Helm) -> None:
    docs = helm.template()
    role = one(docs, "ClusterRole")
    wanted = yaml.safe_load((REPO / "operator" / "im_operator" / "rbac.yaml").read_text())
    assert role["rules"] == wanted["rules"]
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    account = one(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "courier"}
    ]
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_rbac_and_service_account_can_be_left_to_the_installer(helm: Helm) -> None:
    docs = helm.template("--set", "rbac.create=false", "--set", "serviceAccount.create=false")
    assert not by_kind(docs, "ClusterRole")
    assert not by_kind(docs, "ClusterRoleBinding")
    assert not by_kind(docs, "ServiceAccount")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "default"


def test_watch_namespaces_become_operator_arguments(helm: Helm) -> None:
    everywhere = one(helm.template(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in everywhere
    some = one(helm.template("--set", "operator.watchNamespaces={a,b}"), "Deployment")
    args = some["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=a" in args
    assert "--namespace=b" in args
    assert "--all-namespaces" not in args


def test_optional_parts_are_off_by_default(helm: Helm) -> None:
    kinds = {d["kind"] for d in helm.template()}
    assert not kinds & {"IMCluster", "ServiceMonitor", "PrometheusRule"}


def test_imcluster_from_values_carries_the_given_spec_and_leaves_the_image_to_the_operator(helm: Helm) -> None:
    docs = helm.template("-f", str(ALL_ENABLED))
    imc = one(docs, "IMCluster")
    given = yaml.safe_load(ALL_ENABLED.read_text())["imcluster"]
    assert imc["metadata"]["name"] == "chat"
    assert imc["metadata"]["namespace"] == "courier"
    assert imc["metadata"]["labels"]["example.com/team"] == "messaging"
    assert imc["spec"] == given["spec"]
    bare = one(helm.template("--set", "imcluster.enabled=true", "--set", "image.tag=9.9.9"), "IMCluster")
    assert "image" not in bare["spec"]
    # ... because the operator defaults spec.image to the image it runs with, which is the chart's.
    env = one(helm.template("--set", "image.tag=9.9.9"), "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "env"
    ]
    assert {"name": "COURIER_OPERATOR_DEFAULT_IMAGE", "value": "courier:9.9.9"} in env


def test_the_crd_ships_in_the_charts_crds_directory_and_matches_the_imcluster_api(helm: Helm) -> None:
    crd = load_yaml(CHART / "crds" / "imcluster.yaml")[0]
    assert crd["metadata"]["name"] == "imclusters.im.courier.dev"
    assert crd["spec"]["names"]["shortNames"] == ["imc"]
    imc = one(helm.template("--set", "imcluster.enabled=true"), "IMCluster")
    served = [v["name"] for v in crd["spec"]["versions"] if v["served"]]
    assert imc["apiVersion"] == f"{crd['spec']['group']}/{served[-1]}"


def test_dashboards_become_configmaps_labelled_for_grafana(helm: Helm, chart_copy: Path) -> None:
    dashboard = {"title": "Courier test", "templating": {"list": [{"name": "datasource", "type": "datasource"}]}}
    (chart_copy / "dashboards").mkdir(exist_ok=True)
    (chart_copy / "dashboards" / "courier_test.json").write_text(json.dumps(dashboard, indent=2))
    docs = helm.template("--set", "dashboards.namespace=monitoring", chart=chart_copy)
    config = one(docs, "ConfigMap", "-dashboard-courier-test")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config["metadata"]["namespace"] == "monitoring"
    assert json.loads(config["data"]["courier_test.json"]) == dashboard
    off = helm.template("--set", "dashboards.enabled=false", chart=chart_copy)
    assert not [d for d in off if "-dashboard-" in d["metadata"]["name"]]


def test_every_shipped_dashboard_is_rendered_byte_for_byte_for_grafanas_sidecar(helm: Helm) -> None:
    shipped = {p.name: p.read_text() for p in sorted((CHART / "dashboards").glob("*.json"))}
    assert len(shipped) == 4
    configs = [d for d in by_kind(helm.template(), "ConfigMap") if "-dashboard-" in d["metadata"]["name"]]
    rendered = {key: text for d in configs for key, text in d["data"].items()}
    assert sorted(rendered) == sorted(shipped)
    for name, text in shipped.items():
        assert rendered[name] == text.rstrip("\n"), f"{name} changed on its way into the ConfigMap"
    for config in configs:
        assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config["metadata"]["namespace"] == "courier"


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, got {[d['metadata']['name'] for d in by_kind(docs, kind)]}"
    return found[0]


def test_service_monitor_scrapes_the_courier_services_metrics(helm: Helm) -> None:
    monitor = named(helm.template("-f", str(ALL_ENABLED), *MONITORING_APIS), "ServiceMonitor", "courier")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [
        {
            "port": "http",
            "path": "/metrics",
            "interval": "30s",
            "scrapeTimeout": "10s",
            # The series' own `service` label wins over the target's, and each series names its IMCluster.
            "honorLabels": True,
            "relabelings": [
                {
                    "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_instance"],
                    "targetLabel": "imcluster",
                }
            ],
        }
    ]
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert monitor["spec"]["selector"]["matchLabels"]


def test_operator_serves_metrics_on_its_port_and_a_service_monitor_scrapes_it(helm: Helm) -> None:
    docs = helm.template(
        "-f", str(ALL_ENABLED), "--set", "operator.metricsPort=9191", *MONITORING_APIS, namespace="ops"
    )
    container = one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "COURIER_OPERATOR_METRICS_PORT", "value": "9191"} in container["env"]
    assert {"name": "metrics", "containerPort": 9191, "protocol": "TCP"} in container["ports"]
    service = named(docs, "Service", "courier-operator-metrics")
    pod_labels = one(docs, "Deployment", "-operator")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9191, "targetPort": "metrics", "protocol": "TCP"}]
    monitor = named(docs, "ServiceMonitor", "courier-operator")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # The Service lives in the release's namespace wherever the ServiceMonitor itself is put.
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s", "honorLabels": True}
    ]
    # The Courier services' monitor must not select the operator's Service (it is not managed by the operator).
    courier = named(docs, "ServiceMonitor", "courier")["spec"]["selector"]["matchLabels"]
    assert not courier.items() <= service["metadata"]["labels"].items()
    default = one(helm.template(), "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "COURIER_OPERATOR_METRICS_PORT", "value": "9090"} in default["env"]


def alerts(rule: dict[str, Any]) -> list[str]:
    return [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]


def test_prometheus_rule_carries_couriers_alerts_and_the_given_groups(helm: Helm) -> None:
    rule = one(helm.template("-f", str(ALL_ENABLED), *MONITORING_APIS), "PrometheusRule")
    shipped = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())["groups"]
    assert [g["name"] for g in rule["spec"]["groups"]] == [g["name"] for g in shipped] + ["courier-availability"]
    assert alerts(rule) == [*SHIPPED_ALERTS, "CourierTargetDown"]
    # Prometheus's own templates ({{ $labels.x }}) reach the object untouched: Helm must not have rendered them.
    described = [r["annotations"]["description"] for g in rule["spec"]["groups"][:-1] for r in g["rules"]]
    assert all("{{ $labels." in text for text in described)


def test_runbook_links_point_into_the_operations_guide_under_the_given_base_url(helm: Helm) -> None:
    def links(*args: str) -> list[str]:
        rule = one(
            helm.template("--set", "metrics.prometheusRule.enabled=true", *MONITORING_APIS, *args), "PrometheusRule"
        )
        return [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]]

    assert links() == [f"docs/operations.md#{name.lower()}" for name in SHIPPED_ALERTS]
    based = links("--set", "metrics.prometheusRule.runbookBaseUrl=https://git.example.com/courier/blob/main/")
    assert based == [
        f"https://git.example.com/courier/blob/main/docs/operations.md#{a.lower()}" for a in SHIPPED_ALERTS
    ]


def test_courier_alerts_can_be_left_out(helm: Helm) -> None:
    rule = one(
        helm.template("-f", str(ALL_ENABLED), "--set", "metrics.prometheusRule.courierRules=false", *MONITORING_APIS),
        "PrometheusRule",
    )
    assert alerts(rule) == ["CourierTargetDown"]


def test_prometheus_rule_without_any_rule_is_refused_with_a_clear_message(helm: Helm) -> None:
    error = helm.template_error(
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.prometheusRule.courierRules=false",
        *MONITORING_APIS,
    )
    assert "metrics.prometheusRule.enabled is true but there are no rules" in error


def test_helm_test_hook_runs_the_smoke_script_against_the_gateway(helm: Helm) -> None:
    docs = helm.template("--set", "imcluster.name=talk")
    pod = one(docs, "Pod", "-smoke")
    script = one(docs, "ConfigMap", "-smoke")
    for obj in (pod, script):
        assert obj["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert (
        script["metadata"]["annotations"]["helm.sh/hook-weight"] < pod["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    assert script["data"]["smoke.py"] == (CHART / "files" / "smoke.py").read_text().rstrip("\n")
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "/etc/courier-smoke/smoke.py"]
    assert container["image"] == "courier:0.1.0"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["COURIER_SMOKE_URL"] == "http://talk-gateway.courier.svc:80"
    on_port = one(helm.template("--set", "imcluster.spec.gateway.service.port=8443"), "Pod")
    assert {e["name"]: e["value"] for e in on_port["spec"]["containers"][0]["env"]}["COURIER_SMOKE_URL"].endswith(
        ":8443"
    )
    assert pod["spec"]["restartPolicy"] == "Never"
    given = one(helm.template("--set", "tests.gatewayUrl=http://gw:80"), "Pod")
    assert {e["name"]: e["value"] for e in given["spec"]["containers"][0]["env"]}["COURIER_SMOKE_URL"] == "http://gw:80"
    assert not by_kind(helm.template("--set", "tests.enabled=false"), "Pod")


def test_notes_tell_how_to_create_scale_and_test_a_cluster(helm: Helm) -> None:
    # helm template never prints NOTES.txt; a client-side dry-run install renders it without a cluster.
    out = helm.run("install", "courier", str(CHART), "-n", "chat-ns", "--dry-run=client")
    text = out.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n chat-ns apply -f crds/examples/imcluster.yaml" in text
    assert "kubectl -n chat-ns scale imc/chat --replicas=5" in text
    assert "helm test courier -n chat-ns" in text


@pytest.mark.parametrize("name", ["courier", "my-courier", "prod"])
def test_names_stay_valid_for_any_release_name(helm: Helm, name: str) -> None:
    for doc in helm.template(release=name):
        assert len(doc["metadata"]["name"]) <= 63
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == name


def test_operator_command_lines_are_ones_the_operator_accepts(helm: Helm) -> None:
    variants = [
        [],
        ["--set", "operator.watchNamespaces={a,b}", "--set", "operator.logLevel=warning"],
        ["-f", str(ALL_ENABLED)],
    ]
    arg_lists = [
        one(helm.template(*values), "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        for values in variants
    ]
    # The operator's own argument parser (as in the image, where operator/ is on PYTHONPATH) must take each list.
    # One process for all: importing the operator (kopf, the kubernetes client) is slow.
    probe = (
        "import json, sys; sys.path.insert(0, 'operator'); from im_operator.main import parse_args; "
        "print(json.dumps([vars(parse_args(args)) for args in json.loads(sys.argv[1])]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(arg_lists)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    defaults, some, everything = json.loads(proc.stdout)
    for parsed in (defaults, some, everything):
        assert parsed["liveness"] == "http://0.0.0.0:8080/healthz"
    assert defaults["all_namespaces"] is True
    assert defaults["namespace"] == []
    assert (some["namespace"], some["all_namespaces"], some["quiet"]) == (["a", "b"], False, True)
    assert (everything["namespace"], everything["debug"]) == (["courier", "chat"], True)


def test_service_monitor_selects_exactly_the_services_the_operator_renders_with_metrics(helm: Helm) -> None:
    monitor = named(helm.template("-f", str(ALL_ENABLED), *MONITORING_APIS), "ServiceMonitor", "courier")
    # The operator's own renderer, on the sample IMCluster: which Services it makes, labelled how, on which ports.
    probe = (
        "import json, sys, yaml; sys.path.insert(0, 'operator'); from im_operator.render import render; "
        "imc = yaml.safe_load(open('crds/examples/imcluster.yaml')); "
        "imc['metadata'].update(namespace='courier', uid='00000000-0000-0000-0000-000000000001', generation=1); "
        "print(json.dumps([m for m in render(imc, default_image='courier:0.1.0') if m['kind'] == 'Service']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)
    selector = monitor["spec"]["selector"]

    def selected(labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in selector["matchLabels"].items()):
            return False
        return all(labels.get(e["key"]) in e["values"] for e in selector["matchExpressions"])

    chosen = sorted(s["metadata"]["name"] for s in services if selected(s["metadata"]["labels"]))
    services_ = ["conversation", "delivery", "file", "gateway", "identity", "message", "presence"]
    assert chosen == [f"chat-{name}" for name in services_]
    port = monitor["spec"]["endpoints"][0]["port"]
    for service in services:
        if service["metadata"]["name"] in chosen:
            assert port in [p["name"] for p in service["spec"]["ports"]], service["metadata"]["name"]


def test_watched_namespaces_get_roles_and_no_cluster_wide_grant(helm: Helm) -> None:
    docs = helm.template("--set", "operator.watchNamespaces={team-a,team-b}")
    assert not by_kind(docs, "ClusterRole")
    assert not by_kind(docs, "ClusterRoleBinding")
    wanted = yaml.safe_load((REPO / "operator" / "im_operator" / "rbac.yaml").read_text())["rules"]
    # The release namespace's Role is the operator's Lease (leader election), granted there by design.
    lease = "courier-operator-lease"
    roles = {r["metadata"]["namespace"]: r for r in by_kind(docs, "Role") if r["metadata"]["name"] != lease}
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"] != lease}
    assert sorted(roles) == sorted(bindings) == ["team-a", "team-b"]
    account = one(docs, "ServiceAccount")["metadata"]["name"]
    for namespace, role in roles.items():
        assert role["rules"] == wanted
        assert bindings[namespace]["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert bindings[namespace]["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "courier"}]
