"""Internal calls over long-lived WebSockets (services.common.stream), against a real uvicorn on loopback: calls
share a few streams and each gets its own answer; a request too large for a frame, a server without the route and
a server going away all end in HTTP, and going away drops no answer; a server that stops answering is
Unavailable, never a hang."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from pydantic import BaseModel

from services.common import stream
from services.common.contract import call, serve
from services.common.errors import Unavailable
from services.common.internal import InternalClient
from services.common.stream import STREAMS
from tests.support.loopback import GUARD, TOKEN, internal_service

DEADLINE_S = 30.0


class Echo(BaseModel):
    text: str


class Gate:
    """A port whose answers wait until the test opens it (when closed)."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.entered = 0

    async def echo(self, text: str) -> str:
        self.entered += 1
        await self.open.wait()
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
        assert len(served.paths) == 21  # through the app's own middleware, as HTTP requests are


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
