"""JSON log lines: the fields every line has, the span ids inside a span, and no query strings."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.common.logs import ContextFilter, JsonFormatter, log_config, redact


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """A handler like the configured one, on a private stream, attached to the root logger for the test."""
    stream = io.StringIO()
    config = log_config("gateway")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter(config["filters"]["context"]["service"]))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_log_line_is_json_with_time_level_logger_message_and_service(captured: io.StringIO) -> None:
    logging.getLogger("courier.test").warning("ring changed to version %d", 3)
    [line] = lines(captured)
    assert line["level"] == "WARNING"
    assert line["logger"] == "courier.test"
    assert line["message"] == "ring changed to version 3"
    assert line["service"] == "gateway"
    assert str(line["time"]).endswith("Z")
    assert "trace_id" not in line


def test_a_line_logged_in_a_span_carries_its_trace_and_span_ids(captured: io.StringIO) -> None:
    provider = TracerProvider()
    with provider.get_tracer("test").start_as_current_span("work") as span:
        logging.getLogger("courier.test").info("inside")
        context = span.get_span_context()
    provider.shutdown()
    [line] = lines(captured)
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")


def test_an_access_line_never_carries_the_query_string(captured: io.StringIO) -> None:
    access = logging.getLogger("uvicorn.access")
    access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.1:5000", "GET", "/v1/ws?token=secret", "1.1", 101)
    logging.getLogger("uvicorn.error").info('%s - "WebSocket %s" [accepted]', "10.0.0.1:5000", "/v1/ws?token=secret")
    found = lines(captured)
    assert len(found) == 2
    assert all("secret" not in json.dumps(line) for line in found)
    assert found[0]["message"] == '10.0.0.1:5000 - "GET /v1/ws HTTP/1.1" 101'
    assert found[0]["logger"] == "uvicorn.access"


def test_token_parameters_are_redacted_outside_paths_too() -> None:
    assert redact("retrying with access_token=abc.def&x=1") == "retrying with access_token=[redacted]&x=1"
    assert redact('"GET /v1/users/u1?cursor=9 HTTP/1.1"') == '"GET /v1/users/u1 HTTP/1.1"'


def test_the_config_routes_uvicorn_through_the_json_handler() -> None:
    config = log_config("message", "warning")
    assert config["root"]["level"] == "WARNING"
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        assert config["loggers"][name] == {"level": "WARNING", "handlers": [], "propagate": True}
    assert config["handlers"]["stderr"]["formatter"] == "json"
