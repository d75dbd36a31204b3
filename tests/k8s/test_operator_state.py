"""Data safety, leader election, and what the status reports, with two real operator processes against the real
control plane (the chart's CRD, RBAC and ServiceAccount, as in test_operator.py).

The operators' drift pass is an hour here, so whatever reacts within the tests' deadlines does so because of a watch
(a Secret's change) or a retry, not because of the periodic pass.
"""

from __future__ import annotations

import base64
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.conftest import Cluster, CommandFailed, wait_until
from tests.k8s.test_operator import (  # noqa: F401 - module-scoped fixtures of the operator tests, reused here
    Operator,
    condition,
    lease_name,
    namespace,
    operator_kubeconfig,
    release,
    sample,
    storage_class,
    wait_ready,
)

LEASE_DURATION_S = 6
ROLLOUT_DEADLINE_S = 8
REFUSED = "switching from managed to external deletes the managed volume and its data"


def lease_holder(kube: Cluster, ns: str) -> str | None:
    """Who holds the Lease of the chart release installed in ``ns``."""
    lease = kube.find("lease", lease_name(kube, ns), "-n", ns)
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


def operator_process(kube: Cluster, ns: str, kubeconfig: Path, log_dir: Path, identity: str) -> Operator:
    process = Operator(kube, ns, kubeconfig, log_dir / f"{identity}.log")
    process.env = {
        "POD_NAME": identity,
        "POD_NAMESPACE": ns,
        "COURIER_OPERATOR_LEASE_DURATION_S": str(LEASE_DURATION_S),
        "COURIER_OPERATOR_LEASE_RENEW_DEADLINE_S": "4",
        "COURIER_OPERATOR_LEASE_RETRY_PERIOD_S": "1",
        "COURIER_OPERATOR_DRIFT_INTERVAL_S": "3600",
        "COURIER_OPERATOR_ROLLOUT_DEADLINE_S": str(ROLLOUT_DEADLINE_S),
        "COURIER_OPERATOR_METRICS_PORT": "0",
        "COURIER_OPERATOR_METRICS_HOST": "127.0.0.1",
    }
    return process


@pytest.fixture(scope="module")
def operators(
    kube: Cluster,
    namespace: str,  # noqa: F811
    operator_kubeconfig: Path,  # noqa: F811
    release: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Operator]]:
    """Two operator processes, op-a started first (so it leads) and op-b standing by."""
    logs = tmp_path_factory.mktemp("operators")
    pair = {
        identity: operator_process(kube, namespace, operator_kubeconfig, logs, identity)
        for identity in ("op-a", "op-b")
    }
    try:
        pair["op-a"].start()
        wait_until("op-a to hold the Lease", lambda: (lease_holder(kube, namespace) == "op-a", None))
        pair["op-b"].start()
        wait_until("op-b to stand by", lambda: ("standing by" in pair["op-b"].output(), pair["op-b"].output()[-500:]))
        yield pair
    finally:
        for identity, process in pair.items():
            process.stop()
            print(f"\n{identity} log, last lines:\n" + "\n".join(process.output().splitlines()[-30:]))


def leader(kube: Cluster, ns: str, operators: dict[str, Operator]) -> Operator:
    holder = lease_holder(kube, ns)
    assert holder in operators, holder
    return operators[str(holder)]


def imc(kube: Cluster, ns: str, name: str) -> dict[str, Any]:
    return kube.get("imcluster", name, "-n", ns)


def patch(kube: Cluster, ns: str, name: str, body: dict[str, Any], *flags: str) -> str:
    return kube.kubectl("patch", "imc", name, "-n", ns, "--type=merge", "-p", json.dumps(body), *flags)


def kept_cluster(ns: str, volumes: str, when_deleted: str) -> dict[str, Any]:
    """An IMCluster whose database is managed (its password in the generated Secret), the rest external."""
    return {
        "apiVersion": "im.courier.dev/v1alpha1",
        "kind": "IMCluster",
        "metadata": {"name": "keep", "namespace": ns},
        "spec": {
            "gateway": {"replicas": 1},
            "delivery": {"replicas": 1},
            "redis": {"external": {"url": "redis://redis.example:6379/0"}},
            "kafka": {"external": {"bootstrap": "kafka.example:9092"}},
            "database": {
                "managed": {"storage": {"size": "1Gi", "storageClassName": volumes, "whenDeleted": when_deleted}}
            },
            "objectStore": {
                "external": {
                    "endpoint": "s3.example:443",
                    "accessKeyRef": {"name": "keep-s3", "key": "access"},
                    "secretKeyRef": {"name": "keep-s3", "key": "secret"},
                }
            },
        },
    }


