"""`courier-kind up` giving up on an IMCluster that never became Ready: its message says why, with the log of
each container that crashed, the managed backends' last (a test printing the message keeps its end)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]
IMAGES = REPO / "infra" / "images"


@pytest.fixture
def courier_kind(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(IMAGES))
    loader = importlib.machinery.SourceFileLoader("courier_kind_under_test", str(IMAGES / "courier-kind"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, loader.name, module)
    loader.exec_module(module)
    return module


def status(name: str, restarts: int, *, waiting: str | None = None, exit_code: int | None = None) -> dict[str, object]:
    state: dict[str, object] = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    last = {"terminated": {"exitCode": exit_code, "reason": "Error"}} if exit_code is not None else {}
    return {"name": name, "restartCount": restarts, "state": state, "lastState": last}


PODS = {
    "items": [
        {
            "metadata": {"name": "chat-kafka-0", "labels": {"app.kubernetes.io/component": "kafka"}},
            "status": {"containerStatuses": [status("kafka", 8, waiting="CrashLoopBackOff", exit_code=1)]},
        },
        {
            # A StatefulSet too, but one of Courier's own tiers: not a backend the others wait on.
            "metadata": {"name": "chat-delivery-0", "labels": {"app.kubernetes.io/component": "delivery"}},
            "status": {"containerStatuses": [status("delivery", 3, waiting="CrashLoopBackOff", exit_code=1)]},
        },
        {
            "metadata": {"name": "chat-message-1", "labels": {}},
            "status": {
                "initContainerStatuses": [status("migrate", 8, waiting="CrashLoopBackOff", exit_code=1)],
                "containerStatuses": [status("message", 0, waiting="PodInitializing")],
            },
        },
        {"metadata": {"name": "chat-redis-0", "labels": {}}, "status": {"containerStatuses": [status("redis", 0)]}},
    ]
}


BOUND_CLAIMS = {"items": [{"metadata": {"name": "data-chat-redis-0"}, "status": {"phase": "Bound"}}]}


def test_the_report_shows_each_crashed_container_log_with_the_backends_last(
    courier_kind: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[list[str]] = []

    def kubectl(argv: list[str], **_: object) -> str:
        asked.append(argv)
        if argv[1:3] == ["get", "pods"]:
            return json.dumps(PODS) if "json" in argv else "NAME  READY  STATUS\n"
        if argv[1:3] == ["get", "pvc"]:
            return json.dumps(BOUND_CLAIMS)
        pod, container = argv[argv.index("logs") + 3], argv[argv.index("-c") + 1]
        return f"the last words of {pod}/{container}\n"

    monkeypatch.setattr(courier_kind, "run", kubectl)
    report = courier_kind.unready_report("kubectl", [], "courier")

    assert report.startswith("NAME  READY  STATUS")
    migrate = report.index("--- chat-message-1/migrate: 8 restarts, last exit: 1 (Error)")
    kafka = report.index("--- chat-kafka-0/kafka: 8 restarts, last exit: 1 (Error)")
    delivery = report.index("--- chat-delivery-0/delivery: 3 restarts, last exit: 1 (Error)")
    assert migrate < kafka and delivery < kafka, "the backend that the others wait on comes last"
    assert report.rstrip().endswith("the last words of chat-kafka-0/kafka")
    assert "chat-redis-0" not in report and "chat-message-1/message" not in report, "healthy and waiting-to-start"
    assert all("--previous" in argv for argv in asked if "logs" in argv), "a crashed container's log is its last run's"


def test_a_log_kubectl_cannot_give_leaves_the_rest_of_the_report(
    courier_kind: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def kubectl(argv: list[str], **_: object) -> str:
        if "logs" in argv:
            raise courier_kind.ImageError("previous terminated container not found")
        if "pvc" in argv:
            return json.dumps(BOUND_CLAIMS)
        return json.dumps(PODS) if "json" in argv else "pods\n"

    monkeypatch.setattr(courier_kind, "run", kubectl)
    report = courier_kind.unready_report("kubectl", [], "courier")

    assert "--- chat-kafka-0/kafka: 8 restarts" in report
    assert "(no log: previous terminated container not found)" in report


def test_claims_never_bound_are_reported_with_their_events_and_the_provisioners_log(
    courier_kind: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = {
        "items": [
            {"metadata": {"name": "data-chat-database-0"}, "status": {"phase": "Bound"}},
            {"metadata": {"name": "data-chat-kafka-0"}, "status": {"phase": "Pending"}},
            {"metadata": {"name": "data-chat-minio-0"}, "status": {"phase": "Pending"}},
        ]
    }

    def kubectl(argv: list[str], **_: object) -> str:
        if argv[1:3] == ["get", "pods"] and "local-path-storage" in argv:
            return "helper-pod-create-pvc-1  0/1  ContainerCreating\n"
        if argv[1:3] == ["get", "pods"]:
            return json.dumps(PODS) if "json" in argv else "NAME  READY  STATUS\n"
        if argv[1:3] == ["get", "pvc"]:
            return json.dumps(claims)
        if argv[1:3] == ["get", "events"]:
            return f"events of {argv[argv.index('-n') + 1]}\n"
        if "deploy/local-path-provisioner" in argv:
            return "create process timeout after 120 seconds\n"
        return "the last words of a container\n"

    monkeypatch.setattr(courier_kind, "run", kubectl)
    report = courier_kind.unready_report("kubectl", [], "courier")

    claims_at = report.index("--- claims not Bound: data-chat-kafka-0, data-chat-minio-0")
    assert "events of courier" in report and "events of local-path-storage" in report
    assert "helper-pod-create-pvc-1  0/1  ContainerCreating" in report
    provisioner_at = report.index("create process timeout after 120 seconds")
    assert claims_at < provisioner_at < report.index("--- chat-kafka-0/kafka"), "the backends' logs stay last"
