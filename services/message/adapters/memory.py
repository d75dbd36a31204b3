"""In-process adapters: the embedded mode's cache and broker, and the unit tests' store."""

from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from services.common.clock import utcnow
from services.message.domain import Message, encode_event
from services.message.ports import (
    ClientMsgIdTaken,
    CommitPublisher,
    Draft,
    InboxEntry,
    OutboxRecord,
    Page,
    Record,
    TimelineHead,
    hand_over,
    holds_back,
    in_conversation_order,
)


class MemoryInbox:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], InboxEntry] = {}

    async def bump(
        self,
        user_ids: Collection[str],
        conversation_id: str,
        *,
        seq: int,
        last_message: Mapping[str, Any],
        at: datetime,
        reader_id: str | None,
    ) -> None:
        for user_id in user_ids:
            entry = self._entries.setdefault((user_id, conversation_id), InboxEntry())
            if seq >= entry.max_seq:
                entry.max_seq, entry.last_message, entry.last_activity_at = seq, last_message, at
            if user_id == reader_id:
                entry.read_seq = max(entry.read_seq, seq)

    async def mark_read(self, user_id: str, conversation_id: str, seq: int) -> None:
        entry = self._entries.get((user_id, conversation_id))
        if entry is not None:
            entry.read_seq = max(entry.read_seq, seq)

    async def entries(self, user_id: str, conversation_ids: Collection[str]) -> dict[str, InboxEntry]:
        found = {cid: self._entries.get((user_id, cid)) for cid in conversation_ids}
        return {cid: replace(entry) for cid, entry in found.items() if entry is not None}

    async def put(self, user_id: str, conversation_id: str, entry: InboxEntry) -> None:
        self._entries.setdefault((user_id, conversation_id), replace(entry))

    def forget(self) -> None:
        self._entries.clear()


class MemoryTimeline:
    def __init__(self, *, keep: int = 100) -> None:
        self._keep = keep
        self._events: dict[str, OrderedDict[int, tuple[Mapping[str, Any], datetime]]] = defaultdict(OrderedDict)

    async def append(self, conversation_id: str, *, seq: int, message: Mapping[str, Any], at: datetime) -> None:
        events = self._events[conversation_id]
        events[seq] = (message, at)
        while len(events) > self._keep:
            events.popitem(last=False)

    async def heads(self, conversation_ids: Collection[str]) -> dict[str, TimelineHead]:
        heads = {}
        for cid in conversation_ids:
            events = self._events.get(cid)
            if events:
                seq = max(events)
                message, at = events[seq]
                heads[cid] = TimelineHead(max_seq=seq, last_message=message, last_activity_at=at)
        return heads


RETAINED = 1_000
"""Records a topic of the in-process log keeps at least; past twice this, those every consumer group has
committed are dropped (a topic no group reads keeps its newest ``RETAINED``), as a broker's retention does.
Records of this process's commits hold their events too (``Record.event``): a thousand is plenty for a
rewind, which never needs a committed record, and keeps that memory small."""