def s3_secret(ns: str, secret_key: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "keep-s3", "namespace": ns},
        "stringData": {"access": "courier", "secret": secret_key},
    }


# ---------------------------------------------------------------------------------------------------- tests


def test_a_data_losing_switch_to_external_is_refused_by_the_api_server(
    kube: Cluster,
    namespace: str,  # noqa: F811
    release: str,  # noqa: F811
) -> None:
    kube.apply(sample(namespace, "unused", name="cel"))
    external = {"managed": None, "external": {"url": "redis://redis.example:6379/0"}}
    try:
        with pytest.raises(CommandFailed) as refused:
            patch(kube, namespace, "cel", {"spec": {"redis": external}})
        print(f"\nthe API server's answer: {refused.value.output.strip()}")
        assert REFUSED in refused.value.output
        assert "set whenDeleted to Retain first" in refused.value.output
        assert "managed" in imc(kube, namespace, "cel")["spec"]["redis"]

        # Allowed: with the explicit opt-in, or once the volume is retained (then the claim outlives the switch).
        patch(kube, namespace, "cel", {"spec": {"redis": {**external, "allowDataLoss": True}}}, "--dry-run=server")
        patch(kube, namespace, "cel", {"spec": {"kafka": {"managed": {"storage": {"whenDeleted": "Retain"}}}}})
        kafka = {"managed": None, "external": {"bootstrap": "kafka.example:9092"}}
        patch(kube, namespace, "cel", {"spec": {"kafka": kafka}}, "--dry-run=server")
        # A new IMCluster may start external: the rule only judges transitions.
        fresh = sample(namespace, "unused", name="cel-new")
        fresh["spec"]["redis"] = {"external": {"url": "redis://redis.example:6379/0"}}
        kube.kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(fresh))
    finally:
        kube.kubectl("delete", "imc", "cel", "-n", namespace, "--wait=false")


def test_one_operator_leads_and_a_standby_takes_over_when_it_dies_or_steps_down(
    kube: Cluster,
    namespace: str,  # noqa: F811
    storage_class: str,  # noqa: F811
    release: str,  # noqa: F811
    operators: dict[str, Operator],
) -> None:
    a, b = operators["op-a"], operators["op-b"]
    kube.apply(sample(namespace, storage_class))
    wait_ready(kube, namespace, "chat", a)
    assert "ring version" in a.output()
    assert "ring version" not in b.output() and "created" not in b.output(), b.output()[-2000:]

    # Killed without a goodbye: op-b takes over once the Lease has gone unrenewed for its duration.
    assert a.proc is not None
    killed = time.monotonic()
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(timeout=30)
    a.proc = None
    wait_until("op-b to take the Lease over", lambda: (lease_holder(kube, namespace) == "op-b", None))
    took = time.monotonic() - killed
    print(f"\nop-b led {took:.1f}s after op-a was killed (lease duration {LEASE_DURATION_S}s)")
    assert took >= LEASE_DURATION_S - 1
    patch(kube, namespace, "chat", {"spec": {"gateway": {"replicas": 3}}})
    wait_until(
        "op-b to reconcile the change",
        lambda: (kube.get("deployment", "chat-gateway", "-n", namespace)["spec"]["replicas"] == 3, None),
    )

    # A clean stop releases the Lease: the standby leads at once rather than after the lease duration.
    a.start()
    wait_until("op-a to stand by", lambda: (a.output().count("standing by") >= 1, a.output()[-500:]))
    stopped = time.monotonic()
    b.stop()
    wait_until("op-a to take the released Lease", lambda: (lease_holder(kube, namespace) == "op-a", None))
    took = time.monotonic() - stopped
    print(f"op-a led {took:.1f}s after op-b stopped cleanly")
    patch(kube, namespace, "chat", {"spec": {"gateway": {"replicas": 2}}})
    wait_until(
        "op-a to reconcile the change",
        lambda: (kube.get("deployment", "chat-gateway", "-n", namespace)["spec"]["replicas"] == 2, None),
    )
    b.start()  # standing by again for the rest of the module
    wait_ready(kube, namespace, "chat", a)


