"""The HTTP edge shared by every service: the error shape of PROTOCOL.md, the route class that reads
what clients send, and the auth dependency.

Every error a client can see leaves through ``install_error_handlers``; nothing answers with a
stack trace. Every router reads what clients send through ``TextRoute``.
"""

# No `from __future__ import annotations`: FastAPI resolves the ``request: Request`` annotation of
# ``Authenticate.__call__`` at runtime, and an instance has no ``__globals__`` to look a string up in.

import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, ORJSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.errors import CourierError, InvalidRequest, RateLimited, Unauthorized
from services.common.tokens import AccessTokens, Principal, bearer
from services.common.wire import holds_nul

log = logging.getLogger("courier.web")

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "invalid_request",
    409: "conflict",
    413: "payload_too_large",
    415: "invalid_request",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The protocol's error shape."""
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return ORJSONResponse(error_body(code, message), status_code=status, headers=headers)


def courier_error_response(exc: CourierError) -> JSONResponse:
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, round(exc.retry_after + 0.499)))}
    elif isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(*_error_of(exc), headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


INTERNAL_ERROR = "internal error; it has been logged"


def _error_of(exc: Exception) -> tuple[int, str, str]:
    """The status, code and message ``exc`` is answered with: a ``CourierError`` its own, a request that failed
    validation 422, anything else 500 (to be logged by whoever answers it)."""
    if isinstance(exc, CourierError):
        return exc.status, exc.code, exc.message
    if isinstance(exc, RequestValidationError):
        return 422, "invalid_request", _describe_validation(exc)
    return 500, "internal", INTERNAL_ERROR


def error_answer(exc: Exception) -> tuple[int, bytes]:
    """The status and body the handlers of ``install_error_handlers`` answer ``exc`` with (headers aside): how a
    call answered straight from an internal stream fails (``services.common.stream``). 500 for anything that is
    not a ``CourierError`` or a ``RequestValidationError``, which the caller is to log."""
    status, code, message = _error_of(exc)
    return status, orjson.dumps(error_body(code, message))


def install_error_handlers(app: FastAPI) -> None:
    async def on_courier_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CourierError)
        return courier_error_response(exc)

    async def on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(*_error_of(exc))

    async def on_http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__, CourierError):  # FastAPI wraps a body that could not be read in a bare 400
            return courier_error_response(exc.__cause__)
        code = _HTTP_CODES.get(exc.status_code, "invalid_request")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(*_error_of(exc))

    app.add_exception_handler(CourierError, on_courier_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


def read_json(body: bytes) -> Any:
    """A request body as JSON in which every string is text every store can hold.

    Python's ``json``, which FastAPI reads bodies with, lets through a lone surrogate (``"\\ud800"``),
    surrogates encoded as bytes and NaN, which no UTF-8 column, encoder or other client can hold. orjson
    refuses them: what it refuses is answered 400 here, before any field sees it, unless ``json`` finds
    the body malformed too, which keeps the answer malformed JSON always had (422, like a schema error).
    NUL, which PostgreSQL cannot hold, is 400 too; JSON can only write it escaped, so bodies without the
    escape are not searched.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        refused = exc
    else:
        if b"\\u0000" in body and holds_nul(data):
            raise InvalidRequest("the request body must not contain NUL (\\u0000) in any string")
        return data
    with contextlib.suppress(UnicodeDecodeError):  # not UTF-8 at all: refused below, like a surrogate
        json.loads(body)  # malformed JSON raises its JSONDecodeError here
    raise InvalidRequest(f"the request body is not JSON in UTF-8 text: {refused}")


class _TextRequest(Request):
    async def json(self) -> Any:
        return read_json(await self.body())


class TextRoute(APIRoute):
    """The route class of every router: what a client sends in the path, the query and a JSON body is
    text every store can hold (``read_json``), or the request is refused with 400 before any field is
    read. Path and query are decoded with replacement characters, so only NUL (``%00``) can get through."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_text(request: Request) -> Response:
            if "\x00" in request.scope["path"] or b"%00" in request.scope.get("query_string", b""):
                raise InvalidRequest("the path and the query must not contain NUL (%00)")
            return await handle(_TextRequest(request.scope, request.receive))

        return handle_text


class Authenticate:
    """FastAPI dependency: the caller's ``Principal`` from the bearer token, or 401."""

    def __init__(self, tokens: AccessTokens) -> None:
        self._tokens = tokens

    async def __call__(self, request: Request) -> Principal:
        cached = getattr(request.state, "principal", None)
        if isinstance(cached, Principal):
            return cached
        token = bearer(request.headers.get("authorization"))
        if token is None:
            raise Unauthorized("missing bearer token")
        principal = self._tokens.verify(token)
        request.state.principal = principal
        return principal


def install_ops_routes(app: FastAPI, ready: Callable[[], Coroutine[Any, Any, bool]]) -> None:
    """``/healthz`` (the process serves), ``/readyz`` (``ready``: it can do its work, 503 when not) and
    ``/metrics`` (Prometheus), on every process."""

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(response: Response) -> dict[str, Any]:
        ok = await ready()
        response.status_code = 200 if ok else 503
        return {"status": "ready" if ok else "unavailable"}

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