class MemoryEventLog:
    """An append-only log per topic with consumer-group offsets, in order (one partition).

    Offsets are absolute: a topic's records from ``_base[topic]`` on are held in ``_topics[topic]``. What
    every group has committed is dropped in chunks once a topic holds twice ``retained``, so a long-running
    ``courier dev`` holds a bounded log; a record some group has not committed is never dropped."""

    def __init__(self, *, retained: int = RETAINED) -> None:
        if retained < 1:
            raise ValueError("retained must be at least 1")
        self._retained = retained
        self._topics: dict[str, list[Record]] = defaultdict(list)
        self._base: dict[str, int] = defaultdict(int)
        self._committed: dict[tuple[str, str], int] = {}
        self._appended = asyncio.Condition()

    async def publish(self, records: Sequence[Record]) -> None:
        async with self._appended:
            for record in records:
                self._topics[record.topic].append(record)
            for topic in {record.topic for record in records}:
                self._trim(topic)
            self._appended.notify_all()

    def _trim(self, topic: str) -> None:
        held = self._topics[topic]
        excess = len(held) - self._retained
        if excess < self._retained:
            return
        floors = [offset for (t, _), offset in self._committed.items() if t == topic]
        if floors:
            excess = min(excess, min(floors) - self._base[topic])
        if excess > 0:
            del held[:excess]
            self._base[topic] += excess

    def consumer(self, topic: str, group: str) -> MemoryConsumer:
        return MemoryConsumer(self, topic, group)

    def size(self, topic: str) -> int:
        """Records ever appended to ``topic``: its end offset."""
        return self._base[topic] + len(self._topics[topic])

    def records(self, topic: str) -> list[Record]:
        """The records ``topic`` still holds, oldest first."""
        return list(self._topics[topic])

    def _read(self, topic: str, offset: int, count: int) -> list[Record]:
        start = max(0, offset - self._base[topic])
        return self._topics[topic][start : start + count]

    def _start_of(self, topic: str, group: str) -> int:
        """Where a group's consumer starts: its committed offset (the group joins at the oldest record held)."""
        key = (topic, group)
        if key not in self._committed:
            self._committed[key] = self._base[topic]
        return self._committed[key]

    async def lag(self, group: str, topic: str) -> dict[int, int]:
        """LogMonitor: one partition, 0."""
        return {0: self.size(topic) - self._committed.get((topic, group), self._base[topic])}

    async def held(self, topic: str) -> int:
        return len(self._topics[topic])


class MemoryConsumer:
    def __init__(self, log: MemoryEventLog, topic: str, group: str) -> None:
        self._log, self._topic, self._group = log, topic, group
        self._position = log._start_of(topic, group)

    @property
    def lag(self) -> int:
        return self._log.size(self._topic) - self._log._committed[(self._topic, self._group)]

    async def poll(self, *, max_records: int, timeout_s: float) -> list[Record]:
        log, topic = self._log, self._topic
        if self._position >= log.size(topic):
            # asyncio.timeout, not wait_for: wait_for runs the wait in a task of its own, and a cancellation
            # arriving while that task reacquires the condition's lock could leave poll (and a shutdown) waiting.
            try:
                async with log._appended, asyncio.timeout(timeout_s):
                    await log._appended.wait_for(lambda: self._position < log.size(topic))
            except TimeoutError:
                return []
        batch = log._read(topic, self._position, max_records)
        self._position += len(batch)
        return batch

    async def commit(self) -> None:
        self._log._committed[(self._topic, self._group)] = self._position

    async def commit_first(self, count: int) -> None:
        key = (self._topic, self._group)
        self._log._committed[key] = min(self._position, self._log._committed[key] + count)

    async def rewind(self) -> None:
        self._position = self._log._committed[(self._topic, self._group)]


SWEPT = "swept"
"""The lease token of a row a sweep claimed (never a publisher's)."""


