"""The MessageStore contract, run on the memory store and on SQL over SQLite, MariaDB and PostgreSQL.

Each SQL backend is a fresh database upgraded by ``services.migrate`` and emptied before every test; the
memory store needs no server, so ``-k memory`` runs without the harness.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from services.common import db
from services.common.clock import utcnow
from services.common.db import create_engine
from services.common.ids import new_id
from services.message.adapters.memory import MemoryMessageStore
from services.message.adapters.sql import SEQ_RETRIES, SqlMessageStore, _columns, messages
from services.message.domain import Message, encode_event
from services.message.ports import ClientMsgIdTaken, Draft, MessageStore, SeqTaken
from tests.integration.test_sql_support import SERVER_BACKENDS, SQL_BACKENDS, clean_engine, migrated_database

T0 = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)


@dataclass
class Stores:
    """The store under test, and a way to open another one on the same data (a second replica)."""

    store: MessageStore
    open_replica: Callable[[], Awaitable[MessageStore]]


@pytest.fixture(scope="module", params=("memory", *SQL_BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    if request.param == "memory":
        yield "memory", ""
        return
    with migrated_database(request.param, tmp_path_factory.mktemp("message")) as url:
        yield request.param, url


@pytest.fixture
async def stores(backend: tuple[str, str]) -> AsyncIterator[Stores]:
    name, url = backend
    if name == "memory":
        memory = MemoryMessageStore()

        async def same() -> MessageStore:
            return memory

        yield Stores(memory, same)
        return
    replicas = []

    async def open_replica() -> MessageStore:
        engine = create_engine(url)
        replicas.append(engine)
        return SqlMessageStore(engine)

    async with clean_engine(url) as engine:
        try:
            yield Stores(SqlMessageStore(engine), open_replica)
        finally:
            for replica in replicas:
                await replica.dispose()


@pytest.fixture
def store(stores: Stores) -> MessageStore:
    return stores.store


def message(conversation_id: str, seq: int, *, sender: str = "alice", client_msg_id: str | None = None) -> Message:
    return Message(
        message_id=new_id(),
        conversation_id=conversation_id,
        seq=seq,
        sender_id=sender,
        sender_device_id="phone",
        client_msg_id=client_msg_id or f"c-{new_id()}",
        content={"type": "text", "text": f"message {seq} ✓ ünïcode 🚀"},
        created_at=T0 + timedelta(seconds=seq),
    )


async def put(store: MessageStore, event: Message, *, replace: Message | None = None) -> Message:
    """Append ``event`` with whatever seq the store gives it (the expected one, where a test wrote it)."""
    return await store.append(
        Draft(event.conversation_id, lambda seq: dataclasses.replace(event, seq=seq), replace=replace)
    )


async def append_many(store: MessageStore, conversation_id: str, count: int, *, sender: str = "alice") -> list[Message]:
    stored = [message(conversation_id, seq, sender=sender) for seq in range(1, count + 1)]
    for event in stored:
        await put(store, event)
    return stored


def payload_of(event: Message) -> bytes:
    return encode_event(event)


def seqs(messages: list[Message]) -> list[int]:
    return [m.seq for m in messages]


async def test_appended_message_reads_back_equal_by_seq_and_client_id(store: MessageStore) -> None:
    cid = new_id()
    event = replace(message(cid, 1), content={"type": "text", "text": "hé 🚀", "mentions": ["bob"], "n": 1.5})

    await put(store, event)

    assert await store.get(cid, 1) == event
    assert await store.find_by_client_id(event.sender_id, event.client_msg_id) == event
    found = await store.get(cid, 1)
    assert found is not None
    assert found.created_at == T0 + timedelta(seconds=1)
    assert found.created_at.utcoffset() == timedelta(0)
    assert await store.get(cid, 2) is None
    assert await store.find_by_client_id(event.sender_id, "unknown") is None


async def test_a_message_larger_than_64_kib_reads_back_whole(store: MessageStore) -> None:
    cid = new_id()
    event = replace(message(cid, 1), content={"type": "text", "text": "é" * 70_000})

    await put(store, event)

    assert await store.get(cid, 1) == event
    claimed = await store.claim_outbox(limit=10, lease_s=60)
    assert [record.payload for record in claimed] == [payload_of(event)]


async def test_appends_to_one_conversation_take_its_next_seqs_and_the_sender_reads_them(store: MessageStore) -> None:
    cid, other = new_id(), new_id()
    await append_many(store, other, 2)

    stored = [await put(store, message(cid, 99, sender=sender)) for sender in ("alice", "bob", "alice")]

    assert seqs(stored) == [1, 2, 3]
    assert [await store.get(cid, seq) for seq in (1, 2, 3)] == stored
    assert await store.read_seqs("alice", [cid]) == {cid: 3}
    assert await store.read_seqs("bob", [cid]) == {cid: 2}
    assert await store.max_seq(other) == 2


async def test_an_event_carries_its_recipients_to_the_outbox(store: MessageStore) -> None:
    cid = new_id()
    event = message(cid, 1)

    await store.append(Draft(cid, lambda seq: replace(event, seq=seq), recipients=["alice", "bob"]))

    [record] = await store.claim_outbox(limit=10, lease_s=60)
    assert record.payload == encode_event(event, ["alice", "bob"])


async def test_reusing_a_client_msg_id_raises_client_msg_id_taken_and_stores_nothing(store: MessageStore) -> None:
    cid = new_id()
    first = message(cid, 1, client_msg_id="retry-1")
    await put(store, first)

    with pytest.raises(ClientMsgIdTaken):
        await put(store, message(cid, 2, client_msg_id="retry-1"))

    assert await store.find_by_client_id("alice", "retry-1") == first
    assert await store.get(cid, 2) is None
    assert await store.max_seq(cid) == 1
    assert (await store.outbox_stats())[0] == 1


async def test_the_same_client_msg_id_of_another_sender_is_another_message(store: MessageStore) -> None:
    cid = new_id()
    await put(store, message(cid, 1, sender="alice", client_msg_id="same"))

    await put(store, message(cid, 2, sender="bob", client_msg_id="same"))

    assert await store.max_seq(cid) == 2


async def test_client_msg_ids_differing_only_in_case_are_different_messages(store: MessageStore) -> None:
    cid = new_id()
    await put(store, message(cid, 1, client_msg_id="Msg-A"))

    await put(store, message(cid, 2, client_msg_id="msg-a"))

    upper, lower = await store.find_by_client_id("alice", "Msg-A"), await store.find_by_client_id("alice", "msg-a")
    assert upper is not None
    assert lower is not None
    assert (upper.seq, lower.seq) == (1, 2)


async def test_concurrent_lookups_each_get_their_own_message_or_none(store: MessageStore) -> None:
    cid = new_id()
    stored = [message(cid, seq, sender=f"user{seq % 3}", client_msg_id=f"burst-{seq}") for seq in range(1, 9)]
    for event in stored:
        await put(store, event)
    asked = [(e.sender_id, e.client_msg_id) for e in stored] + [("user0", "burst-2"), ("nobody", "burst-1")]

    found = await asyncio.gather(*(store.find_by_client_id(sender, cmid) for sender, cmid in asked))

    assert found == [*stored, None, None]  # burst-2 was sent by user2, not user0


async def test_concurrent_appends_to_one_conversation_take_distinct_consecutive_seqs(store: MessageStore) -> None:
    cid = new_id()
    contenders = [message(cid, 1, sender=f"user{i}") for i in range(6)]

    stored = await asyncio.gather(*(put(store, event) for event in contenders))

    assert sorted(seqs(stored)) == [1, 2, 3, 4, 5, 6]
    page = await store.page(cid, after_seq=0, before_seq=None, limit=10)
    assert page.messages == sorted(stored, key=lambda m: m.seq)
    assert (await store.outbox_stats())[0] == 6


async def test_concurrent_appends_of_one_client_msg_id_store_exactly_one(store: MessageStore) -> None:
    # One conversation each, so only the (sender_id, client_msg_id) key can refuse them.
    contenders = [message(new_id(), 1, client_msg_id="once") for _ in range(6)]

    results = await asyncio.gather(*(put(store, event) for event in contenders), return_exceptions=True)

    assert sum(isinstance(result, Message) for result in results) == 1
    assert all(isinstance(result, ClientMsgIdTaken) for result in results if not isinstance(result, Message))
    stored = await store.find_by_client_id("alice", "once")
    assert stored in contenders
    assert (await store.outbox_stats())[0] == 1


async def test_concurrent_appends_to_many_conversations_each_get_their_own_answer(store: MessageStore) -> None:
    # Sends arriving together are committed together (group commit); one resend among them must
    # refuse only itself.
    resent = message(new_id(), 1, client_msg_id="resent")
    first = await put(store, resent)
    fine = [message(new_id(), 1) for _ in range(20)]
    contenders = [*fine[:10], replace(resent, message_id=new_id()), *fine[10:]]

    results = await asyncio.gather(*(put(store, event) for event in contenders), return_exceptions=True)

    answers = dict(zip((event.message_id for event in contenders), results, strict=True))
    assert isinstance(answers[contenders[10].message_id], ClientMsgIdTaken)
    assert all(answers[event.message_id] == event for event in fine)
    for event in fine:
        assert await store.get(event.conversation_id, 1) == event
        assert (await store.read_seqs("alice", [event.conversation_id])) == {event.conversation_id: 1}
    assert await store.max_seq(resent.conversation_id) == 1
    claimed = await store.claim_outbox(limit=100, lease_s=60)
    assert sorted(record.payload for record in claimed) == sorted(payload_of(e) for e in [first, *fine])


async def test_append_with_replace_rewrites_the_target_in_the_same_transaction(store: MessageStore) -> None:
    cid = new_id()
    (target,) = await append_many(store, cid, 1)
    recalled = replace(target, content={"type": "text", "text": ""}, recalled=True)
    tombstone = replace(message(cid, 2), content={"type": "recall", "target_seq": 1})

    await put(store, tombstone, replace=recalled)

    assert await store.get(cid, 1) == recalled
    assert await store.get(cid, 2) == tombstone
    assert await store.find_by_client_id(target.sender_id, target.client_msg_id) == recalled
    edited = replace(target, content={"type": "text", "text": "better"}, edited=True)
    await put(store, replace(message(cid, 3), content={"type": "edit", "target_seq": 1}), replace=edited)
    assert await store.get(cid, 1) == edited


async def test_a_failed_append_leaves_the_replace_target_untouched(store: MessageStore) -> None:
    cid = new_id()
    target, second = await append_many(store, cid, 2)
    recalled = replace(target, content={"type": "text", "text": ""}, recalled=True)
    tombstone = replace(
        message(cid, 3, client_msg_id=second.client_msg_id), content={"type": "recall", "target_seq": 1}
    )

    with pytest.raises(ClientMsgIdTaken):
        await put(store, tombstone, replace=recalled)

    assert await store.get(cid, 1) == target
    assert (await store.outbox_stats())[0] == 2


async def test_append_moves_the_senders_read_cursor_forward_only(store: MessageStore) -> None:
    cid = new_id()
    await store.set_read(cid, "alice", 5)

    await append_many(store, cid, 3)
    assert await store.read_seqs("alice", [cid]) == {cid: 5}

    for seq in range(4, 8):
        await put(store, message(cid, seq))
    assert await store.read_seqs("alice", [cid]) == {cid: 7}
    assert await store.read_seqs("bob", [cid]) == {}


async def test_max_seq_is_the_high_water_mark_and_zero_when_empty(store: MessageStore) -> None:
    cid, other = new_id(), new_id()
    await append_many(store, cid, 5)
    await append_many(store, other, 9)

    assert await store.max_seq(cid) == 5
    assert await store.max_seq(new_id()) == 0
    assert await store.max_seqs([cid, other, "empty"]) == {cid: 5, other: 9}
    assert await store.max_seqs([]) == {}


async def test_last_messages_are_the_newest_of_each_conversation(store: MessageStore) -> None:
    first, second = new_id(), new_id()
    newest_first = (await append_many(store, first, 3))[-1]
    newest_second = (await append_many(store, second, 5))[-1]

    found = await store.last_messages([first, second, "empty"])

    assert found == {first: newest_first, second: newest_second}
    assert await store.last_messages([]) == {}


async def test_last_messages_of_many_conversations_are_all_found(store: MessageStore) -> None:
    conversations = [new_id() for _ in range(205)]
    for cid in conversations:
        await put(store, message(cid, 1))

    found = await store.last_messages(conversations)

    assert set(found) == set(conversations)
    assert all(found[cid].conversation_id == cid for cid in conversations)


async def test_page_without_bounds_is_the_newest_ascending(store: MessageStore) -> None:
    cid = new_id()
    stored = await append_many(store, cid, 10)
    await append_many(store, new_id(), 3)

    page = await store.page(cid, after_seq=None, before_seq=None, limit=3)

    assert page.messages == stored[7:]
    assert page.has_more is True
    whole = await store.page(cid, after_seq=None, before_seq=None, limit=10)
    assert (seqs(whole.messages), whole.has_more) == (list(range(1, 11)), False)


async def test_page_before_a_seq_walks_back_in_time(store: MessageStore) -> None:
    cid = new_id()
    await append_many(store, cid, 10)

    older = await store.page(cid, after_seq=None, before_seq=5, limit=3)
    oldest = await store.page(cid, after_seq=None, before_seq=4, limit=3)
    nothing = await store.page(cid, after_seq=None, before_seq=1, limit=3)

    assert (seqs(older.messages), older.has_more) == ([2, 3, 4], True)
    assert (seqs(oldest.messages), oldest.has_more) == ([1, 2, 3], False)
    assert (nothing.messages, nothing.has_more) == ([], False)


async def test_page_after_a_seq_walks_forward_in_time(store: MessageStore) -> None:
    cid = new_id()
    await append_many(store, cid, 10)

    first = await store.page(cid, after_seq=0, before_seq=None, limit=4)
    last = await store.page(cid, after_seq=6, before_seq=None, limit=4)
    past = await store.page(cid, after_seq=10, before_seq=None, limit=4)

    assert (seqs(first.messages), first.has_more) == ([1, 2, 3, 4], True)
    assert (seqs(last.messages), last.has_more) == ([7, 8, 9, 10], False)
    assert (past.messages, past.has_more) == ([], False)


async def test_page_between_two_seqs_stays_inside_them(store: MessageStore) -> None:
    cid = new_id()
    await append_many(store, cid, 10)

    inside = await store.page(cid, after_seq=2, before_seq=6, limit=10)
    cut = await store.page(cid, after_seq=2, before_seq=6, limit=2)

    assert (seqs(inside.messages), inside.has_more) == ([3, 4, 5], False)
    assert (seqs(cut.messages), cut.has_more) == ([3, 4], True)


async def test_page_of_an_unknown_conversation_is_empty(store: MessageStore) -> None:
    page = await store.page(new_id(), after_seq=None, before_seq=None, limit=50)

    assert (page.messages, page.has_more) == ([], False)


async def test_set_read_only_moves_forward_and_returns_the_cursor(store: MessageStore) -> None:
    cid = new_id()

    assert await store.set_read(cid, "bob", 5) == 5
    assert await store.set_read(cid, "bob", 3) == 5
    assert await store.set_read(cid, "bob", 5) == 5
    assert await store.set_read(cid, "bob", 8) == 8
    assert await store.read_seqs("bob", [cid]) == {cid: 8}


async def test_concurrent_set_reads_keep_the_largest(store: MessageStore) -> None:
    cid = new_id()

    await asyncio.gather(*(store.set_read(cid, "bob", seq) for seq in (4, 20, 7, 1, 13, 19, 2, 11)))

    assert await store.read_seqs("bob", [cid]) == {cid: 20}


async def test_read_seqs_are_the_users_own_cursors_in_the_asked_conversations(store: MessageStore) -> None:
    first, second, third = new_id(), new_id(), new_id()
    await store.set_read(first, "bob", 3)
    await store.set_read(second, "bob", 9)
    await store.set_read(first, "carol", 7)
    await store.set_read(third, "bob", 1)

    assert await store.read_seqs("bob", [first, second, "unread"]) == {first: 3, second: 9}
    assert await store.read_seqs("carol", [first, second]) == {first: 7}
    assert await store.read_seqs("bob", []) == {}


async def test_outbox_rows_are_claimed_oldest_first_once_per_lease(store: MessageStore) -> None:
    cid = new_id()
    stored = await append_many(store, cid, 5)

    claimed = await store.claim_outbox(limit=3, lease_s=60)
    # The rest of the conversation waits until its earlier rows are published: order per conversation.
    assert await store.claim_outbox(limit=10, lease_s=60) == []
    await store.delete_outbox([r.outbox_id for r in claimed])
    rest = await store.claim_outbox(limit=10, lease_s=60)

    assert [r.payload for r in claimed] == [payload_of(m) for m in stored[:3]]
    assert [r.payload for r in rest] == [payload_of(m) for m in stored[3:]]
    assert all(r.conversation_id == cid for r in claimed + rest)
    ids = [r.outbox_id for r in claimed + rest]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    assert await store.claim_outbox(limit=10, lease_s=60) == []


async def test_a_conversation_held_by_one_relay_does_not_hold_back_the_others(store: MessageStore) -> None:
    held, other = new_id(), new_id()
    await append_many(store, held, 2)
    first = await store.claim_outbox(limit=1, lease_s=60)
    await append_many(store, other, 2)

    second = await store.claim_outbox(limit=10, lease_s=60)

    assert [r.conversation_id for r in first] == [held]
    assert [r.conversation_id for r in second] == [other, other]


async def test_an_expired_lease_is_claimable_again(store: MessageStore) -> None:
    await append_many(store, new_id(), 2)

    # A zero lease has run out by the next claim: the relay that took it died before publishing.
    first = await store.claim_outbox(limit=10, lease_s=0)
    again = await store.claim_outbox(limit=10, lease_s=60)

    assert [r.outbox_id for r in again] == [r.outbox_id for r in first]
    assert len(first) == 2
    assert await store.claim_outbox(limit=10, lease_s=60) == []


async def test_concurrent_relays_publish_every_row_once_and_each_conversation_in_order(stores: Stores) -> None:
    conversations = [new_id() for _ in range(3)]
    for cid in conversations:
        await append_many(stores.store, cid, 20)
    replicas = [stores.store, *[await stores.open_replica() for _ in range(3)]]
    published: list[tuple[str, int]] = []

    async def relay(index: int, replica: MessageStore) -> None:
        # Each relay publishes after a different pause, so a faster one would overtake a slower one if it could.
        idle = 0
        while idle < 3:
            batch = await replica.claim_outbox(limit=4, lease_s=60)
            if not batch:
                idle += 1
                await asyncio.sleep(0.01)
                continue
            idle = 0
            await asyncio.sleep(0.005 * (index % 2))
            published.extend((record.conversation_id, record.outbox_id) for record in batch)
            await replica.delete_outbox([record.outbox_id for record in batch])

    await asyncio.gather(*(relay(i, replica) for i, replica in enumerate(replicas)))
    while batch := await stores.store.claim_outbox(limit=100, lease_s=60):  # what the relays left when they idled
        published.extend((record.conversation_id, record.outbox_id) for record in batch)
        await stores.store.delete_outbox([record.outbox_id for record in batch])

    assert len(published) == 60
    assert len(set(published)) == 60
    for cid in conversations:
        ids = [outbox_id for c, outbox_id in published if c == cid]
        assert ids == sorted(ids), f"{cid} published out of order: {ids}"


async def test_deleted_outbox_rows_are_gone_and_others_stay(store: MessageStore) -> None:
    await append_many(store, new_id(), 4)
    claimed = await store.claim_outbox(limit=10, lease_s=0)

    await store.delete_outbox([claimed[0].outbox_id, claimed[2].outbox_id])
    await store.delete_outbox([])
    await store.delete_outbox([claimed[0].outbox_id])

    left = await store.claim_outbox(limit=10, lease_s=60)
    assert [r.outbox_id for r in left] == [claimed[1].outbox_id, claimed[3].outbox_id]


async def test_outbox_stats_count_the_backlog_and_date_its_oldest_row(store: MessageStore) -> None:
    assert await store.outbox_stats() == (0, None)
    before = utcnow()
    await append_many(store, new_id(), 3)
    after = utcnow()

    count, oldest = await store.outbox_stats()

    assert count == 3
    assert oldest is not None
    assert oldest.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= oldest <= after
    claimed = await store.claim_outbox(limit=10, lease_s=60)
    await store.delete_outbox([r.outbox_id for r in claimed])
    assert await store.outbox_stats() == (0, None)


async def test_booleans_and_times_survive_the_round_trip(store: MessageStore) -> None:
    cid = new_id()
    event = replace(message(cid, 1), recalled=True, edited=True, created_at=T0)

    await put(store, event)

    found = await store.get(cid, 1)
    assert found is not None
    assert (found.recalled, found.edited) == (True, True)
    assert found.created_at == T0


async def test_replicas_racing_for_next_seqs_store_one_to_n_without_gaps(stores: Stores) -> None:
    # Two replicas append to one conversation at once, each retrying on SeqTaken as the send path does:
    # every append commits once, and the seqs are 1..N.
    cid = new_id()
    replicas = [stores.store, await stores.open_replica()]
    each = 15

    async def send(replica: MessageStore, sender: str) -> list[int]:
        stored = []
        for _ in range(each):
            while True:
                try:
                    stored.append((await put(replica, message(cid, 0, sender=sender))).seq)
                    break
                except SeqTaken:
                    continue  # the other replica took it; ask again
        return stored

    sent = await asyncio.gather(send(replicas[0], "alice"), send(replicas[1], "bob"))

    page = await stores.store.page(cid, after_seq=0, before_seq=None, limit=100)
    assert seqs(page.messages) == list(range(1, 2 * each + 1))
    assert sorted(sent[0] + sent[1]) == list(range(1, 2 * each + 1))
    assert (await stores.store.outbox_stats())[0] == 2 * each


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database("sqlite", tmp_path_factory.mktemp("deadlock")) as url:
        yield url


def deadlocking(store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch, *, times: int = 1) -> None:
    """The store's next ``times`` transactions are chosen as a deadlock's victim, as MariaDB ends two replicas
    inserting the same next seq of a conversation (InnoDB's insert locks on the unique key), rather than with a
    duplicate key."""
    commit = store._commit  # the transaction under test
    victims = [True] * times

    async def once(batch: Any) -> list[Message]:
        if victims and victims.pop():
            async with db.outage_is_unavailable("message"):
                raise sa_exc.OperationalError("INSERT INTO message_messages", {}, Exception(1213, "Deadlock found"))
        return await commit(batch)

    monkeypatch.setattr(store, "_commit", once)


async def test_a_deadlocked_append_is_a_seq_taken_which_the_store_asks_again(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with clean_engine(sqlite_url) as engine:
        store = SqlMessageStore(engine)
        deadlocking(store, monkeypatch)
        cid = new_id()
        assert (await put(store, message(cid, 0))).seq == 1
        assert (await put(store, message(cid, 0))).seq == 2


async def test_an_append_whose_seq_keeps_being_taken_is_refused_with_nothing_stored(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with clean_engine(sqlite_url) as engine:
        store = SqlMessageStore(engine)
        deadlocking(store, monkeypatch, times=SEQ_RETRIES)
        cid = new_id()
        with pytest.raises(SeqTaken):
            await put(store, message(cid, 0))
        assert await store.max_seq(cid) == 0


async def test_a_deadlocked_group_commit_answers_each_append_on_its_own(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with clean_engine(sqlite_url) as engine:
        store = SqlMessageStore(engine)
        deadlocking(store, monkeypatch)
        cid = new_id()
        stored = await asyncio.gather(*(put(store, message(cid, 0, sender=f"u{i}")) for i in range(3)))
        assert sorted(m.seq for m in stored) == [1, 2, 3]


async def test_appends_of_a_conversation_keep_the_order_they_were_made_in_when_their_seqs_are_taken(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The group of three loses its seqs, then the first append alone loses again: it is asked again in its
    # place, and the two behind it wait rather than take the seqs before it (a socket's sends in flight).
    async with clean_engine(sqlite_url) as engine:
        store = SqlMessageStore(engine)
        cid = new_id()
        await put(store, message(cid, 0))  # so that the next three leave as one group
        deadlocking(store, monkeypatch, times=3)
        stored = await asyncio.gather(*(put(store, message(cid, 0, client_msg_id=f"m{i}")) for i in range(3)))
        assert [(m.client_msg_id, m.seq) for m in stored] == [("m0", 2), ("m1", 3), ("m2", 4)]


# Sessions waiting for a lock another transaction holds (MariaDB: the store's insert still running; a user
# without the PROCESS privilege sees its own sessions).
_LOCK_WAITS = {
    "mariadb": "SELECT count(*) FROM information_schema.processlist WHERE info LIKE 'INSERT INTO message_messages%'",
    "postgres": "SELECT count(*) FROM pg_locks WHERE NOT granted",
}


@pytest.mark.parametrize("server", SERVER_BACKENDS)
async def test_a_commit_waiting_on_a_lock_holds_back_only_its_own_conversation(
    server: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """On a database server the group commits of different conversations run side by side: a conversation
    whose transaction waits (here on the unique key of a row another session inserted and has not
    committed) does not stop the sends of every other conversation; its own append goes through once the
    lock is gone, with the seq it should have."""
    with migrated_database(server, tmp_path_factory.mktemp("lanes")) as url:
        async with clean_engine(url) as engine:
            store = SqlMessageStore(engine)
            # The free conversation's key sorts after the stalled one's: InnoDB's duplicate check of an insert
            # locks the next key of the unique index, and two ids made in one millisecond come in either order,
            # so half the time the free conversation's insert would wait on the held row as its neighbour.
            stalled, free = sorted((new_id(), new_id()))
            async with engine.connect() as other:
                holder = await other.begin()
                await other.execute(messages.insert(), [_columns(message(stalled, 1))])
                waiting = asyncio.create_task(put(store, message(stalled, 1)))
                async with engine.connect() as watcher:
                    deadline = asyncio.get_running_loop().time() + 60
                    while (await watcher.execute(text(_LOCK_WAITS[server]))).scalar() == 0:
                        assert asyncio.get_running_loop().time() < deadline, "the append never waited on the lock"
                        await asyncio.sleep(0.05)
                        await watcher.rollback()  # a fresh snapshot for the next look
                passing = asyncio.create_task(put(store, message(free, 1)))
                await asyncio.wait([passing], timeout=60)
                assert passing.done(), "another conversation's append waited for the stalled one"
                assert passing.result().seq == 1
                assert not waiting.done()
                await holder.rollback()
            assert (await asyncio.wait_for(waiting, 60)).seq == 1
            assert await store.max_seq(stalled) == 1
