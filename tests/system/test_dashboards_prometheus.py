"""The dashboards against a real Prometheus (Debian's, from infra/courier-prometheus) scraping every process of
``make up`` while messages, sockets, files and failures go through the gateway: every template variable's query
returns values, and every query of every panel, with those values substituted, returns series. A panel that
returns nothing fails the test, named by dashboard, panel and query.

Prometheus scrapes the processes as the chart's ServiceMonitor has prometheus-operator scrape the pods: the series
keep their own labels (honor_labels), and each target carries `namespace`, `imcluster`, `job` and `service` (the
Kubernetes Service's name, which must not replace Courier's own `service` label). The operator's panels have no
operator under make up: tests/k8s/test_operator_panels_prometheus.py checks them against the real operator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.harness.prometheus import Prometheus, run_prometheus
from tests.support.client import Api, Device, User
from tests.support.panels import Panel, empty_panels
from tests.support.server import RunningServer, run_stack
from tests.system.conftest import SYSTEM_ENV
from tests.unit.dashboards.queries import dashboard_files, load

NAMESPACE = "courier"
IMCLUSTER = "up"
SCRAPE_INTERVAL_S = 2
DEADLINE_S = 300.0
# The process whose death the gateway reports as 503s and upstream errors; restarted at the end.
STOPPED = "file"


def scrape_config(processes: list[dict[str, Any]]) -> dict[str, Any]:
    """prometheus.yml: every process of make up as one target, labelled as the ServiceMonitor labels a pod."""
    targets = []
    for process in processes:
        kubernetes_service = f"{IMCLUSTER}-{process['service']}"
        labels = {"namespace": NAMESPACE, "imcluster": IMCLUSTER, "job": kubernetes_service}
        targets.append(
            {"targets": [f"127.0.0.1:{process['port']}"], "labels": {**labels, "service": kubernetes_service}}
        )
    return {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "scrape_timeout": f"{SCRAPE_INTERVAL_S}s"},
        "scrape_configs": [{"job_name": "courier", "honor_labels": True, "static_configs": targets}],
    }


def service_panel(panel: Panel) -> bool:
    return not panel.operator_only


@pytest.fixture(scope="module")
def cluster() -> Iterator[RunningServer]:
    # Fresh: the test stops one process of the stack.
    with run_stack(SYSTEM_ENV, fresh=True) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(cluster: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    from tools import stack

    config = scrape_config(stack.read_up()["processes"])
    with run_prometheus(config, tmp_path_factory.mktemp("prometheus")) as server:
        yield server


@pytest.fixture
async def api(cluster: RunningServer) -> AsyncIterator[Api]:
    client = Api(cluster.base_url)
    yield client
    await client.close()


async def wait_scraped_after(prometheus: Prometheus, moment: float) -> None:
    """Until Prometheus has scraped every target since ``moment`` (a wall-clock time)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        oldest = prometheus.query("min(timestamp(up))")
        if oldest and float(oldest[0]["value"][1]) > moment:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"Prometheus did not scrape every target within 60 s (log: {prometheus.log_path})")


async def messages_and_sockets(cluster: RunningServer, api: Api, round_no: int) -> None:
    """Two users exchange messages over WebSockets (sent, pushed, acked, synced), send a bad frame, ask for a
    conversation that does not exist (a 4xx) and close their sockets."""
    alice, bob = await api.register(f"dash-a{round_no}"), await api.register(f"dash-b{round_no}")
    cid = await api.direct(alice, bob)
    devices = [await Device.connect(cluster.ws_url, user) for user in (alice, bob)]
    try:
        for i in range(3):
            for sender, receiver in (devices, devices[::-1]):
                ack = await sender.send_text(cid, f"dashboard {round_no}.{i}")
                assert ack["type"] == "send_ack", ack
                await receiver.wait_for(lambda f, s=ack["seq"]: f["type"] == "message" and f["seq"] == s)
                await receiver.send({"type": "ack", "conversation_id": cid, "seq": ack["seq"]})
        synced = await devices[1].request({"type": "sync", "cursors": {cid: 0}}, answer="sync_result")
        assert synced["type"] == "sync_result", synced
        refused = await devices[0].request({"type": "send", "conversation_id": cid}, answer="send_ack")
        assert refused["type"] == "error", refused
    finally:
        for device in devices:
            await device.close()
    missing = await api.http.get("/v1/conversations/00000000-0000-0000-0000-000000000000", headers=alice.headers)
    assert 400 <= missing.status_code < 500, missing.text


async def unavailable_file_service(api: Api, user: User) -> None:
    """Uploads while the file service is down: the gateway answers 503 and counts an upstream error."""
    body = {"name": "a.txt", "size": 1, "content_type": "text/plain", "sha256": "0" * 64}
    answer = await api.http.post("/v1/files/uploads", headers=user.headers, json=body)
    assert answer.status_code == 503, answer.text


async def test_every_panel_of_every_dashboard_returns_series_from_a_real_prometheus(
    cluster: RunningServer, prometheus: Prometheus, api: Api
) -> None:
    from tools import stack

    dashboards = [load(path) for path in dashboard_files()]
    uploader = await api.register("dash-files")
    stored = await api.upload(uploader, b"dashboards meet a real Prometheus")
    assert stored["size"] > 0, stored
    stack.kill(STOPPED)
    try:
        # Rounds of traffic until every panel has series: counters that only exist after a first event (5xx by
        # route) need a second round after a scrape to show a rate above zero.
        deadline = time.monotonic() + DEADLINE_S
        round_no = 0
        while True:
            await messages_and_sockets(cluster, api, round_no)
            await unavailable_file_service(api, uploader)
            await wait_scraped_after(prometheus, time.time())
            problems = empty_panels(prometheus, dashboards, service_panel)
            round_no += 1
            if not problems or time.monotonic() > deadline:
                break
    finally:
        stack.restart(STOPPED, SYSTEM_ENV)
    print(f"\n{round_no} rounds of traffic until every panel answered")
    assert not problems, f"after {round_no} rounds of traffic (Prometheus log: {prometheus.log_path}):\n" + "\n".join(
        problems
    )


def test_a_panel_without_series_is_named_with_its_dashboard_and_query(prometheus: Prometheus) -> None:
    dashboard = load(dashboard_files()[0])
    dashboard = {
        **dashboard,
        "panels": [
            {
                "title": "Typo",
                "id": 99,
                "type": "stat",
                "targets": [{"refId": "A", "expr": 'sum(courier_mesages_sent_total{imcluster=~"$imcluster"})'}],
            }
        ],
    }
    (problem,) = empty_panels(prometheus, [dashboard], service_panel)
    assert problem == (
        f"{dashboard['title']}: panel 'Typo' (id 99) target A returns no series: "
        f'sum(courier_mesages_sent_total{{imcluster=~"{IMCLUSTER}"}})'
    )
