"""Internal calls over long-lived WebSockets (services.common.stream), against a real uvicorn on loopback: calls
share a few streams and each gets its own answer; a request too large for a frame, a server without the route and
a server going away all end in HTTP, and going away drops no answer; a server that stops answering is
Unavailable, never a hang."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel

from services.common import stream
from services.common.contract import call, serve
from services.common.errors import Conflict, Unavailable
from services.common.internal import HEADER, InternalClient
from services.common.stream import STREAMS
from tests.support.loopback import GUARD, TOKEN, internal_service

DEADLINE_S = 30.0


class Echo(BaseModel):
    text: str


class Gate:
    """A port whose answers wait until the test opens it (when closed); it fails a text it was told to."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.entered = 0
        self.failures: dict[str, Exception] = {}

    async def echo(self, text: str) -> str:
        self.entered += 1
        await self.open.wait()
        if text in self.failures:
            raise self.failures[text]
        return text


@call("POST", "/internal/echo", Echo, Echo)
async def echo(gate: Gate, body: Echo) -> Echo:
    return Echo(text=await gate.echo(body.text))


@call("GET", "/internal/echo/{text}", Echo, Echo)
async def echo_path(gate: Gate, ref: Echo) -> Echo:
    return Echo(text=await gate.echo(ref.text))


CALLS = [echo, echo_path]


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(DEADLINE_S):
        while not condition():
            await asyncio.sleep(0.01)


async def test_calls_in_turn_share_one_stream_and_every_call_is_answered_there() -> None:
    async with internal_service(serve(Gate(), GUARD, CALLS)) as served:
        for n in range(20):
            assert await echo.ask(served.client, Echo(text=f"m{n}")) == Echo(text=f"m{n}")
        assert await echo_path.ask(served.client, Echo(text="a b?c#d%2F")) == Echo(text="a b?c#d%2F")
        assert served.streams.answered == 21
        assert served.streams.open_streams == 1
        assert len(served.paths) == 21


async def test_concurrent_calls_open_a_few_streams_and_each_gets_its_own_answer() -> None:
    gate = Gate()
    gate.open.clear()
    async with internal_service(serve(gate, GUARD, CALLS)) as served:
        calls = [asyncio.create_task(echo.ask(served.client, Echo(text=f"m{n}"))) for n in range(60)]
        await _until(lambda: gate.entered == 60)
        assert served.streams.open_streams == STREAMS
        gate.open.set()
        answers = await asyncio.gather(*calls)
        assert [answer.text for answer in answers] == [f"m{n}" for n in range(60)]
        assert served.streams.answered == 60


async def test_a_request_too_large_for_a_frame_goes_over_http() -> None:
    async with internal_service(serve(Gate(), GUARD, CALLS)) as served:
        large = "x" * (stream.MAX_REQUEST_BYTES + 1)
        assert await echo.ask(served.client, Echo(text=large)) == Echo(text=large)
        assert await echo.ask(served.client, Echo(text="small")) == Echo(text="small")
        assert served.streams.answered == 1
        assert len(served.paths) == 2


async def test_a_server_without_the_stream_route_is_called_over_http() -> None:
    async with internal_service(serve(Gate(), GUARD, CALLS), serve_stream=False) as served:
        for n in range(3):
            assert await echo.ask(served.client, Echo(text=f"m{n}")) == Echo(text=f"m{n}")
        assert served.paths == ["/internal/echo"] * 3
        assert served.streams.answered == 0


async def test_a_server_going_away_answers_what_it_was_asked_and_its_client_turns_to_http() -> None:
    gate = Gate()
    gate.open.clear()
    async with internal_service(serve(gate, GUARD, CALLS)) as served:
        asked = asyncio.create_task(echo.ask(served.client, Echo(text="in flight")))
        await _until(lambda: gate.entered == 1)
        going = asyncio.create_task(served.streams.go_away(DEADLINE_S))
        await asyncio.sleep(0)
        assert not going.done()  # waits for the client to close its stream
        gate.open.set()
        assert await asyncio.wait_for(asked, DEADLINE_S) == Echo(text="in flight")
        await asyncio.wait_for(going, DEADLINE_S)
        assert served.streams.open_streams == 0
        assert await echo.ask(served.client, Echo(text="after")) == Echo(text="after")
        assert served.streams.answered == 1  # the call after went over HTTP
        assert len(served.paths) == 2


async def test_a_server_that_stops_answering_is_unavailable_and_its_stream_is_not_used_again() -> None:
    gate = Gate()
    gate.open.clear()
    async with internal_service(serve(gate, GUARD, CALLS)) as served:
        slow = InternalClient(served.url, TOKEN, timeout_s=0.5)
        try:
            with pytest.raises(Unavailable, match="did not answer"):
                await echo.ask(slow, Echo(text="stuck"))
            await _until(lambda: served.streams.open_streams == 0)
            gate.open.set()
            assert await echo.ask(slow, Echo(text="next")) == Echo(text="next")
        finally:
            await slow.close()


def _answered(route: str, status: int) -> float:
    labels = {"service": "test", "method": "POST", "route": route, "status": str(status)}
    return REGISTRY.get_sample_value("courier_http_requests_total", labels) or 0.0


async def test_a_post_call_on_a_stream_answers_as_over_http_and_is_counted_in_the_http_metrics() -> None:
    """POST calls are answered by their Call straight from the frame, not by the app: the same status and body
    as HTTP for an answer, a request that fails validation, a service error and a bug, each counted."""
    gate = Gate()
    gate.failures = {"taken": Conflict("taken already"), "bug": RuntimeError("a bug")}
    bodies = [b'{"text": "hi"}', b'{"text": 7}', b"{not json", b'{"text": "taken"}', b'{"text": "bug"}']
    async with (
        internal_service(serve(gate, GUARD, CALLS)) as served,
        aiohttp.ClientSession(headers={HEADER: TOKEN}) as session,
        httpx.AsyncClient(base_url=served.url, headers={HEADER: TOKEN}) as http,
    ):
        streams = stream.Streams(served.url, lambda: session, timeout_s=DEADLINE_S)
        try:
            before = {status: _answered("/internal/echo", status) for status in (200, 409, 422, 500)}
            on_stream = [await streams.ask("POST", "/internal/echo", {}, body) for body in bodies]
            after = {status: _answered("/internal/echo", status) for status in (200, 409, 422, 500)}
        finally:
            await streams.close()
        over_http = [await http.post("/internal/echo", content=body) for body in bodies]
    assert served.streams.answered == len(bodies)
    assert [status for status, _ in on_stream] == [200, 422, 422, 409, 500]
    assert on_stream == [(answer.status_code, answer.content) for answer in over_http]
    assert {status: after[status] - before[status] for status in after} == {200: 1, 409: 1, 422: 2, 500: 1}
