"""The gateway's Gateway API HTTPRoute on the real control plane, before and after the Gateway API is installed.

First the API server serves no HTTPRoutes (the Gateway API CRDs are removed if an earlier run left them): an
IMCluster asking for a route still comes up Ready, and says in Degraded (reason APINotServed) and a Warning Event
why it has no route. Then the Gateway API's standard-channel CRDs are installed (from the Go module
sigs.k8s.io/gateway-api, cached): the operator's next pass applies the route, which the API server validates against
the real HTTPRoute schema, and Degraded clears. Removing the setting prunes the route. The CRDs are removed again at
the end, so other modules on the shared control plane see it as they found it.

The operator runs as the chart's ServiceAccount under the chart's RBAC (watchNamespaces mode: a Role)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.k8s.conftest import GATEWAY_API_KINDS, Cluster, CommandFailed, gateway_api_crds, wait_until
from tests.k8s.test_operator import (  # noqa: F401 - module-scoped fixtures of the operator tests, reused here
    Operator,
    condition,
    namespace,
    operator,
    operator_kubeconfig,
    release,
    sample,
    storage_class,
    wait_ready,
)

NAME = "routed"
ROUTE = {
    "parentRefs": [{"name": "public", "namespace": "infra", "sectionName": "https"}],
    "hostnames": ["chat.example.org"],
    "path": "/",
}
GATEWAY_API_CRD_NAMES = [f"{kind}.gateway.networking.k8s.io" for kind in GATEWAY_API_KINDS]


def serves_http_routes(kube: Cluster, where: str) -> bool:
    """Whether the API server answers the collection the operator lists (404 while the CRD is not installed)."""
    try:
        kube.kubectl("get", "--raw", f"/apis/gateway.networking.k8s.io/v1/namespaces/{where}/httproutes")
    except CommandFailed as refused:
        if "NotFound" in refused.output or "could not find" in refused.output:
            return False
        raise
    return True


def remove_gateway_api(kube: Cluster, where: str) -> None:
    """Delete the Gateway API CRDs and wait until they are gone and no HTTPRoute is served.

    Deleting CRDs of one API group rebuilds that group's handlers, and the API server's CRD finalizer may then find a
    sibling's storage "(re)initializing": it marks the CRD Terminating (InstanceDeletionFailed) and retries with an
    exponential back-off, which on a loaded machine has outlasted two minutes. A CRD reporting that is annotated, an
    update that has the finalizer try again at once."""
    kube.kubectl("delete", "crd", *GATEWAY_API_CRD_NAMES, "--ignore-not-found", "--wait=false")

    def deleted() -> tuple[bool, Any]:
        terminating = {}
        for name in GATEWAY_API_CRD_NAMES:
            crd = kube.find("crd", name)
            if crd is None:
                continue
            terminating[name] = condition(crd, "Terminating")
            if terminating[name].get("reason") == "InstanceDeletionFailed":
                again = f"courier.test/finalize-again={time.time_ns()}"
                try:
                    kube.kubectl("annotate", "--overwrite", "crd", name, again)
                except CommandFailed as refused:
                    if "NotFound" not in refused.output:  # else deleted since it was read
                        raise
        return not terminating, terminating

    wait_until("the Gateway API CRDs to be deleted", deleted)
    wait_until("the API server to stop serving HTTPRoutes", lambda: (not serves_http_routes(kube, where), None))


def degraded(kube: Cluster, name: str, where: str) -> dict[str, Any]:
    imc = kube.get("imcluster", name, "-n", where)
    found = condition(imc, "Degraded")
    found["current"] = found.get("observedGeneration") == imc["metadata"]["generation"]
    return found


def wait_degraded(kube: Cluster, name: str, where: str, status: str, reason: str) -> None:
    """Until the Degraded condition has this status and reason for the IMCluster's current generation."""

    def probe() -> tuple[bool, Any]:
        found = degraded(kube, name, where)
        return (found.get("status"), found.get("reason"), found["current"]) == (status, reason, True), found

    wait_until(f"Degraded={status} ({reason})", probe)


def http_route(kube: Cluster, where: str) -> dict[str, Any] | None:
    return kube.find("httproutes.gateway.networking.k8s.io", f"{NAME}-gateway", "-n", where)


@pytest.fixture(scope="module")
def routed(
    kube: Cluster,
    namespace: str,  # noqa: F811
    storage_class: str,  # noqa: F811
    operator: Operator,  # noqa: F811
) -> str:
    """The sample asking for an HTTPRoute, applied while the API server serves none; Ready and Degraded."""
    remove_gateway_api(kube, namespace)
    manifest = sample(namespace, storage_class, name=NAME)
    manifest["spec"]["gateway"]["httpRoute"] = ROUTE
    kube.apply(manifest)
    wait_ready(kube, namespace, NAME, operator)
    wait_degraded(kube, NAME, namespace, "True", "APINotServed")
    return NAME


