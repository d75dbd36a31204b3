"""The operator's NetworkPolicies enforced on real pods: with spec.networkPolicy.enabled, a pod of the namespace that
is not one of Courier's can reach the gateway and nothing else, while Courier itself keeps serving.

The kind node's bridge CNI enforces no policy, so this module installs the enforcer of infra/images/netpol.py
(`courier-kind netpol`) for its tests and removes it after them. A probe pod without Courier's labels opens TCP
connections with the Courier image's Python, both to Services (the path kube-proxy routes) and straight to pod
addresses (the path the node's bridge switches between pods): a connection the enforcer refuses times out (its SYN
is dropped). The first test is the control: the same probes succeed while the IMCluster has no policies.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import KindCluster, added
from tests.e2e.test_operator_pods import ready, wait
from tests.e2e.test_protocol import connect
from tests.support.client import Api

PROBE = "netpol-probe"
CLUSTER_LABEL = "im.courier.dev/cluster"
COMPONENT_LABEL = "app.kubernetes.io/component"
POLICIES = ("gateway", "internal", "backends")
BACKENDS = ("redis", "database", "kafka")
INTERNAL = ("message", "identity")
# Services whose pods are replaced once the policies are in force: every new connection they open to a backend, and
# the gateway's to them, must then pass the policies.
RESTARTED = ("identity", "conversation", "message")
CONNECT_TIMEOUT_S = 5.0
# Run in the probe pod: one TCP connection to each host:port argument at once; prints {target: outcome} as JSON, the
# outcome "open", "timeout" (no answer to the SYN: dropped) or "error <reason>".
CONNECT = """
import concurrent.futures, json, socket, sys

def attempt(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=float(sys.argv[1])).close()
        return "open"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error {exc}"

targets = sys.argv[2:]
with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps(dict(zip(targets, pool.map(attempt, targets)))))
"""


@pytest.fixture(scope="module")
def enforced(kind_cluster: KindCluster) -> Iterator[KindCluster]:
    """The cluster with the NetworkPolicy enforcer judging every new connection of its pods."""
    with added("netpol", kind_cluster) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def probe(enforced: KindCluster) -> Iterator[KindCluster]:
    """A pod in Courier's namespace without any of Courier's labels, running the Courier image idle."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": PROBE, "labels": {"app.kubernetes.io/name": PROBE}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "probe",
                    "image": enforced.image,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "infinity"],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }
    enforced.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
    try:
        enforced.kubectl("wait", "--for=condition=Ready", f"pod/{PROBE}", "--timeout=300s", timeout=360)
        yield enforced
    finally:
        enforced.kubectl("delete", "pod", PROBE, "--ignore-not-found", "--wait=true", "--timeout=120s")


def policies(cluster: KindCluster) -> list[str]:
    found = cluster.get("networkpolicies", "-l", f"{CLUSTER_LABEL}={cluster.imcluster}")["items"]
    return sorted(p["metadata"]["name"] for p in found)


def set_policies(cluster: KindCluster, enabled: bool) -> None:
    """networkPolicy.enabled set, and waited for until the operator has applied (or pruned) the policies."""
    patch = {"spec": {"networkPolicy": {"enabled": enabled}}}
    cluster.kubectl("patch", "imc", cluster.imcluster, "--type=merge", "-p", json.dumps(patch))
    expected = sorted(f"{cluster.imcluster}-{name}" for name in POLICIES) if enabled else []
    wait(f"the NetworkPolicies to be {expected}", lambda: (policies(cluster) == expected, policies(cluster)))
    wait("the IMCluster to be Ready", lambda: ready(cluster))


@pytest.fixture(scope="module")
def network_policies(probe: KindCluster) -> Iterator[KindCluster]:
    """The IMCluster with networkPolicy.enabled (turned off again after the module: later tests reach MinIO's
    NodePort from this machine, which the backends' policy would refuse)."""
    set_policies(probe, True)
    try:
        yield probe
    finally:
        set_policies(probe, False)


def targets(cluster: KindCluster, components: tuple[str, ...]) -> dict[str, tuple[str, int]]:
    """For each component, its Service and one of its pods, with the port each serves on:
    {"redis service": ("chat-redis", 6379), "redis pod": ("10.244.0.12", 6379), ...}."""
    found: dict[str, tuple[str, int]] = {}
    for component in components:
        selector = f"{CLUSTER_LABEL}={cluster.imcluster},{COMPONENT_LABEL}={component}"
        service = cluster.get("service", f"{cluster.imcluster}-{component}")
        found[f"{component} service"] = (service["metadata"]["name"], int(service["spec"]["ports"][0]["port"]))
        pods = [p for p in cluster.get("pods", "-l", selector)["items"] if p["status"].get("podIP")]
        assert pods, f"no {component} pod with an address"
        port = pod_port(pods[0], service["spec"]["ports"][0])
        found[f"{component} pod"] = (pods[0]["status"]["podIP"], port)
    return found


