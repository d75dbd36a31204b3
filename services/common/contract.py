"""One definition per service-to-service call, served and called by the same generic code.

A ``Call`` is one internal request: its HTTP method and path, the pydantic models of its request and
its answer, and the function that answers it from the serving service's port (named after the port
method it maps to). From a service's calls, ``serve`` builds its ``/internal`` router behind
``RequireInternal``, and ``Call.ask`` makes a call over an ``InternalClient`` for the HTTP client that
implements the caller's port. In one process (``courier dev``) the port object is used directly, and
nothing here runs.

The wire: a POST carries the request model as its JSON body, a GET carries its fields in the path
(``/internal/conversations/{conversation_id}``); the answer is the answer model as JSON, or 204 with
no body for a call without one. A request that fails validation is answered 422 ``invalid_request``
and a ``CourierError`` its status and protocol error body (the app's error handlers,
``services.common.web``); ``ask`` raises both again as the same ``CourierError``.

Over an internal stream (``services.common.stream``) a POST call is answered by its ``Call`` straight from the
frame (``stream_answers``), without the app's HTTP stack: that stack cost a delivery node a tenth of its CPU
and the message service a twentieth (docs/performance.md 28). GET calls, which carry their fields in the path,
still go through the app.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's ``request: Request`` at runtime.

import functools
import string
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, Literal, TypeVar, cast, overload
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.routing import BaseRoute, Route

from services.common.errors import Unavailable
from services.common.internal import InternalClient, RequireInternal

Method = Literal["GET", "POST"]
Port = TypeVar("Port")
Req = TypeVar("Req", bound=BaseModel)
Ans = TypeVar("Ans", bound=BaseModel | None)
Answer = Callable[[Port, Req], Awaitable[Ans]]
StreamAnswer = Callable[[bytes], Awaitable[bytes | None]]
"""A POST call answered from its request's body: the answer's JSON, or None (204 without a body)."""


class Call(Generic[Port, Req, Ans]):
    """``method path``: ``request`` in, ``answer`` out (None: 204 without a body), answered on the
    serving side by ``answered_by(port, request)``."""

    def __init__(
        self,
        method: Method,
        path: str,
        request: type[Req],
        answer: type[Ans] | None,
        answered_by: Answer[Port, Req, Ans],
    ) -> None:
        in_path = {name for _, name, _, _ in string.Formatter().parse(path) if name}
        if in_path != (set(request.model_fields) if method == "GET" else set()):
            raise ValueError(f"{method} {path}: a GET names every field of its request in the path, a POST none")
        self.method = method
        self.path = path
        self.request = request
        self.answer = answer
        self.answered_by = answered_by
        self._answers = None if answer is None else TypeAdapter(answer)

    def __repr__(self) -> str:
        return f"Call({self.method} {self.path} -> {self.answered_by.__name__})"

    async def ask(self, client: InternalClient, request: Req) -> Ans:
        """The call over HTTP: the answer, or the ``CourierError`` the other side answered (``Unavailable``
        when it cannot be reached or answers something that is not this call's answer)."""
        if self.method == "GET":
            fields = {name: quote(str(value), safe="") for name, value in request.model_dump().items()}
            raw = await client.send("GET", self.path.format_map(fields), None)
        else:
            raw = await client.send("POST", self.path, request.model_dump_json().encode())
        if self._answers is None:
            return cast(Ans, None)  # a call without an answer is a Call[..., None]
        try:
            return self._answers.validate_json(raw)
        except ValidationError as exc:
            raise Unavailable(f"{client.base_url}{self.path} answered what is not its answer") from exc

    def endpoint(self, port: Port, guard: RequireInternal) -> Callable[[Request], Awaitable[Response]]:
        """The route handler answering this call from ``port`` to callers ``guard`` lets through."""

        async def endpoint(request: Request) -> Response:
            await guard(request)
            if self.method == "GET":
                asked = self._read(lambda: self.request.model_validate(request.path_params))
                json = _json(await self.answered_by(port, asked))
            else:
                json = await self.answer_body(port, await request.body())
            if json is None:
                return Response(status_code=204)
            return Response(json, media_type="application/json")

        endpoint.__name__ = self.answered_by.__name__
        return endpoint

    async def answer_body(self, port: Port, body: bytes) -> bytes | None:
        """A POST's answer from ``port`` to the request ``body``: its JSON, or None (204 without a body). Raises
        what the route answers as an error: ``RequestValidationError`` (422), a ``CourierError``."""
        return _json(await self.answered_by(port, self._read(lambda: self.request.model_validate_json(body))))

    def _read(self, validate: Callable[[], Req]) -> Req:
        try:
            return validate()
        except ValidationError as exc:
            where = "path" if self.method == "GET" else "body"
            errors = [{**error, "loc": (where, *error["loc"])} for error in exc.errors(include_url=False)]
            raise RequestValidationError(errors) from exc


def _json(answer: BaseModel | None) -> bytes | None:
    return None if answer is None else answer.model_dump_json().encode()


@overload
def call(
    method: Method, path: str, request: type[Req]
) -> Callable[[Answer[Port, Req, None]], Call[Port, Req, None]]: ...


@overload
def call(
    method: Method, path: str, request: type[Req], answer: type[Ans]
) -> Callable[[Answer[Port, Req, Ans]], Call[Port, Req, Ans]]: ...


def call(
    method: Method, path: str, request: type[Req], answer: type[Ans] | None = None
) -> Callable[[Answer[Port, Req, Ans]], Call[Port, Req, Ans]]:
    """Decorates the function that answers a call from the port: ``@call("POST", path, Request, Answer)``
    over ``async def <port method>(port, request) -> Answer``; without ``answer`` the call answers 204."""

    def define(answered_by: Answer[Port, Req, Ans]) -> Call[Port, Req, Ans]:
        return Call(method, path, request, answer, answered_by)

    return define


def serve(port: Port, guard: RequireInternal, calls: Sequence[Call[Port, Any, Any]]) -> APIRouter:
    """The ``/internal`` router answering ``calls`` from ``port``, for callers with the internal token;
    left out of the OpenAPI schema.

    Its routes are Starlette's own, not FastAPI's: a call reads and checks its request itself, so
    FastAPI's per-request work (solving the guard as a dependency, wrapping the endpoint) would be
    spent for nothing: 59 us of CPU per call against 28 (`python -m bench.internal_call`, docs/performance.md 19).
    The app's error handlers still answer whatever a call raises."""
    router = APIRouter()
    for one in calls:
        endpoint = one.endpoint(port, guard)
        if one.method == "POST":
            _STREAM_ANSWERS[endpoint] = functools.partial(one.answer_body, port)
        router.routes.append(
            Route(one.path, endpoint, methods=[one.method], name=one.answered_by.__name__, include_in_schema=False)
        )
    return router


# The POST routes ``serve`` built, by their endpoint (which an app's ``include_router`` keeps): their answers.
_STREAM_ANSWERS: weakref.WeakKeyDictionary[Callable[..., Any], StreamAnswer] = weakref.WeakKeyDictionary()


def stream_answers(routes: Iterable[BaseRoute]) -> dict[str, StreamAnswer]:
    """The POST calls among an app's ``routes``, by path: what its internal stream answers without the app
    (``StreamServer.answer_calls``). The stream admitted its caller with the internal token when it opened, as
    the route's guard would each request."""
    found: dict[str, StreamAnswer] = {}
    for route in routes:
        endpoint = getattr(route, "endpoint", None)
        answer = _STREAM_ANSWERS.get(endpoint) if callable(endpoint) else None
        if answer is not None and isinstance(route, Route):
            found[route.path] = answer
    return found