@pytest.fixture(scope="module")
def gateway_api(kube: Cluster, namespace: str, routed: str) -> Iterator[None]:  # noqa: F811
    """The Gateway API CRDs, installed after ``routed`` saw the API server without them; removed at the end."""
    for crd in gateway_api_crds():
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    for name in GATEWAY_API_CRD_NAMES:
        kube.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    wait_until("the API server to serve HTTPRoutes", lambda: (serves_http_routes(kube, namespace), None))
    yield
    remove_gateway_api(kube, namespace)


def test_without_the_gateway_api_the_cluster_serves_and_degraded_says_why_it_has_no_route(
    kube: Cluster,
    namespace: str,  # noqa: F811
    routed: str,
) -> None:
    found = degraded(kube, routed, namespace)
    assert (
        "spec.gateway.httpRoute: the API server does not serve gateway.networking.k8s.io/v1 HTTPRoute"
        in (found["message"])
    )
    assert condition(kube.get("imcluster", routed, "-n", namespace), "Ready")["status"] == "True"
    assert not serves_http_routes(kube, namespace)
    events = kube.get("events", "-n", namespace, "--field-selector", f"involvedObject.name={routed}")["items"]
    warnings = [e for e in events if e["type"] == "Warning" and e["reason"] == "APINotServed"]
    assert warnings, [(e["type"], e["reason"]) for e in events]
    assert kube.find("service", f"{routed}-gateway", "-n", namespace)


def test_once_the_gateway_api_is_installed_the_api_server_takes_the_route_to_the_gateway_service(
    kube: Cluster,
    namespace: str,  # noqa: F811
    routed: str,
    gateway_api: None,
    operator: Operator,  # noqa: F811
) -> None:
    took = wait_until("the operator to apply the HTTPRoute", lambda: (http_route(kube, namespace) is not None, None))
    print(f"\nHTTPRoute applied {took:.1f}s after the Gateway API CRDs were Established")
    route = http_route(kube, namespace)
    assert route is not None
    imc = kube.get("imcluster", routed, "-n", namespace)
    assert [(o["kind"], o["name"], o["uid"]) for o in route["metadata"]["ownerReferences"]] == [
        ("IMCluster", routed, imc["metadata"]["uid"])
    ]
    spec = route["spec"]
    # As stored: the API server's defaults filled in, so the real HTTPRoute schema accepted what the operator sent.
    assert spec["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "public",
            "namespace": "infra",
            "sectionName": "https",
        }
    ]
    assert spec["hostnames"] == ["chat.example.org"]
    [rule] = spec["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    backend = {"group": "", "kind": "Service", "name": f"{routed}-gateway", "port": 80, "weight": 1}
    assert rule["backendRefs"] == [backend]
    service = kube.get("service", f"{routed}-gateway", "-n", namespace)
    assert service["spec"]["ports"][0]["port"] == 80
    wait_degraded(kube, routed, namespace, "False", "AsExpected")
    wait_ready(kube, namespace, routed, operator)


def test_removing_the_setting_prunes_the_route(
    kube: Cluster,
    namespace: str,  # noqa: F811
    routed: str,
    gateway_api: None,
    operator: Operator,  # noqa: F811
) -> None:
    wait_until("the HTTPRoute to exist", lambda: (http_route(kube, namespace) is not None, None))
    patch = {"spec": {"gateway": {"httpRoute": None}}}
    kube.kubectl("patch", "imc", routed, "-n", namespace, "--type=merge", "-p", json.dumps(patch))
    wait_until("the HTTPRoute to be pruned", lambda: (http_route(kube, namespace) is None, None))
    wait_ready(kube, namespace, routed, operator)
    wait_degraded(kube, routed, namespace, "False", "AsExpected")


def test_the_api_server_refuses_a_malformed_route(
    kube: Cluster,
    namespace: str,  # noqa: F811
    release: str,  # noqa: F811
) -> None:
    public = {"name": "public", "namespace": "infra"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"parentRefs": []}, "should have at least 1 items"),
        ({"parentRefs": [public, public]}, "each Gateway (and listener) at most once"),
        (
            {"parentRefs": [{**public, "sectionName": "https"}, public]},
            "name a sectionName on every reference to a Gateway referenced twice",
        ),
        ({"parentRefs": [public], "hostnames": ["Chat.example.org"]}, "spec.gateway.httpRoute.hostnames[0]"),
        ({"parentRefs": [public], "path": "/a//b"}, "no empty, . or .. segments and no encoded slash"),
        ({"parentRefs": [public], "path": "/a/%2Fb"}, "no empty, . or .. segments and no encoded slash"),
    ]
    for route, message in cases:
        manifest = sample(namespace, "unused", name="refused")
        manifest["spec"]["gateway"]["httpRoute"] = route
        with pytest.raises(CommandFailed) as refused:
            kube.apply(manifest)
        assert message in refused.value.output, (route, refused.value.output)