class MemoryMessageStore:
    """The unit tests' store: the same semantics as the SQL store, held in dicts."""

    def __init__(self) -> None:
        self._by_seq: dict[str, dict[int, Message]] = defaultdict(dict)
        self._by_client: dict[tuple[str, str], Message] = {}
        self._reads: dict[tuple[str, str], int] = {}
        self._outbox: dict[int, _OutboxRow] = {}
        self._publisher: CommitPublisher | None = None
        self._next_outbox = 1
        self.fail_next_append: Exception | None = None

    async def find_by_client_id(self, sender_id: str, client_msg_id: str) -> Message | None:
        return self._by_client.get((sender_id, client_msg_id))

    async def get(self, conversation_id: str, seq: int) -> Message | None:
        return self._by_seq[conversation_id].get(seq)

    def publish_on_commit(self, publisher: CommitPublisher) -> None:
        self._publisher = publisher

    async def append(self, draft: Draft) -> Message:
        if self.fail_next_append is not None:
            error, self.fail_next_append = self.fail_next_append, None
            raise error
        event = draft.build(await self.max_seq(draft.conversation_id) + 1)
        if (event.sender_id, event.client_msg_id) in self._by_client:
            raise ClientMsgIdTaken(event.client_msg_id)
        self._by_seq[event.conversation_id][event.seq] = event
        self._by_client[(event.sender_id, event.client_msg_id)] = event
        if draft.replace is not None:
            replace = draft.replace
            self._by_seq[replace.conversation_id][replace.seq] = replace
            self._by_client[(replace.sender_id, replace.client_msg_id)] = replace
        await self.set_read(event.conversation_id, event.sender_id, event.seq)
        outbox_id = self._next_outbox
        self._next_outbox += 1
        payload = encode_event(event, draft.recipients)
        decoded = draft.decoded(event)
        record = OutboxRecord(outbox_id, event.conversation_id, payload, draft.trace_context, decoded)
        row = _OutboxRow(record, utcnow())
        publisher, now = self._publisher, asyncio.get_running_loop().time()
        if publisher is None:
            self._outbox[outbox_id] = row
            return event
        token = publisher.lease_token
        waiting = [r for r in self._outbox.values() if r.record.conversation_id == event.conversation_id]
        direct = not any(holds_back(r.token, r.until, token=token, now=now) for r in waiting)
        if direct and not publisher.keeps_rows:
            record = OutboxRecord(None, event.conversation_id, payload, draft.trace_context, decoded)
        else:
            if direct:
                row.token, row.until = token, now + publisher.lease_s
            self._outbox[outbox_id] = row
        await hand_over(publisher, [record] if direct else [], lease_token=token, swept=not direct)
        return event

    async def max_seq(self, conversation_id: str) -> int:
        return max(self._by_seq[conversation_id], default=0)

    async def max_seqs(self, conversation_ids: Collection[str]) -> dict[str, int]:
        return {cid: await self.max_seq(cid) for cid in conversation_ids if self._by_seq.get(cid)}

    async def last_messages(self, conversation_ids: Collection[str]) -> dict[str, Message]:
        return {cid: self._by_seq[cid][max(self._by_seq[cid])] for cid in conversation_ids if self._by_seq.get(cid)}

    async def page(self, conversation_id: str, *, after_seq: int | None, before_seq: int | None, limit: int) -> Page:
        seqs = sorted(self._by_seq[conversation_id])
        low = bisect.bisect_right(seqs, after_seq) if after_seq is not None else 0
        high = bisect.bisect_left(seqs, before_seq) if before_seq is not None else len(seqs)
        window = seqs[low:high]
        if after_seq is not None:
            chosen, has_more = window[:limit], len(window) > limit
        else:
            chosen, has_more = window[-limit:], len(window) > limit
        return Page([self._by_seq[conversation_id][s] for s in chosen], has_more)

    async def set_read(self, conversation_id: str, user_id: str, seq: int) -> int:
        key = (conversation_id, user_id)
        self._reads[key] = max(self._reads.get(key, 0), seq)
        return self._reads[key]

    async def read_seqs(self, user_id: str, conversation_ids: Collection[str]) -> dict[str, int]:
        return {cid: self._reads[(cid, user_id)] for cid in conversation_ids if (cid, user_id) in self._reads}

    async def claim_outbox(self, *, limit: int, lease_s: float) -> list[OutboxRecord]:
        now = asyncio.get_running_loop().time()
        rows = sorted(self._outbox.items())
        free = [(outbox_id, row.record.conversation_id) for outbox_id, row in rows if row.until <= now][:limit]
        if not free:
            return []
        last, cids = free[-1][0], {cid for _, cid in free}
        waiting = [(i, r.record.conversation_id) for i, r in rows if i <= last and r.record.conversation_id in cids]
        claimed: list[OutboxRecord] = []
        for outbox_id in in_conversation_order(free, waiting):
            row = self._outbox[outbox_id]
            row.token, row.until = SWEPT, now + lease_s
            claimed.append(row.record)
        return claimed

    async def release_outbox(self, outbox_ids: Collection[int]) -> None:
        for outbox_id in outbox_ids:
            if (row := self._outbox.get(outbox_id)) is not None:
                row.token, row.until = None, 0.0

    async def delete_outbox(self, outbox_ids: Collection[int]) -> None:
        for outbox_id in outbox_ids:
            self._outbox.pop(outbox_id, None)

    async def outbox_stats(self) -> tuple[int, datetime | None]:
        oldest = min((row.created for row in self._outbox.values()), default=None)
        return len(self._outbox), oldest


@dataclass(eq=False)
class _OutboxRow:
    record: OutboxRecord
    created: datetime
    until: float = 0.0
    """Leased until this loop time; at or below now it is free for the sweep."""
    token: str | None = None
