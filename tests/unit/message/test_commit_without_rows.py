"""``courier dev``: the event log and every socket are in the one process, so a commit hands its events straight
to the log, without an outbox row (``CommitPublisher.keeps_rows`` false). Each conversation still reaches the log
in seq order, a row already waiting for the sweep still goes first, and a failed publish loses no message.
The same on the SQL store (SQLite) and on the unit tests' store."""

from __future__ import annotations

import pytest

from services.common.clock import utcnow
from services.common.ids import new_id
from services.message.adapters.memory import MemoryEventLog, MemoryMessageStore
from services.message.adapters.sql import SqlMessageStore
from services.message.domain import Message, decode_event
from services.message.ports import Draft, MessageStore
from services.message.workers import MESSAGES_TOPIC, OutboxRelay
from tests.unit.message.conftest import SwitchableLog


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest) -> MessageStore:
    if request.param == "memory":
        return MemoryMessageStore()
    return SqlMessageStore(request.getfixturevalue("engine"))


async def send(store: MessageStore, conversation_id: str) -> Message:
    def build(seq: int) -> Message:
        return Message(
            new_id(), conversation_id, seq, "alice", "phone", new_id(), {"type": "text", "text": "hi"}, utcnow()
        )

    return await store.append(Draft(conversation_id, build, recipients=["alice", "bob"]))


def logged(log: MemoryEventLog) -> list[tuple[str, int]]:
    return [(record.key, decode_event(record.value)[0].seq) for record in log.records(MESSAGES_TOPIC)]


async def test_each_event_is_in_the_log_when_its_send_returns_and_no_outbox_row_is_left(store: MessageStore) -> None:
    log = MemoryEventLog()
    store.publish_on_commit(OutboxRelay(store, log, keeps_rows=False))
    first, second = new_id(), new_id()
    expected = []
    for cid in (first, second, first, first, second):
        event = await send(store, cid)
        expected.append((cid, event.seq))
        assert logged(log) == expected
    assert expected == [(first, 1), (second, 1), (first, 2), (first, 3), (second, 2)]
    assert await store.outbox_stats() == (0, None)


async def test_a_row_waiting_for_the_sweep_still_goes_out_before_its_conversations_later_events(
    store: MessageStore,
) -> None:
    waiting, other = new_id(), new_id()
    await send(store, waiting)  # committed with no publisher: a row for the sweep
    log = MemoryEventLog()
    relay = OutboxRelay(store, log, keeps_rows=False, idle_poll_s=3600, delete_after_s=0)
    store.publish_on_commit(relay)

    await send(store, waiting)
    await send(store, other)
    assert logged(log) == [(other, 1)], "seq 2 went out before seq 1, which waits for the sweep"
    assert (await store.outbox_stats())[0] == 2

    while await relay.relay_once():
        pass
    assert logged(log) == [(other, 1), (waiting, 1), (waiting, 2)]
    assert await store.outbox_stats() == (0, None)


async def test_a_publish_that_fails_loses_no_message(store: MessageStore, caplog: pytest.LogCaptureFixture) -> None:
    log = SwitchableLog()
    store.publish_on_commit(OutboxRelay(store, log, keeps_rows=False))
    cid = new_id()
    log.down = True
    event = await send(store, cid)
    assert await store.get(cid, event.seq) == event, "committed: the send's answer, and sync, have it"
    assert "could not be published" in caplog.text
    log.down = False
    assert (await send(store, cid)).seq == 2
    assert logged(log) == [(cid, 2)]


async def test_each_record_carries_the_event_its_payload_holds_so_the_fan_out_need_not_decode_it(
    store: MessageStore,
) -> None:
    """The log is in this process: the record the fan-out polls is the one the commit made, with its event."""
    log = MemoryEventLog()
    store.publish_on_commit(OutboxRelay(store, log, keeps_rows=False))
    sent = [await send(store, new_id()) for _ in range(3)]
    records = log.records(MESSAGES_TOPIC)
    assert [record.event[0].message_id for record in records if record.event] == [e.message_id for e in sent]
    for record in records:
        assert record.event is not None
        event, recipients = decode_event(record.value)
        assert record.event[0].to_wire() == event.to_wire()
        assert record.event[1] == recipients == ["alice", "bob"]
