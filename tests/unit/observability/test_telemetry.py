"""Tracing: off costs nothing; on, spans cross HTTP and Kafka headers as one trace."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel
from sqlalchemy import text

from services.common import db, telemetry
from services.common.contract import call, serve
from services.common.internal import InternalClient
from tests.support.loopback import GUARD, internal_service

ROOT = Path(__file__).resolve().parents[3]


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


OFF_PROBE = """
import json, sys
from opentelemetry import trace
from services.common import telemetry
on = telemetry.configure("identity")
with telemetry.tracer("probe").start_as_current_span("x"):
    carrier = telemetry.inject()
print(json.dumps({
    "on": on,
    "inject": carrier,
    "sdk_imported": sorted(
        m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.instrumentation"))
    ),
    "provider": type(trace.get_tracer_provider()).__name__,
}))
"""


@pytest.mark.parametrize(
    "env",
    [{}, {"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}],
    ids=["unset", "none", "sdk-disabled"],
)
def test_off_installs_nothing_and_injects_nothing(env: dict[str, str]) -> None:
    done = run_python(OFF_PROBE, env)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found == {"on": False, "inject": {}, "sdk_imported": [], "provider": "ProxyTracerProvider"}


def test_the_environment_turns_tracing_on_with_the_default_service_name() -> None:
    code = (
        "from services.common import telemetry; from opentelemetry import trace; "
        "print(telemetry.configure('message'), telemetry.configure('message'), "
        "trace.get_tracer_provider().resource.attributes['service.name']); telemetry.shutdown()"
    )
    done = run_python(code, {"OTEL_TRACES_EXPORTER": "console"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "courier-message"]


def test_otel_service_name_overrides_the_default() -> None:
    code = (
        "from services.common import telemetry; from opentelemetry import trace; telemetry.configure('message'); "
        "print(trace.get_tracer_provider().resource.attributes['service.name']); telemetry.shutdown()"
    )
    done = run_python(code, {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "msg-eu"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "msg-eu"


def test_configure_logging_writes_json_lines_to_stderr() -> None:
    code = (
        "import logging; from services.common.logs import configure_logging; configure_logging('presence'); "
        "logging.getLogger('courier.x').info('hello')"
    )
    done = run_python(code, {})
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert {k: line[k] for k in ("level", "logger", "message", "service")} == {
        "level": "INFO",
        "logger": "courier.x",
        "message": "hello",
        "service": "presence",
    }


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    telemetry.reset()  # whatever an earlier test left configured
    assert telemetry.configure("test", exporter=exporter)
    try:
        yield exporter
    finally:
        telemetry.reset()


def test_inject_then_extract_continues_the_same_trace(spans: InMemorySpanExporter) -> None:
    tracer = telemetry.tracer("test")
    with tracer.start_as_current_span("send") as sender:
        carrier = telemetry.inject()
        headers = telemetry.kafka_headers(carrier)
    assert "traceparent" in carrier
    received = telemetry.carrier_from_headers([*headers, ("other", b"x")])
    assert received == carrier
    with tracer.start_as_current_span("push", context=telemetry.extract(received)) as receiver:
        pass
    assert receiver.get_span_context().trace_id == sender.get_span_context().trace_id
    push = next(s for s in spans.get_finished_spans() if s.name == "push")
    assert push.parent is not None
    assert push.parent.span_id == sender.get_span_context().span_id


def test_inject_outside_a_span_is_empty(spans: InMemorySpanExporter) -> None:
    assert telemetry.inject() == {}
    assert not trace.get_current_span(telemetry.extract({})).get_span_context().is_valid


async def test_an_instrumented_app_traces_requests_but_not_probes(spans: InMemorySpanExporter) -> None:
    app = FastAPI()

    @app.get("/v1/users/{user_id}")
    async def get_user(user_id: str) -> dict[str, str]:
        return {"user_id": user_id}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    telemetry.instrument_app(app)
    telemetry.instrument_app(app)  # idempotent
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/v1/users/u1")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
    server = [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.SERVER]
    assert [s.attributes.get("http.route") for s in server if s.attributes] == ["/v1/users/{user_id}"]
    assert server[0].resource.attributes["service.name"] == "courier-test"


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A loopback HTTP server answering {} to anything and remembering each request's headers."""
    seen: list[dict[str, str]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")[1:]
        seen.append({k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)})
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()
        await server.wait_closed()