def test_the_status_lists_the_ring_version_of_every_gateway_and_delivery_pod(
    kube: Cluster,
    namespace: str,  # noqa: F811
    release: str,  # noqa: F811
    operators: dict[str, Operator],
) -> None:
    def listed() -> tuple[bool, Any]:
        pods = kube.get("pods", "-n", namespace, "-l", "im.courier.dev/cluster=chat")["items"]
        wanted = sorted(
            p["metadata"]["name"]
            for p in pods
            if p["metadata"]["labels"]["app.kubernetes.io/component"] in ("gateway", "delivery")
            and p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
        )
        ring = imc(kube, namespace, "chat")["status"]["ring"]
        return sorted(p["name"] for p in ring.get("pods") or []) == wanted, ring

    wait_until("every gateway and delivery pod in status.ring.pods", listed)
    ring = imc(kube, namespace, "chat")["status"]["ring"]
    print(f"\nstatus.ring.loaded: {ring['loaded']}; pods: {ring['pods']}")
    # kwok's pods run no process, so the API server's proxy cannot reach them: each is listed with the reason.
    assert all("error" in p and "version" not in p for p in ring["pods"]), ring["pods"]
    assert ring["loaded"].startswith(f"0/{len(ring['pods'])} pods on version {ring['version']}")


def test_retained_data_keeps_its_secret_and_a_lost_secret_is_reported_not_regenerated(
    kube: Cluster,
    namespace: str,  # noqa: F811
    storage_class: str,  # noqa: F811
    release: str,  # noqa: F811
    operators: dict[str, Operator],
) -> None:
    kube.apply(s3_secret(namespace, "first"), kept_cluster(namespace, storage_class, "Retain"))
    wait_ready(kube, namespace, "keep", leader(kube, namespace, operators))
    secret = kube.get("secret", "keep-secrets", "-n", namespace)
    assert not secret["metadata"].get("ownerReferences"), secret["metadata"]
    passwords = secret["data"]

    # Delete mode: owned again (the garbage collector takes it with the IMCluster); Retain: ownerless again.
    patch(kube, namespace, "keep", {"spec": {"database": {"managed": {"storage": {"whenDeleted": "Delete"}}}}})
    owners = lambda: kube.get("secret", "keep-secrets", "-n", namespace)["metadata"].get("ownerReferences")  # noqa: E731
    wait_until("the Secret to be owned", lambda: (bool(owners()), owners()))
    patch(kube, namespace, "keep", {"spec": {"database": {"managed": {"storage": {"whenDeleted": "Retain"}}}}})
    wait_until("the Secret to be ownerless", lambda: (not owners(), owners()))

    # The IMCluster goes; its claim and its Secret stay, and a new IMCluster of that name opens them.
    wait_until("the database claim", lambda: (bool(kube.find("pvc", "data-keep-database-0", "-n", namespace)), None))
    kube.kubectl("delete", "imc", "keep", "-n", namespace, "--wait=true", "--timeout=120s")
    wait_until("the database StatefulSet to go", lambda: (not kube.find("sts", "keep-database", "-n", namespace), None))
    assert kube.find("pvc", "data-keep-database-0", "-n", namespace)
    assert kube.get("secret", "keep-secrets", "-n", namespace)["data"] == passwords
    kube.apply(kept_cluster(namespace, storage_class, "Retain"))
    wait_ready(kube, namespace, "keep", leader(kube, namespace, operators))
    assert kube.get("secret", "keep-secrets", "-n", namespace)["data"] == passwords

    # The Secret deleted while the data is there: reported (the watch on Secrets), never made anew.
    kube.kubectl("delete", "secret", "keep-secrets", "-n", namespace)

    def lost() -> tuple[bool, Any]:
        degraded = condition(imc(kube, namespace, "keep"), "Degraded")
        return degraded.get("reason") == "SecretLost", degraded

    wait_until("Degraded SecretLost", lost, deadline_s=60)
    degraded = condition(imc(kube, namespace, "keep"), "Degraded")
    print(f"\nDegraded: {degraded['message']}")
    assert "PersistentVolumeClaim/data-keep-database-0" in degraded["message"]
    assert not kube.find("secret", "keep-secrets", "-n", namespace)

    # Restored from a backup: the cluster recovers with the old passwords.
    restored = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "keep-secrets", "namespace": namespace},
        "data": passwords,
    }
    kube.apply(restored)
    wait_ready(kube, namespace, "keep", leader(kube, namespace, operators))
    assert kube.get("secret", "keep-secrets", "-n", namespace)["data"] == passwords