def pod_port(pod: dict[str, Any], service_port: dict[str, Any]) -> int:
    """The container port a Service port targets (by number, or by the name of a container port)."""
    target = service_port.get("targetPort", service_port["port"])
    if isinstance(target, int):
        return target
    ports = [p for c in pod["spec"]["containers"] for p in c.get("ports") or [] if p.get("name") == target]
    assert ports, f"{pod['metadata']['name']} has no port named {target}"
    return int(ports[0]["containerPort"])


def reachable(cluster: KindCluster, found: dict[str, tuple[str, int]]) -> dict[str, str]:
    """What the probe pod gets when it connects to each target, all at once: {"redis pod": "timeout", ...}."""
    addresses = {name: f"{host}:{port}" for name, (host, port) in found.items()}
    argv = [cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "-n", cluster.namespace, "exec", PROBE, "--",
            "python", "-c", CONNECT, str(CONNECT_TIMEOUT_S), *addresses.values()]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        return dict.fromkeys(found, f"kubectl exec failed: {proc.stderr.strip()}")
    outcomes: dict[str, str] = json.loads(proc.stdout)
    return {name: outcomes[address] for name, address in addresses.items()}


def test_without_policies_a_pod_without_couriers_labels_reaches_backends_services_and_gateway(
    probe: KindCluster,
) -> None:
    """The control: the enforcer is there and judges every new connection, but no policy selects Courier's pods."""
    assert policies(probe) == []
    everything = targets(probe, (*BACKENDS, *INTERNAL, "gateway"))
    wait(
        "the probe pod to reach every backend, service and gateway",
        lambda: (set((seen := reachable(probe, everything)).values()) == {"open"}, seen),
    )


def test_with_policies_a_pod_without_couriers_labels_reaches_the_gateway_and_nothing_else(
    network_policies: KindCluster,
) -> None:
    cluster = network_policies
    refused = targets(cluster, (*BACKENDS, *INTERNAL))
    redis = {"redis service": refused["redis service"]}
    # The enforcer learns the policies from its watch: wait until it refuses one, then every one must be refused.
    wait("the enforcer to refuse the probe's connection to Redis", lambda: (
        (seen := reachable(cluster, redis)) == {"redis service": "timeout"}, seen))  # fmt: skip
    assert reachable(cluster, refused) == dict.fromkeys(refused, "timeout")
    gateway = targets(cluster, ("gateway",))
    assert reachable(cluster, gateway) == dict.fromkeys(gateway, "open")


async def test_with_policies_courier_serves_a_login_and_a_message_from_pods_started_under_them(
    network_policies: KindCluster, api: Api
) -> None:
    """Pods that start after the policies connect to the backends anew, the gateway connects to them anew, and a
    WebSocket is spliced to a delivery node: every one of those connections passes the policies."""
    cluster = network_policies
    selector = f"{CLUSTER_LABEL}={cluster.imcluster},{COMPONENT_LABEL} in ({','.join(RESTARTED)})"
    before = {p["metadata"]["uid"] for p in cluster.get("pods", "-l", selector)["items"]}
    cluster.kubectl("delete", "pods", "-l", selector, "--wait=true", "--timeout=300s", timeout=360)

    def replaced() -> tuple[bool, Any]:
        pods = cluster.get("pods", "-l", selector)["items"]
        fresh = [p for p in pods if p["metadata"]["uid"] not in before and not p["metadata"].get("deletionTimestamp")]
        up = [p for p in fresh if all(s["ready"] for s in p["status"].get("containerStatuses") or [{"ready": False}])]
        components = {p["metadata"]["labels"][COMPONENT_LABEL] for p in up}
        return components == set(RESTARTED) and len(up) == len(before), [p["metadata"]["name"] for p in up]

    wait(f"new ready pods of {', '.join(RESTARTED)}", replaced)
    wait("the IMCluster to be Ready", lambda: ready(cluster))

    alice, bob = await api.register("netpol"), await api.register("netpol")
    again = await api.login(alice.username, alice.password)
    cid = await api.direct(again, bob)
    receiver = await connect(cluster, bob)
    try:
        sent = await api.send(again, cid, "through the policies")
        assert sent.status_code == 201, sent.text
        await receiver.wait_until(lambda: 1 in receiver.messages(cid), timeout=60)
        assert receiver.messages(cid)[1]["content"]["text"] == "through the policies"
    finally:
        await receiver.close()