async def test_internal_calls_carry_the_trace_to_the_next_service(
    spans: InMemorySpanExporter, echo_server: tuple[str, list[dict[str, str]]]
) -> None:
    url, seen = echo_server
    client = InternalClient(url, "internal-token", streams=0)  # over HTTP; the next test over a stream
    try:
        with telemetry.tracer("test").start_as_current_span("use case") as parent:
            assert await client.call("GET", "/internal/x") == {}
    finally:
        await client.close()
    trace_id = format(parent.get_span_context().trace_id, "032x")
    assert seen[0]["traceparent"].split("-")[1] == trace_id
    clients = [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.CLIENT]
    assert clients
    assert clients[0].context.trace_id == parent.get_span_context().trace_id


async def test_internal_calls_on_a_stream_carry_the_trace_to_the_next_service(spans: InMemorySpanExporter) -> None:
    seen: list[str] = []
    router = APIRouter()

    @router.post("/internal/x")
    async def remember(request: Request) -> dict[str, str]:
        seen.append(request.headers.get("traceparent", ""))
        return {}

    async with internal_service(router) as served:
        with telemetry.tracer("test").start_as_current_span("use case") as parent:
            assert await served.client.call("POST", "/internal/x", {}) == {}
        assert served.streams.answered == 1
    trace_id = parent.get_span_context().trace_id
    assert seen[0].split("-")[1] == format(trace_id, "032x")
    [client] = [s for s in spans.get_finished_spans() if s.name == "POST /internal/x"]  # (the stream's opening has one)
    assert (client.kind, client.context.trace_id) == (trace.SpanKind.CLIENT, trace_id)
    assert seen[0].split("-")[2] == format(client.context.span_id, "016x")  # the server's parent is the call


class Note(BaseModel):
    text: str


@call("POST", "/internal/note", Note, Note)
async def note(port: list[str], body: Note) -> Note:
    with telemetry.tracer("test").start_as_current_span("note work"):
        port.append(body.text)
    return body


async def test_a_call_answered_on_a_stream_has_a_server_span_in_the_callers_trace(spans: InMemorySpanExporter) -> None:
    """A POST call is answered straight from the stream, not through the app and its instrumentation: its
    server span is the stream's own, child of the caller's, with the call's work under it."""
    noted: list[str] = []
    async with internal_service(serve(noted, GUARD, [note])) as served:
        with telemetry.tracer("test").start_as_current_span("use case") as parent:
            assert await note.ask(served.client, Note(text="hi")) == Note(text="hi")
        assert served.streams.answered == 1
    finished = spans.get_finished_spans()
    [client] = [s for s in finished if s.name == "POST /internal/note" and s.kind == trace.SpanKind.CLIENT]
    [server] = [s for s in finished if s.name == "POST /internal/note" and s.kind == trace.SpanKind.SERVER]
    [work] = [s for s in finished if s.name == "note work"]
    trace_id = parent.get_span_context().trace_id
    assert client.context.trace_id == server.context.trace_id == work.context.trace_id == trace_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert work.parent is not None and work.parent.span_id == server.context.span_id
    assert server.attributes is not None
    assert (server.attributes["http.route"], server.attributes["http.response.status_code"]) == ("/internal/note", 200)


async def test_an_instrumented_engine_traces_statements(spans: InMemorySpanExporter, tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'trace.db'}")
    telemetry.instrument_engine(engine)
    telemetry.instrument_engine(engine)  # idempotent
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        await db.write_sync(engine, "test", lambda conn: conn.execute(text("SELECT 2")))  # SQLite's synchronous twin
    finally:
        await engine.dispose()
    statements = [s for s in spans.get_finished_spans() if s.attributes and s.attributes.get("db.system") == "sqlite"]
    traced = [s.attributes.get("db.statement") for s in statements if s.attributes]
    assert "SELECT 1" in traced
    assert "SELECT 2" in traced
