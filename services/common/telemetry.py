"""OpenTelemetry tracing of one process, configured only by the standard ``OTEL_*`` environment variables.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) and ``OTEL_SDK_DISABLED``
is not true. Off, nothing of the SDK is imported or installed, and ``tracer``/``inject`` cost a no-op call.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from services.common import db

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("courier.telemetry")

# Probes and scrapes would otherwise be most of the spans.
EXCLUDED_URLS = "/healthz,/readyz,/metrics"
EXPORTERS = ("otlp", "console")


class _State:
    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.engines: set[int] = set()


_state: _State | None = None


def enabled_by_env(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for tracing (what ``configure`` decides by)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return exporter not in ("", "none")


def is_enabled() -> bool:
    return _state is not None


def configure(service: str, *, exporter: SpanExporter | None = None) -> bool:
    """Install the SDK tracer provider and instrument redis, aiokafka and httpx when the environment asks for
    tracing; idempotent (the first call wins). True when tracing is on.

    ``exporter`` is for tests: spans go to it synchronously and tracing is on whatever the environment says.
    ``service.name`` is ``courier-<service>`` unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES says otherwise.
    """
    global _state
    if _state is not None:
        return True
    if exporter is None and not enabled_by_env():
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    detected = OTELResourceDetector().detect().attributes.get(SERVICE_NAME)
    resource = Resource.create({SERVICE_NAME: str(detected or f"courier-{service}")})
    # sampler=None: the SDK reads OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG itself (parentbased_always_on).
    provider = TracerProvider(resource=resource, shutdown_on_exit=exporter is None)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        for name in _exporter_names():
            provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
        _set_global(provider)
    _instrument_libraries(provider)
    _state = _State(provider)
    log.info("tracing on for %s", resource.attributes.get(SERVICE_NAME))
    return True


def _exporter_names() -> list[str]:
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    unknown = [n for n in names if n not in (*EXPORTERS, "none")]
    if unknown:
        log.warning("OTEL_TRACES_EXPORTER: unknown exporter(s) %s; known: otlp, console, none", ", ".join(unknown))
    return [n for n in names if n in EXPORTERS]


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    # OTLP over HTTP/protobuf; the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, headers and timeout.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _set_global(provider: TracerProvider) -> None:
    current = trace.get_tracer_provider()
    if type(current).__name__ == "ProxyTracerProvider":
        trace.set_tracer_provider(provider)


def _instrumentors() -> list[BaseInstrumentor]:
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    return [AioHttpClientInstrumentor(), HTTPXClientInstrumentor(), RedisInstrumentor(), AIOKafkaInstrumentor()]


def _instrument_libraries(provider: TracerProvider) -> None:
    # Every HTTP client (aiohttp: InternalClient, so the ring pusher too; httpx: the gateway's proxy) gets
    # client spans and sends traceparent; Kafka records carry the context in their headers.
    for instrumentor in _instrumentors():
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)


def instrument_app(app: FastAPI) -> None:
    """Server spans for every request of ``app`` (not probes or scrapes) when tracing is on."""
    if _state is None or getattr(app.state, "otel_instrumented", False):
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=_state.provider, excluded_urls=EXCLUDED_URLS, exclude_spans=["receive", "send"]
    )
    app.state.otel_instrumented = True


def instrument_engine(engine: AsyncEngine) -> None:
    """A span per SQL statement of ``engine`` when tracing is on."""
    if _state is None or id(engine.sync_engine) in _state.engines:
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import get_meter

    usage = get_meter("courier.sqlalchemy").create_up_down_counter("db.client.connections.usage")
    sql_tracer = _state.provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    for statements in db.statement_engines(engine):  # on SQLite, the group commit's synchronous engine too
        EngineTracer(sql_tracer, statements, usage)  # type: ignore[no-untyped-call]
    _state.engines.add(id(engine.sync_engine))


# What ``tracer`` gives while tracing is off. opentelemetry's ``get_tracer`` reads the environment on every call
# (for a provider named there) and wraps a proxy, and the fan-out asks for a tracer per record.
_OFF = trace.NoOpTracer()


def tracer(name: str) -> trace.Tracer:
    """A tracer of this process's provider; a no-op one when tracing is off."""
    if _state is None:
        return _OFF
    return _state.provider.get_tracer(name)


def inject() -> dict[str, str]:
    """The W3C ``traceparent``/``tracestate`` of the current span; {} when tracing is off or no span is current."""
    if _state is None:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str]) -> otel_context.Context:
    """The context a carrier (HTTP headers, Kafka headers via ``carrier_from_headers``) continues."""
    if _state is None or not carrier:
        return otel_context.Context()
    return propagate.extract(dict(carrier))


def kafka_headers(carrier: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """A carrier as Kafka record headers."""
    return [(key, value.encode()) for key, value in carrier.items()]


def carrier_from_headers(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """The propagation fields of Kafka record headers as a carrier for ``extract``."""
    fields = propagate.get_global_textmap().fields
    carrier: dict[str, str] = {}
    for key, value in headers or ():
        if key.lower() in fields and value is not None:
            carrier[key.lower()] = value.decode("latin-1")
    return carrier


def shutdown() -> None:
    """Flush buffered spans and stop the exporters (the end of the process's lifespan); tracing stays off."""
    global _state
    state, _state = _state, None
    if state is None:
        return
    try:
        state.provider.shutdown()
    except Exception:  # noqa: BLE001 - an unreachable collector must not fail the shutdown
        log.warning("flushing spans failed", exc_info=True)


def reset() -> None:
    """Tests: shut down and uninstrument the libraries, so the next ``configure`` starts afresh."""
    shutdown()
    if "opentelemetry.instrumentation.httpx" not in sys.modules:
        return
    for instrumentor in _instrumentors():
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
