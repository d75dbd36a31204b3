"""The message cache contract (tests/unit/message/cache_contract.py) over the harness's real Redis and
over memory side by side, plus what only Redis has: several replicas drawing seqs, a real FLUSHALL in the
middle of traffic, replies lost on the wire, trimming and expiry."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from services.common.errors import Unavailable
from services.common.ids import new_id
from services.message import app
from services.message.adapters.memory import MemoryInbox, MemoryMessageStore, MemorySeqCounter, MemoryTimeline
from services.message.adapters.redis import RedisInbox, RedisSeqCounter, RedisTimeline, connect
from services.message.ports import Conversation, Inbox, SeqCounter, Timeline
from tests.harness.infra import cli_module

# The contract's test functions, collected here again over this module's fixtures.
from tests.unit.message.cache_contract import *  # noqa: F403
from tests.unit.message.cache_contract import T0, TIMELINE_KEEP, LoseCache, Seed, message

DEADLINE_S = 30.0


@pytest.fixture(params=["memory", "redis"])
def adapter(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def counter(adapter: str, redis_client: Redis, unique_prefix: str) -> SeqCounter:
    if adapter == "memory":
        return MemorySeqCounter()
    return RedisSeqCounter(redis_client, prefix=unique_prefix)


@pytest.fixture
def inbox(adapter: str, redis_client: Redis, unique_prefix: str) -> Inbox:
    if adapter == "memory":
        return MemoryInbox()
    return RedisInbox(redis_client, prefix=unique_prefix)


@pytest.fixture
def timeline(adapter: str, redis_client: Redis, unique_prefix: str) -> Timeline:
    if adapter == "memory":
        return MemoryTimeline(keep=TIMELINE_KEEP)
    return RedisTimeline(redis_client, prefix=unique_prefix, keep=TIMELINE_KEEP, ttl_s=3600)


@pytest.fixture
def lose_cache(counter: SeqCounter, inbox: Inbox, redis_client: Redis, unique_prefix: str) -> LoseCache:
    """Memory forgets; Redis loses every key of this test, which is what a FLUSHALL does to it without
    wiping the keys of the other tests sharing the server (test_flushall_... below runs a real one)."""

    async def lose() -> None:
        if isinstance(counter, MemorySeqCounter) and isinstance(inbox, MemoryInbox):
            counter.forget()
            inbox.forget()
            return
        keys = [key async for key in redis_client.scan_iter(match=f"{unique_prefix}*", count=1000)]
        if keys:
            await redis_client.delete(*keys)

    return lose


# --- a private Redis for FLUSHALL, and a proxy that loses replies -----------------------------------


@pytest.fixture
def private_redis_url(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test alone (the harness's Debian binary, on a unix socket), so that FLUSHALL
    does not wipe the keys of tests running at the same time on the shared server."""
    binary = cli_module().find_binary("redis-server")
    assert binary, "the harness installed no redis-server"
    socket = tmp_path / "redis.sock"
    command = [
        binary, "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700", "--dir", str(tmp_path),
        "--save", "", "--appendonly", "no", "--logfile", str(tmp_path / "redis.log"),
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_ping(socket, server)
        yield f"unix://{socket}"
    finally:
        server.terminate()
        server.wait(timeout=DEADLINE_S)


def wait_for_ping(socket: Path, server: subprocess.Popen[bytes]) -> None:
    """Poll until the server answers, within a generous deadline."""
    cli = cli_module().find_binary("redis-cli")
    assert cli, "the harness installed no redis-cli"
    until = time.monotonic() + DEADLINE_S
    while time.monotonic() < until:
        assert server.poll() is None, f"private redis-server exited {server.returncode}"
        if socket.exists():
            ping = subprocess.run([cli, "-s", str(socket), "PING"], capture_output=True, text=True, check=False)
            if ping.stdout.strip() == "PONG":
                return
        time.sleep(0.05)
    raise AssertionError(f"private redis-server did not answer PING within {DEADLINE_S} s")


class ReplyDroppingProxy:
    """A TCP proxy in front of Redis that can swallow the next ``drop_replies`` replies, closing the
    connection each time: a command the server ran whose reply never reached the client."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._server: asyncio.Server | None = None
        self.drop_replies = 0
        self.port = 0

    async def __aenter__(self) -> ReplyDroppingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self._upstream)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            try:
                while data := await src.read(65536):
                    if replies and self.drop_replies > 0:
                        self.drop_replies -= 1
                        return
                    dst.write(data)
                    await dst.drain()
            except OSError:
                return
            finally:
                for writer in (client_w, server_w):
                    writer.close()

        await asyncio.gather(pump(client_r, server_w, False), pump(server_r, client_w, True))


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[ReplyDroppingProxy]:
    address = urlsplit(redis_url)
    assert address.hostname and address.port
    async with ReplyDroppingProxy(address.hostname, address.port) as running:
        yield running


def retrying_client(port: int) -> Redis:
    """What redis-py does by default (retry a command whose connection broke), with short pauses."""
    return Redis(host="127.0.0.1", port=port, retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 3))


# --- the seq counter -------------------------------------------------------------------------------


async def test_draws_of_several_replicas_are_distinct_and_consecutive(redis_url: str, unique_prefix: str) -> None:
    clients = [connect(redis_url) for _ in range(4)]
    counters = [RedisSeqCounter(client, prefix=unique_prefix) for client in clients]
    cid, seed = new_id(), Seed(7)
    try:
        seqs = await asyncio.gather(*(counters[i % 4].next(cid, seed=seed) for i in range(240)))
    finally:
        for client in clients:
            await client.aclose()

    assert sorted(seqs) == list(range(8, 248))


async def test_draw_whose_reply_was_lost_and_retried_hands_out_the_same_seq(
    proxy: ReplyDroppingProxy, redis_client: Redis, unique_prefix: str
) -> None:
    client = retrying_client(proxy.port)
    counter, cid = RedisSeqCounter(client, prefix=unique_prefix), new_id()
    try:
        first = [await counter.next(cid, seed=Seed(0)) for _ in range(3)]
        proxy.drop_replies = 1  # the fourth draw runs on the server, its reply is lost, redis-py retries it

        retried = await counter.next(cid, seed=Seed(3))
        after = await counter.next(cid, seed=Seed(4))
    finally:
        await client.aclose()

    assert [*first, retried, after] == [1, 2, 3, 4, 5]
    assert await redis_client.hget(f"{unique_prefix}seq:{cid}", "n") == b"5"


async def test_draw_that_failed_without_an_answer_is_not_skipped(proxy: ReplyDroppingProxy, unique_prefix: str) -> None:
    client = retrying_client(proxy.port)
    counter, cid = RedisSeqCounter(client, prefix=unique_prefix), new_id()
    try:
        for _ in range(3):
            await counter.next(cid, seed=Seed(0))
        proxy.drop_replies = 100  # every attempt and reconnection is cut: the draw may or may not have run
        with pytest.raises(Unavailable, match="redis is unreachable"):
            await counter.next(cid, seed=Seed(3))
        proxy.drop_replies = 0

        seed = Seed(3)  # nothing past 3 was committed
        after = await counter.next(cid, seed=seed)
    finally:
        await client.aclose()

    assert after == 4
    assert seed.calls == 1


async def test_flushall_mid_traffic_loses_no_seq_and_reuses_none(private_redis_url: str) -> None:
    """Two message-service replicas send into shared conversations; Redis loses everything halfway.
    Every acknowledged send is stored once, and each conversation holds seqs 1..N without a gap."""
    store, conversations = MemoryMessageStore(), StaticConversations()
    cids = [conversations.add("alice", "bob") for _ in range(3)]
    clients = [connect(private_redis_url) for _ in range(2)]
    replicas = [replica(store, conversations, RedisSeqCounter(client)) for client in clients]
    flushed = asyncio.Event()
    acked: dict[str, list[int]] = {cid: [] for cid in cids}

    async def sender(n: int) -> None:
        for i in range(60):
            if n == 0 and i == 30:
                await clients[0].flushall()
                flushed.set()
            cid = cids[(n + i) % len(cids)]
            sent = await app.send_message(
                app.SendMessage(cid, "alice", f"d{n}", f"m-{n}-{i}", {"type": "text", "text": "hi"}),
                deps=replicas[n % 2],
            )
            acked[cid].append(sent.message.seq)

    try:
        await asyncio.gather(*(sender(n) for n in range(6)))
    finally:
        for client in clients:
            await client.aclose()

    assert flushed.is_set()
    for cid in cids:
        stored = [m.seq for m in (await store.page(cid, after_seq=0, before_seq=None, limit=1000)).messages]
        assert stored == list(range(1, len(stored) + 1))
        assert sorted(acked[cid]) == stored


class StaticConversations:
    def __init__(self) -> None:
        self.by_id: dict[str, Conversation] = {}

    def add(self, *members: str) -> str:
        cid = new_id()
        self.by_id[cid] = Conversation(cid, dict.fromkeys(members, "member"), large=False)
        return cid

    async def get(self, conversation_id: str) -> Conversation | None:
        return self.by_id.get(conversation_id)

    async def conversation_ids(self, user_id: str) -> list[str]:
        return [cid for cid, conversation in self.by_id.items() if user_id in conversation.roles]


class NoFiles:
    async def attach(self, file_id: str, conversation_id: str, user_id: str) -> dict[str, Any]:
        raise AssertionError("no file messages in these tests")


def replica(store: MemoryMessageStore, conversations: StaticConversations, counter: SeqCounter) -> app.MessageDeps:
    """One message-service process: its own counter client and its own conversation locks."""
    return app.MessageDeps(
        store=store,
        counter=counter,
        conversations=conversations,
        files=NoFiles(),
        locks=app.ConversationLocks(),
        limits=app.Limits(max_text_length=100, recall_window_s=120, edit_window_s=3600),
    )


async def test_counters_expire_when_idle_and_are_kept_while_used(redis_client: Redis, unique_prefix: str) -> None:
    counter, cid = RedisSeqCounter(redis_client, prefix=unique_prefix, idle_ttl_s=600), new_id()

    await counter.next(cid, seed=Seed(0))
    await counter.next(cid, seed=Seed(0))

    assert 0 < await redis_client.ttl(f"{unique_prefix}seq:{cid}") <= 600


# --- inbox and timeline ----------------------------------------------------------------------------


async def test_inbox_keeps_one_hash_per_user_that_expires_when_idle(redis_client: Redis, unique_prefix: str) -> None:
    inbox, a, b, bob = RedisInbox(redis_client, prefix=unique_prefix, idle_ttl_s=900), new_id(), new_id(), new_id()

    await inbox.bump([bob], a, seq=1, last_message=message(1), at=T0, reader_id=None)
    await inbox.bump([bob], b, seq=4, last_message=message(4), at=T0, reader_id=bob)

    key = f"{unique_prefix}inbox:{bob}"
    assert await redis_client.keys(f"{unique_prefix}*") == [key.encode()]
    assert await redis_client.hget(key, f"max:{b}") == b"4"
    assert 0 < await redis_client.ttl(key) <= 900


async def test_timeline_keeps_the_newest_events_and_expires_when_idle(redis_client: Redis, unique_prefix: str) -> None:
    timeline, cid = RedisTimeline(redis_client, prefix=unique_prefix, keep=5, ttl_s=1200), new_id()

    for seq in range(1, 13):
        await timeline.append(cid, seq=seq, message=message(seq), at=T0)

    key = f"{unique_prefix}timeline:{cid}"
    kept = await redis_client.zrange(key, 0, -1, withscores=True)
    assert [int(entry[1]) for entry in kept] == [8, 9, 10, 11, 12]
    assert 0 < await redis_client.ttl(key) <= 1200


async def test_bump_of_more_members_than_one_script_call_takes_reaches_them_all(
    redis_client: Redis, unique_prefix: str
) -> None:
    inbox, cid = RedisInbox(redis_client, prefix=unique_prefix), new_id()
    members = [new_id() for _ in range(1201)]

    await inbox.bump(members, cid, seq=3, last_message=message(3), at=T0, reader_id=members[600])

    entries = [found[cid] for found in await asyncio.gather(*(inbox.entries(user, [cid]) for user in members))]
    assert {entry.max_seq for entry in entries} == {3}
    assert [i for i, entry in enumerate(entries) if entry.unread == 0] == [600]
