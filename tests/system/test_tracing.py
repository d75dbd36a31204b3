"""One message sent through ``make up`` is ONE trace: gateway, message service, Kafka, fan-out and the
delivery node's push, exported over OTLP/HTTP to a collector this test runs on loopback."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.client import Api, Device
from tests.support.server import RunningServer, run_stack
from tests.system.conftest import SYSTEM_ENV

DEADLINE_S = 60.0


@dataclass
class Collected:
    """Spans received so far: trace id -> (service.name, span name) pairs."""

    traces: dict[bytes, set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
                )
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.traces[span.trace_id].add((service, span.name))

    def snapshot(self) -> dict[bytes, set[tuple[str, str]]]:
        with self.lock:
            return {trace_id: set(spans) for trace_id, spans in self.traces.items()}


class Collector(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.collected = Collected()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"


class _Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.collected.add(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def traced_stack(collector: Collector) -> Iterator[RunningServer]:
    env = {
        **SYSTEM_ENV,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.endpoint,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    with run_stack(env) as running:
        yield running


def _whole_path(spans: set[tuple[str, str]]) -> list[str]:
    """What a message's trace still lacks (empty when it spans the whole path)."""
    services = {service for service, _ in spans}
    names = {name for _, name in spans}
    wanted = {
        "gateway spans": "courier-gateway" in services,
        "message service spans": "courier-message" in services,
        "delivery node spans": "courier-delivery" in services,
        "the relay's outbox publish": ("courier-message", "outbox publish") in spans,
        "a Kafka send": any(name.endswith(" send") and "courier.messages.v1" in name for name in names),
        "the fan-out": ("courier-message", "fanout") in spans,
        "the delivery push": ("courier-delivery", "push") in spans,
    }
    return [what for what, found in wanted.items() if not found]


async def test_one_message_sent_over_http_is_one_trace_from_the_gateway_to_the_delivery_push(
    traced_stack: RunningServer, collector: Collector
) -> None:
    api = Api(traced_stack.base_url)
    try:
        alice, bob = await api.register("alice"), await api.register("bob")
        cid = await api.direct(alice, bob)
        device = await Device.connect(traced_stack.ws_url, bob)
        try:
            sent = await api.send(alice, cid, "traced")
            assert sent.status_code == 201, sent.text
            seq = sent.json()["seq"]
            await device.wait_for(lambda f: f["type"] == "message" and f["conversation_id"] == cid and f["seq"] == seq)
        finally:
            await device.close()
    finally:
        await api.close()

    deadline = time.monotonic() + DEADLINE_S
    best: list[str] = ["no spans at all"]
    while time.monotonic() < deadline:
        for spans in collector.collected.snapshot().values():
            missing = _whole_path(spans)
            if not missing:
                return
            if len(missing) < len(best):
                best = missing
        await asyncio.sleep(0.2)
    pytest.fail(f"no trace spans the whole message path after {DEADLINE_S:g}s; the closest lacks {best}")