def test_a_changed_referenced_secret_rolls_the_pods_that_read_it(
    kube: Cluster,
    namespace: str,  # noqa: F811
    release: str,  # noqa: F811
    operators: dict[str, Operator],
) -> None:
    def secrets_hash() -> str:
        template = kube.get("deployment", "keep-file", "-n", namespace)["spec"]["template"]
        return str(template["metadata"]["annotations"].get("im.courier.dev/secrets-hash"))

    before = secrets_hash()
    gateway_before = kube.get("deployment", "keep-gateway", "-n", namespace)["metadata"]["generation"]
    changed = time.monotonic()
    kube.apply(s3_secret(namespace, "rotated"))
    wait_until("the file service's pods to roll", lambda: (secrets_hash() != before, before), deadline_s=60)
    print(f"\nkeep-file rolled {time.monotonic() - changed:.1f}s after its Secret changed (drift pass: 1h)")
    # The gateway does not read the S3 keys: it is left alone.
    assert kube.get("deployment", "keep-gateway", "-n", namespace)["metadata"]["generation"] == gateway_before
    stored = kube.get("secret", "keep-s3", "-n", namespace)["data"]["secret"]
    assert base64.b64decode(stored) == b"rotated"


def test_a_rollout_that_does_not_progress_turns_degraded_with_the_reason(
    kube: Cluster,
    namespace: str,  # noqa: F811
    release: str,  # noqa: F811
    operators: dict[str, Operator],
) -> None:
    # No node has 500 CPUs: the new gateway pod stays Pending, the old one serves on.
    patch(kube, namespace, "keep", {"spec": {"gateway": {"resources": {"requests": {"cpu": "500"}}}}})

    def stuck() -> tuple[bool, Any]:
        degraded = condition(imc(kube, namespace, "keep"), "Degraded")
        return degraded.get("status") == "True" and degraded.get("reason") == "RolloutStuck", degraded

    took = wait_until("Degraded RolloutStuck", stuck, deadline_s=120)
    degraded = condition(imc(kube, namespace, "keep"), "Degraded")
    print(f"\nDegraded after {took:.1f}s (deadline {ROLLOUT_DEADLINE_S}s): {degraded['message']}")
    assert "gateway" in degraded["message"] and "Insufficient cpu" in degraded["message"]

    patch(kube, namespace, "keep", {"spec": {"gateway": {"resources": None}}})
    wait_ready(kube, namespace, "keep", leader(kube, namespace, operators))
    assert condition(imc(kube, namespace, "keep"), "Degraded")["status"] == "False"


def test_a_leader_frozen_past_its_lease_steps_down_when_it_wakes(
    kube: Cluster,
    namespace: str,  # noqa: F811
    release: str,  # noqa: F811
    operators: dict[str, Operator],
) -> None:
    """A partition, as the leader sees it: it cannot renew, the standby takes over, and when it comes back it must
    not go on reconciling next to the new leader."""
    frozen = leader(kube, namespace, operators)
    [standby] = [o for o in operators.values() if o is not frozen]
    assert frozen.proc is not None
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until("the standby to take the Lease", lambda: (leader(kube, namespace, operators) is standby, None))
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    proc = frozen.proc
    wait_until("the old leader to exit", lambda: (proc.poll() is not None, frozen.output()[-1000:]), deadline_s=60)
    assert proc.returncode == 1
    assert "lost the Lease" in frozen.output()
    frozen.proc = None
    waits = frozen.output().count("standing by")
    frozen.start()  # what its Deployment would do: restart it, as a standby
    wait_until("the restarted process to stand by", lambda: (frozen.output().count("standing by") > waits, None))
    wait_ready(kube, namespace, "chat", standby)


def test_no_operator_logged_a_traceback(operators: dict[str, Operator]) -> None:
    for identity, process in operators.items():
        assert "Traceback" not in process.output(), f"{identity}:\n{process.output()[-5000:]}"
