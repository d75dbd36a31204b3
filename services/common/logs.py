"""Structured logs: one JSON object per line with time, level, logger, message, service and, inside a span, the
trace and span ids. Query strings are cut from logged paths (a WebSocket token may travel in one).

``configure_logging`` sets up the process; ``log_config`` is the same as a ``logging.config`` dict, which is
what uvicorn takes (``log_config=``) so its error and access logs come out the same way.
"""

from __future__ import annotations

import logging
import logging.config
import re
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

# A path followed by a query string, as uvicorn logs it ("GET /v1/ws?token=... HTTP/1.1").
_QUERY = re.compile(r"(/[^\s\"'?]*)\?[^\s\"']*")
# A credential-looking parameter anywhere else in a message.
_SECRET_PARAM = re.compile(r"((?:access_)?token=)[^&\s\"']+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` without query strings after paths and without token parameter values."""
    return _SECRET_PARAM.sub(r"\1[redacted]", _QUERY.sub(r"\1", text))


class ContextFilter(logging.Filter):
    """Adds the service name and the current span's ids to each record, and redacts its message."""

    def __init__(self, service: str = "courier") -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(_BaseJsonFormatter):
    """The line shape: time (RFC 3339 UTC, milliseconds), level, logger, message, then the extras."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("fmt", "%(asctime)s %(levelname)s %(name)s %(message)s")
        kwargs.setdefault("rename_fields", {"asctime": "time", "levelname": "level", "name": "logger"})
        # Drop uvicorn's own formatter extras; everything else set with ``extra=`` is kept.
        kwargs.setdefault("reserved_attrs", [*RESERVED_ATTRS, "taskName", "color_message"])
        super().__init__(**kwargs)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def log_config(service: str, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict: JSON lines on stderr for the root logger and uvicorn's loggers."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": f"{__name__}.ContextFilter", "service": service}},
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "json",
                "filters": ["context"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # uvicorn's loggers pass their records to the root handler instead of their own.
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.access": {"level": level, "handlers": [], "propagate": True},
        },
    }


def configure_logging(service: str, level: str = "INFO") -> dict[str, Any]:
    """Log JSON lines for ``service`` from now on; returns the config for ``uvicorn.run(log_config=...)``."""
    config = log_config(service, level)
    logging.config.dictConfig(config)
    return config
