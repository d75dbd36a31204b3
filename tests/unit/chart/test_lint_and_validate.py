"""`helm lint` is clean, and every object `helm template` renders validates strictly against Kubernetes 1.35's
schemas (kubernetes-validate) or, for custom resources, against their CRD's schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from tests.unit.chart.conftest import CHART, KUBE_VERSION, MONITORING_APIS, REPO, Helm, load_yaml

ALL_ENABLED = CHART / "ci" / "all-enabled-values.yaml"
IMCLUSTER_CRD = REPO / "crds" / "imcluster.yaml"
# Custom resources of prometheus-operator: their CRDs are not part of this repository, so there is no schema to
# check them against here. Their shape is asserted field by field in test_render.py instead.
NO_SCHEMA_HERE = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator's CRD is not vendored in this repository",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheus-operator's CRD is not vendored in this repository",
}


def crd_schema(crd: dict[str, Any], api_version: str) -> dict[str, Any]:
    """The openAPIV3Schema of the CRD version an object's apiVersion names."""
    group, _, version = api_version.partition("/")
    assert group == crd["spec"]["group"], f"{api_version} is not served by {crd['metadata']['name']}"
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            assert served["served"], f"{api_version} is not served"
            schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
            return schema
    raise AssertionError(f"{crd['metadata']['name']} has no version {version}")


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused, as the API server's strict field validation (kubectl's default)
    refuses them, except where the CRD keeps unknown fields on purpose."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    keeps_unknown = schema.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in schema
    if "properties" in schema and not keeps_unknown:
        out["additionalProperties"] = False
    return out


def validate_custom(obj: dict[str, Any], crd: dict[str, Any]) -> None:
    """Check a custom resource against its CRD's structural schema, unknown fields refused.

    A CRD schema is OpenAPI 3.0's JSON Schema dialect, draft 4's keywords (`exclusiveMinimum: true` qualifies
    `minimum`), so draft 4 reads it right. jsonschema ignores the x-kubernetes-* keys: the CEL rules are the API
    server's, exercised by tests/k8s.
    """
    schema = strict(crd_schema(crd, obj["apiVersion"]))
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    jsonschema.Draft4Validator(schema).validate(body)


def validate_all(docs: list[dict[str, Any]]) -> list[str]:
    """Validate every object; return the names of what was checked (so a test can tell nothing was missed)."""
    crd = load_yaml(IMCLUSTER_CRD)[0]
    checked = []
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if key in NO_SCHEMA_HERE:
            continue
        if doc["kind"] == crd["spec"]["names"]["kind"]:
            validate_custom(doc, crd)
        else:
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{name} is invalid for Kubernetes {KUBE_VERSION} at {path}: {exc.message}")
        checked.append(name)
    return checked


@pytest.mark.parametrize("values", [None, ALL_ENABLED], ids=["defaults", "all-enabled"])
def test_helm_lint_is_clean(helm: Helm, values: Path | None) -> None:
    args = ["lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION]
    if values:
        args += ["-f", str(values)]
    out = helm.run(*args).stdout
    assert "0 chart(s) failed" in out
    for level in ("[INFO]", "[WARNING]", "[ERROR]"):
        assert level not in out, out


def test_default_render_validates_strictly(helm: Helm) -> None:
    docs = helm.template()
    checked = validate_all(docs)
    assert sorted(checked) == sorted(
        [
            "ServiceAccount/courier",
            "ClusterRole/courier-operator",
            "ClusterRoleBinding/courier-operator",
            "Deployment/courier-operator",
            "Role/courier-operator-lease",
            "RoleBinding/courier-operator-lease",
            "Service/courier-operator-metrics",
            "ConfigMap/courier-smoke",
            "Pod/courier-smoke",
        ]
        + [f"ConfigMap/{d['metadata']['name']}" for d in docs if "dashboard" in d["metadata"]["name"]]
    )


def test_render_with_every_optional_part_validates_strictly(helm: Helm) -> None:
    docs = helm.template("-f", str(ALL_ENABLED), *MONITORING_APIS)
    checked = validate_all(docs)
    kinds = {d["kind"] for d in docs}
    assert {"IMCluster", "ServiceMonitor", "PrometheusRule", "Deployment", "Pod"} <= kinds
    assert "IMCluster/chat" in checked
    skipped = [f"{d['kind']}/{d['metadata']['name']}" for d in docs if (d["apiVersion"], d["kind"]) in NO_SCHEMA_HERE]
    assert sorted(skipped) == ["PrometheusRule/courier", "ServiceMonitor/courier", "ServiceMonitor/courier-operator"]


def test_crd_in_chart_validates_as_a_kubernetes_crd() -> None:
    docs = load_yaml(CHART / "crds" / "imcluster.yaml")
    assert [d["kind"] for d in docs] == ["CustomResourceDefinition"]
    kubernetes_validate.validate(docs[0], KUBE_VERSION, strict=True)


def test_sample_manifests_validate_against_the_crd_schema() -> None:
    crd = load_yaml(IMCLUSTER_CRD)[0]
    samples = sorted((REPO / "crds" / "examples").glob("*.yaml"))
    assert samples, "crds/examples/ holds no sample manifest"
    for sample in samples:
        for doc in load_yaml(sample):
            assert doc["kind"] == crd["spec"]["names"]["kind"], f"{sample.name}: unexpected {doc['kind']}"
            validate_custom(doc, crd)


def test_crd_schema_check_rejects_a_wrong_spec() -> None:
    """The jsonschema check above is not vacuous: a spec of the wrong type fails it."""
    crd = load_yaml(IMCLUSTER_CRD)[0]
    sample = load_yaml(REPO / "crds" / "examples" / "imcluster.yaml")[0]
    wrong_type = {**sample, "spec": {**sample["spec"], "image": 42}}
    unknown_field = {**sample, "spec": {**sample["spec"], "gateway": {"replicas": 2, "replica": 3}}}
    below_minimum = {**sample, "spec": {**sample["spec"], "config": {"ackTimeoutSeconds": 0}}}
    for bad in (wrong_type, unknown_field, below_minimum):
        with pytest.raises(jsonschema.ValidationError):
            validate_custom(bad, crd)
    validate_custom({**sample, "spec": {**sample["spec"], "config": {"ackTimeoutSeconds": 0.5}}}, crd)
