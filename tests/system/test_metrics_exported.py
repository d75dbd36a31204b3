"""Every metric the dashboards and alert rules query is really exported: after a short message exchange over
WebSockets, the /metrics of the running processes (the one ``courier dev`` process, or every process of the
``make up`` stack) together carry each name, and the message counters moved."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import Api, Device
from tests.support.server import RunningServer
from tests.unit.dashboards.queries import OPERATOR_METRICS, all_queries, exposition_names, metric_names

MESSAGES = 5
DEADLINE_S = 60.0
# Metrics that cannot have a sample in a mode, with why; there they must still be declared (# TYPE in /metrics).
NO_SAMPLES_IN = {
    "dev": {"courier_gateway_upstream_errors_total": "the all-in-one process calls its services in process"},
}
DECLARED = "__declared__"


def metrics_urls(server: RunningServer) -> dict[str, str]:
    """Process name -> its /metrics URL."""
    if server.kind == "dev":
        return {"courier dev": f"{server.base_url}/metrics"}
    from tools import stack

    processes = stack.read_up()["processes"]
    assert processes, "make up lists no process in .courier/up.json"
    return {p["name"]: f"http://127.0.0.1:{p['port']}/metrics" for p in processes}


async def scrape(urls: dict[str, str]) -> dict[str, dict[str, float]]:
    """Process name -> {sample name: sum of its values over all label sets}."""

    async def get(client: httpx.AsyncClient, name: str, url: str) -> httpx.Response:
        try:
            return await client.get(url)
        except httpx.HTTPError as exc:
            raise AssertionError(f"{name}: GET {url} failed: {exc!r}") from exc

    async with httpx.AsyncClient(timeout=10) as client:
        answers = await asyncio.gather(*(get(client, name, url) for name, url in urls.items()))
    exported: dict[str, dict[str, float]] = {}
    for name, answer in zip(urls, answers, strict=True):
        assert answer.status_code == 200, f"{name}: GET /metrics answered {answer.status_code}"
        assert answer.headers["content-type"].startswith("text/plain"), f"{name}: {answer.headers['content-type']}"
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(answer.text):
            for declared in exposition_names(family.name, family.type):
                totals.setdefault(DECLARED + declared, 0.0)
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        exported[name] = totals
    return exported


def total(exported: dict[str, dict[str, float]], sample: str) -> float:
    return sum(samples.get(sample, 0.0) for samples in exported.values())


def used_by_dashboards_and_rules() -> dict[str, list[str]]:
    """Metric name -> where it is used, for every non-operator metric."""
    used: dict[str, list[str]] = {}
    for query in all_queries():
        for name in metric_names(query.expr) - OPERATOR_METRICS:
            used.setdefault(name, []).append(query.label)
    return used


def pushed(cid: str, seq: int) -> Callable[[dict[str, Any]], bool]:
    return lambda frame: frame["type"] == "message" and frame["conversation_id"] == cid and frame["seq"] == seq


async def exchange(server: RunningServer, api: Api, count: int) -> None:
    """Two users, one direct conversation: ``count`` messages each way, received and acknowledged."""
    alice, bob = await api.register("metrics-a"), await api.register("metrics-b")
    cid = await api.direct(alice, bob)
    devices = [await Device.connect(server.ws_url, user) for user in (alice, bob)]
    try:
        for i in range(count):
            for sender, receiver in (devices, devices[::-1]):
                ack = await sender.send_text(cid, f"metrics {i}")
                assert ack["type"] == "send_ack", ack
                await receiver.wait_for(pushed(cid, ack["seq"]))
                await receiver.send({"type": "ack", "conversation_id": cid, "seq": ack["seq"]})
        ping = await devices[0].request({"type": "ping"}, answer="pong")
        assert ping["type"] == "pong", ping
        sync = await devices[1].request({"type": "sync", "cursors": {cid: 0}}, answer="sync_result")
        assert sync["type"] == "sync_result", sync
    finally:
        for device in devices:
            await device.close()


def missing(used: Iterable[str], exported: dict[str, dict[str, float]], kind: str) -> list[str]:
    everywhere = set().union(*(samples.keys() for samples in exported.values()))
    exempt = NO_SAMPLES_IN.get(kind, {})
    return sorted(
        name for name in used if name not in everywhere and not (name in exempt and DECLARED + name in everywhere)
    )


async def test_every_metric_of_the_dashboards_and_alerts_is_exported_after_an_exchange(
    server: RunningServer, api: Api
) -> None:
    urls = metrics_urls(server)
    before = await scrape(urls)
    await exchange(server, api, MESSAGES)

    # Pushes and ACKs are counted as the delivery node handles them: wait for the counters, not a fixed time.
    deadline = time.monotonic() + DEADLINE_S
    while True:
        after = await scrape(urls)
        moved = {
            sample: total(after, sample) - total(before, sample)
            for sample in (
                "courier_messages_sent_total",
                "courier_messages_pushed_total",
                "courier_messages_acked_total",
                "courier_send_to_push_seconds_count",
            )
        }
        if all(delta >= 2 * MESSAGES for delta in moved.values()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert all(delta >= 2 * MESSAGES for delta in moved.values()), f"{server.kind}: counters after the exchange {moved}"

    used = used_by_dashboards_and_rules()
    absent = missing(used, after, server.kind)
    assert not absent, f"{server.kind}: no process of {sorted(urls)} exports:\n" + "\n".join(
        f"  {name} (used by {'; '.join(used[name])})" for name in absent
    )
    http = total(after, "courier_http_requests_total") - total(before, "courier_http_requests_total")
    assert http >= 4, "register, login and conversation requests are counted"
