"""Publish on commit across processes, on SQLite, MariaDB and PostgreSQL: several message-service
replicas share one database and one event log, each hands its commits to its own relay, and every
conversation still reaches the log exactly once and in seq order, whatever the relays' speeds, a
broker that refuses one of them for a while, or a replica that dies with rows handed to it."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import create_engine
from services.common.ids import new_id
from services.message.adapters import sql
from services.message.adapters.memory import MemoryEventLog
from services.message.adapters.sql import SqlMessageStore
from services.message.domain import Message, decode_event
from services.message.ports import Draft, Record, SeqTaken
from services.message.workers import MESSAGES_TOPIC, OutboxRelay
from tests.integration.test_sql_support import SQL_BACKENDS, clean_engine, migrated_database

CONVERSATIONS = 4
PER_REPLICA = 12  # messages each replica sends to each conversation


@pytest.fixture(scope="module", params=SQL_BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database(request.param, tmp_path_factory.mktemp("publish")) as url:
        yield url


class Broker(MemoryEventLog):
    """The event log all replicas share."""


class ReplicaLog:
    """One replica's producer: a pause before each publish (each replica its own), refusals while ``down``."""

    def __init__(self, broker: Broker, pause_s: float) -> None:
        self.broker, self._pause_s = broker, pause_s
        self.down = False

    async def publish(self, records: Sequence[Record]) -> None:
        await asyncio.sleep(self._pause_s)
        if self.down:
            raise ConnectionError("broker unreachable from this replica")
        await self.broker.publish(records)


@dataclasses.dataclass
class Replica:
    store: SqlMessageStore
    relay: OutboxRelay
    log: ReplicaLog


@asynccontextmanager
async def replicas(url: str, pauses: Sequence[float], lease_s: float) -> AsyncIterator[list[Replica]]:
    broker, engines = Broker(), list[AsyncEngine]()
    try:
        built = []
        for pause in pauses:
            engines.append(engine := create_engine(url))
            store, log = SqlMessageStore(engine), ReplicaLog(broker, pause)
            relay = OutboxRelay(store, log, lease_s=lease_s, idle_poll_s=0.05)
            store.publish_on_commit(relay)
            built.append(Replica(store, relay, log))
        yield built
    finally:
        for engine in engines:
            await engine.dispose()


async def send(store: SqlMessageStore, conversation_id: str, sender: str) -> Message:
    """What the send path does: append, and ask again when another replica took the seq."""

    def build(seq: int) -> Message:
        content = {"type": "text", "text": f"{sender} {seq}"}
        return Message(new_id(), conversation_id, seq, sender, "phone", new_id(), content, datetime.now(UTC))

    while True:
        try:
            return await store.append(Draft(conversation_id, build, recipients=[sender]))
        except SeqTaken:
            continue


async def send_all(replica: Replica, conversations: Sequence[str], sender: str, rng: random.Random) -> None:
    order = [cid for cid in conversations for _ in range(PER_REPLICA)]
    rng.shuffle(order)
    for start in range(0, len(order), 4):  # a few sends in flight at once, as from several sockets
        await asyncio.gather(*(send(replica.store, cid, sender) for cid in order[start : start + 4]))


def published(broker: Broker) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = {}
    for record in broker.records(MESSAGES_TOPIC):
        event, _ = decode_event(record.value)
        assert record.key == event.conversation_id
        seqs.setdefault(event.conversation_id, []).append(event.seq)
    return seqs


async def until_published(broker: Broker, total: int, deadline_s: float = 120) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while len(broker.records(MESSAGES_TOPIC)) < total:
        assert loop.time() < end, f"{len(broker.records(MESSAGES_TOPIC))} of {total} published in {deadline_s} s"
        await asyncio.sleep(0.05)


async def traffic(
    group: Sequence[Replica], *, relaying: Sequence[Replica], seed: int, after_sends: Callable[[], None] = lambda: None
) -> tuple[Broker, list[str]]:
    """Every replica of ``group`` sends ``PER_REPLICA`` messages to each conversation while the relays of
    ``relaying`` run; returns once the log holds all of them."""
    broker, conversations, rng = group[0].log.broker, [new_id() for _ in range(CONVERSATIONS)], random.Random(seed)
    tasks = [asyncio.create_task(replica.relay.run()) for replica in relaying]
    try:
        await asyncio.gather(*(send_all(r, conversations, f"user{i}", rng) for i, r in enumerate(group)))
        after_sends()
        await until_published(broker, CONVERSATIONS * PER_REPLICA * len(group))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return broker, conversations


def assert_each_conversation_once_in_order(broker: Broker, conversations: Sequence[str], per_conversation: int) -> None:
    seqs = published(broker)
    assert sorted(seqs) == sorted(conversations)
    for cid in conversations:
        assert seqs[cid] == list(range(1, per_conversation + 1)), f"{cid} reached the log as {seqs[cid]}"


async def test_replicas_publishing_on_commit_keep_every_conversation_once_and_in_order(url: str) -> None:
    async with clean_engine(url) as engine, replicas(url, (0.0, 0.004, 0.011), lease_s=30) as three:
        broker, conversations = await traffic(three, relaying=three, seed=7)
        assert_each_conversation_once_in_order(broker, conversations, PER_REPLICA * 3)
        assert await SqlMessageStore(engine).outbox_stats() == (0, None)


async def test_a_replica_cut_off_from_the_broker_hands_its_rows_to_the_sweep_and_order_holds(url: str) -> None:
    async with clean_engine(url), replicas(url, (0.0, 0.003, 0.0), lease_s=30) as three:
        three[2].log.down = True

        def reconnect() -> None:
            three[2].log.down = False

        broker, conversations = await traffic(three, relaying=three, seed=11, after_sends=reconnect)
        assert_each_conversation_once_in_order(broker, conversations, PER_REPLICA * 3)


async def test_rows_handed_to_a_replica_that_died_are_swept_by_the_others_in_order(url: str) -> None:
    async with clean_engine(url), replicas(url, (0.0, 0.002, 0.0), lease_s=5.0) as three:
        # The third commits, hands its rows over, and never publishes. The lease is short for the test's sake, but
        # long enough that a live relay starved of CPU on a loaded machine is not taken for a dead one.
        broker, conversations = await traffic(three, relaying=three[:2], seed=13)
        assert_each_conversation_once_in_order(broker, conversations, PER_REPLICA * 3)


async def test_without_returning_the_rows_handed_over_are_found_by_their_token(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MySQL has no INSERT ... RETURNING; MariaDB, PostgreSQL and SQLite take the same way when told they lack it.
    monkeypatch.setattr(sql, "returns_inserted", lambda dialect: False)
    async with clean_engine(url), replicas(url, (0.0, 0.005), lease_s=30) as two:
        broker, conversations = await traffic(two, relaying=two, seed=17)
        assert_each_conversation_once_in_order(broker, conversations, PER_REPLICA * 2)


async def test_with_returning_the_rows_handed_over_come_back_from_their_insert(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MariaDB, PostgreSQL and SQLite: the commit reads no outbox id back after its insert (one round trip less).
    def read_back(self: object, size: int) -> object:
        raise AssertionError("the outbox ids were read back after the insert")

    monkeypatch.setattr(sql._CommitStatements, "mine", read_back)
    async with clean_engine(url), replicas(url, (0.0, 0.005), lease_s=30) as two:
        broker, conversations = await traffic(two, relaying=two, seed=19)
        assert_each_conversation_once_in_order(broker, conversations, PER_REPLICA * 2)
        assert all(sql.returns_inserted(replica.store._engine.dialect) for replica in two)  # known once connected
