"""The generic internal call (services.common.contract): a port's calls served by ``serve`` and asked by
``Call.ask`` on loopback, over the client's internal streams and over HTTP alone; errors come back as the same
exception, a request that fails validation is a 422 in the protocol's error shape, and a GET carries its fields
in the path."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from pydantic import BaseModel, Field

from services.common.contract import Call, call, serve
from services.common.errors import Conflict, CourierError, Forbidden, InvalidRequest, NotFound, RateLimited, Unavailable
from services.common.internal import HEADER, InternalClient
from services.common.stream import STREAMS
from tests.support.loopback import GUARD, TOKEN, internal_service


class Counter:
    """A port: named counters, and an error to raise when asked."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.fail: Exception | None = None

    async def add(self, name: str, by: int) -> int:
        if self.fail is not None:
            raise self.fail
        self.counts[name] = self.counts.get(name, 0) + by
        return self.counts[name]

    async def reset(self, name: str) -> None:
        self.counts.pop(name, None)


class Add(BaseModel):
    name: str
    by: int = Field(ge=1)


class Total(BaseModel):
    total: int


class Name(BaseModel):
    name: str


@call("POST", "/internal/counter/add", Add, Total)
async def add(counter: Counter, body: Add) -> Total:
    return Total(total=await counter.add(body.name, body.by))


@call("GET", "/internal/counter/{name}", Name, Total)
async def total(counter: Counter, ref: Name) -> Total:
    if ref.name not in counter.counts:
        raise NotFound(f"no counter {ref.name}")
    return Total(total=counter.counts[ref.name])


@call("POST", "/internal/counter/reset", Name)
async def reset(counter: Counter, body: Name) -> None:
    await counter.reset(body.name)


CALLS = [add, total, reset]


@pytest.fixture(params=[STREAMS, 0], ids=["stream", "http"])
def streams(request: pytest.FixtureRequest) -> int:
    """Every call below over the client's streams and over HTTP alone: one contract on either transport."""
    count: int = request.param
    return count


async def test_calls_are_served_and_asked(streams: int) -> None:
    counter = Counter()
    async with internal_service(serve(counter, GUARD, CALLS), streams=streams) as served:
        assert await add.ask(served.client, Add(name="a", by=2)) == Total(total=2)
        assert await add.ask(served.client, Add(name="a", by=3)) == Total(total=5)
        assert await total.ask(served.client, Name(name="a")) == Total(total=5)
        assert await reset.ask(served.client, Name(name="a")) is None
        assert counter.counts == {}
        assert served.paths == ["/internal/counter/add"] * 2 + ["/internal/counter/a", "/internal/counter/reset"]


async def test_the_wire_is_plain_json_and_204_without_a_body() -> None:
    counter = Counter()
    async with (
        internal_service(serve(counter, GUARD, CALLS)) as served,
        httpx.AsyncClient(base_url=served.url, headers={HEADER: TOKEN}) as http,
    ):
        added = await http.post("/internal/counter/add", json={"name": "a", "by": 2, "unknown": "ignored"})
        assert (added.status_code, added.json()) == (200, {"total": 2})
        assert added.headers["content-type"] == "application/json"
        got = await http.get("/internal/counter/a")
        assert (got.status_code, got.json()) == (200, {"total": 2})
        gone = await http.post("/internal/counter/reset", json={"name": "a"})
        assert (gone.status_code, gone.content) == (204, b"")


async def test_a_path_field_is_sent_encoded_and_read_back_whole(streams: int) -> None:
    counter = Counter()
    counter.counts["a b?c=1#d%2F"] = 7
    async with internal_service(serve(counter, GUARD, CALLS), streams=streams) as served:
        assert await total.ask(served.client, Name(name="a b?c=1#d%2F")) == Total(total=7)
        with pytest.raises(NotFound, match="no counter a b"):
            await total.ask(served.client, Name(name="a b"))


@pytest.mark.parametrize(
    "error", [NotFound("no such thing"), Conflict("taken"), InvalidRequest("bad"), Unavailable("down")]
)
async def test_an_error_answer_is_raised_again_as_the_same_exception(error: CourierError, streams: int) -> None:
    counter = Counter()
    counter.fail = error
    async with internal_service(serve(counter, GUARD, CALLS), streams=streams) as served:
        with pytest.raises(type(error)) as raised:
            await add.ask(served.client, Add(name="a", by=1))
        assert type(raised.value) is type(error)
        assert raised.value.message == error.message


async def test_an_unexpected_error_is_answered_at_once_as_a_500(streams: int) -> None:
    counter = Counter()
    counter.fail = RuntimeError("a bug")
    async with internal_service(serve(counter, GUARD, CALLS), streams=streams) as served:
        client = InternalClient(served.url, TOKEN, timeout_s=30, streams=streams)
        try:
            async with asyncio.timeout(10):  # answered, not left to the client's timeout
                with pytest.raises(Unavailable, match="internal error"):  # a 500 is Unavailable to the caller
                    await add.ask(client, Add(name="a", by=1))
        finally:
            await client.close()


async def test_rate_limited_keeps_its_class(streams: int) -> None:
    counter = Counter()
    counter.fail = RateLimited("slow down", retry_after=3)
    async with internal_service(serve(counter, GUARD, CALLS), streams=streams) as served:
        with pytest.raises(RateLimited, match="slow down"):
            await add.ask(served.client, Add(name="a", by=1))


async def test_a_request_failing_validation_is_a_422_in_the_protocol_error_shape(streams: int) -> None:
    counter = Counter()
    async with internal_service(serve(counter, GUARD, CALLS), streams=streams) as served:
        async with httpx.AsyncClient(base_url=served.url, headers={HEADER: TOKEN}) as http:
            wrong = await http.post("/internal/counter/add", json={"name": "a", "by": 0})
            missing = await http.post("/internal/counter/add", json={"by": 1})
            malformed = await http.post(
                "/internal/counter/add", content=b"{not json", headers={"content-type": "application/json"}
            )
        for answer in (wrong, missing, malformed):
            assert answer.status_code == 422
            assert set(answer.json()) == {"error"}
            assert answer.json()["error"]["code"] == "invalid_request"
        assert wrong.json()["error"]["message"].startswith("by: ")
        assert missing.json()["error"]["message"].startswith("name: ")
        # ... and a client that sends a body that fails validation gets InvalidRequest.
        with pytest.raises(InvalidRequest, match="by: "):
            await served.client.call("POST", "/internal/counter/add", {"name": "a", "by": -1})
        assert counter.counts == {}


async def test_without_the_internal_token_every_call_is_forbidden(streams: int) -> None:
    counter = Counter()
    async with internal_service(serve(counter, GUARD, CALLS), streams=streams) as served:
        stranger = InternalClient(served.url, "not-the-token", streams=streams)
        try:
            with pytest.raises(Forbidden):
                await add.ask(stranger, Add(name="a", by=1))
            with pytest.raises(Forbidden):
                await total.ask(stranger, Name(name="a"))
        finally:
            await stranger.close()
        assert counter.counts == {}


async def test_an_answer_that_is_not_the_calls_answer_is_unavailable(streams: int) -> None:
    async def not_served(counter: Counter, body: Add) -> Name:
        raise AssertionError("only asked")

    other = Call("POST", "/internal/counter/add", Add, Name, not_served)  # its answer is not add's
    async with internal_service(serve(Counter(), GUARD, CALLS), streams=streams) as served:
        with pytest.raises(Unavailable, match="answered what is not its answer"):
            await other.ask(served.client, Add(name="a", by=1))


async def test_an_unreachable_service_is_unavailable(streams: int) -> None:
    async with internal_service(serve(Counter(), GUARD, CALLS), streams=streams) as served:
        url = served.url
    client = InternalClient(url, TOKEN, timeout_s=2, streams=streams)
    try:
        with pytest.raises(Unavailable, match="unreachable"):
            await add.ask(client, Add(name="a", by=1))
    finally:
        await client.close()


def test_a_get_names_every_field_of_its_request_in_its_path_and_a_post_none() -> None:
    with pytest.raises(ValueError, match="GET"):
        call("GET", "/internal/counter", Name, Total)(total.answered_by)
    with pytest.raises(ValueError, match="POST"):
        call("POST", "/internal/counter/{name}", Name, Total)(total.answered_by)
