"""What the message service needs from the world, as Protocols with an in-memory and a real adapter."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from services.message.domain import Message

log = logging.getLogger("courier.message")


class SeqTaken(Exception):
    """Another process committed the conversation's next seq first (its unique key refused ours): the
    append stored nothing and may simply be made again."""


class ClientMsgIdTaken(Exception):
    """Another request stored a message with this ``(sender_id, client_msg_id)`` first."""


@dataclass(frozen=True)
class Draft:
    """An event for the store to append: built for the seq the store gives it, the conversation's next."""

    conversation_id: str
    build: Callable[[int], Message]
    recipients: Sequence[str] | None = None
    """Who the fan-out pushes the event to, carried with it (small conversations); None: looked up there."""
    replace: Message | None = None
    """The target a recall or edit rewrites, in the same transaction."""
    trace_context: str | None = None
    """The sender's W3C trace context (JSON), for the outbox row: the relay's publish continues it."""

    def decoded(self, event: Message) -> Decoded:
        """``event`` as its payload holds it (``encode_event(event, recipients)``), for ``OutboxRecord.event``."""
        return event, None if self.recipients is None else list(self.recipients)


Decoded = tuple[Message, list[str] | None]
"""A record's payload as the fan-out reads it: the event, and its recipients when it carries them."""


@dataclass(frozen=True)
class OutboxRecord:
    outbox_id: int | None
    """None for an event committed without an outbox row (``CommitPublisher.keeps_rows`` false)."""
    conversation_id: str
    payload: bytes
    trace_context: str | None = None
    """The sender's W3C trace context (JSON of traceparent/tracestate): the relay's publish continues it."""
    event: Decoded | None = field(default=None, compare=False, repr=False)
    """What ``payload`` holds, when the row was just committed in this process (see ``Record.event``)."""


def in_conversation_order(free: Sequence[tuple[int, str]], waiting: Sequence[tuple[int, str]]) -> list[int]:
    """The outbox ids a relay may take so that each conversation's events are published in order.

    ``free`` is what the relay could lock, ``waiting`` every row of those conversations up to the last
    of them, both as ``(outbox_id, conversation_id)`` by id. A conversation's free rows are taken up to
    its first row the relay does not hold: that row (leased by another relay, or locked by one claiming
    it right now) goes out first, and whatever follows it waits for the next claim.
    """
    mine = {outbox_id for outbox_id, _ in free}
    blocked: set[str] = set()
    taken: list[int] = []
    for outbox_id, cid in waiting:
        if cid in blocked:
            continue
        if outbox_id in mine:
            taken.append(outbox_id)
        else:
            blocked.add(cid)
    return taken


@dataclass(frozen=True)
class Page:
    messages: list[Message]
    has_more: bool


class MessageStore(Protocol):
    """The source of truth: messages, read cursors and the transactional outbox."""

    async def find_by_client_id(self, sender_id: str, client_msg_id: str) -> Message | None: ...

    async def get(self, conversation_id: str, seq: int) -> Message | None: ...

    async def append(self, draft: Draft) -> Message:
        """In ONE transaction: give the draft the conversation's next seq (the stored maximum + 1, so
        seqs have no gaps), insert the event it builds, overwrite ``draft.replace``, insert the outbox
        row and move the sender's read cursor to the seq. Returns the stored event.

        Appends of one conversation are committed in the order they are called: a draft takes its place
        before ``append`` first yields to the loop, and a seq another process committed first is asked
        again in that place. ``SeqTaken`` when it was taken every time the store asked;
        ``ClientMsgIdTaken`` when the sender already used the client_msg_id. Either way nothing was stored."""
        ...

    def publish_on_commit(self, publisher: CommitPublisher) -> None:
        """From now on, hand each committed outbox row to ``publisher`` when it may go out at once."""
        ...

    async def max_seq(self, conversation_id: str) -> int: ...

    async def max_seqs(self, conversation_ids: Collection[str]) -> dict[str, int]: ...

    async def last_messages(self, conversation_ids: Collection[str]) -> dict[str, Message]: ...

    async def page(self, conversation_id: str, *, after_seq: int | None, before_seq: int | None, limit: int) -> Page:
        """Ascending by seq. With ``after_seq``: the oldest ``limit`` above it; otherwise the newest
        ``limit`` below ``before_seq`` (or overall). ``has_more`` tells whether more lie beyond."""
        ...

    async def set_read(self, conversation_id: str, user_id: str, seq: int) -> int:
        """Move the cursor forward only; returns the cursor after the call."""
        ...

    async def read_seqs(self, user_id: str, conversation_ids: Collection[str]) -> dict[str, int]: ...

    async def claim_outbox(self, *, limit: int, lease_s: float) -> list[OutboxRecord]:
        """Rows nobody holds a live lease on, oldest first, now leased to the caller; never a row of a
        conversation whose earlier row another relay holds (each conversation is published in order)."""
        ...

    async def release_outbox(self, outbox_ids: Collection[int]) -> None:
        """End the leases of these rows now: the sweep takes them (their publisher gave up on them)."""
        ...

    async def delete_outbox(self, outbox_ids: Collection[int]) -> None: ...

    async def outbox_stats(self) -> tuple[int, datetime | None]:
        """Backlog size and the creation time of the oldest row."""
        ...


class CommitPublisher(Protocol):
    """Publish on commit: takes outbox rows to the event log as soon as their transaction commits.

    The store inserts such a row already leased with ``lease_token`` for ``lease_s``, so no relay
    sweeps it meanwhile, and only when every earlier row of its conversation still waiting is one of
    these too (queued before it, so published before it). Any other row is inserted free, for the
    relays' sweep, which keeps each conversation in order. A row whose publisher died is swept when
    its lease runs out."""

    @property
    def lease_token(self) -> str: ...

    @property
    def lease_s(self) -> float: ...

    @property
    def keeps_rows(self) -> bool:
        """False when the log is in this process and so is every socket it feeds (``courier dev``): what
        the log holds, and every push it would lead to, goes with the process, so an outbox row would
        recover nothing a reconnecting client's sync does not. An event that may go out at once then
        gets no row and is given to ``publish_committed``; the others still get one, for the sweep."""
        ...

    def committed(self, rows: Sequence[OutboxRecord], *, lease_token: str, swept: bool) -> None:
        """Called right after a commit, in commit order: ``rows`` were inserted leased with
        ``lease_token`` (the publisher's token when the transaction began); ``swept`` tells that the
        transaction also inserted rows left to the sweep."""
        ...

    async def publish_committed(self, events: Sequence[OutboxRecord]) -> None:
        """With ``keeps_rows`` false: publish these events, which have no outbox row, right after their
        commit and before their conversations' next commits (so in seq order)."""
        ...


async def hand_over(
    publisher: CommitPublisher, events: Sequence[OutboxRecord], *, lease_token: str, swept: bool
) -> None:
    """What a store does right after a commit: hand ``events`` (those that may go out at once) to the
    publisher, and wake its sweep when the transaction left rows to it (``swept``). A publisher that keeps
    no rows publishes them now; if that fails, they are committed all the same and only their push is
    missing, which a reconnecting client's sync covers (the same as when ``courier dev`` dies)."""
    if publisher.keeps_rows:
        publisher.committed(events, lease_token=lease_token, swept=swept)
        return
    if swept:
        publisher.committed([], lease_token=lease_token, swept=True)
    if events:
        try:
            await publisher.publish_committed(events)
        except Exception:
            log.exception("%d committed events could not be published; sync brings them", len(events))


@dataclass
class InboxEntry:
    max_seq: int = 0
    read_seq: int = 0
    last_message: Mapping[str, Any] | None = None
    last_activity_at: datetime | None = None

    @property
    def unread(self) -> int:
        return max(0, self.max_seq - self.read_seq)


class Inbox(Protocol):
    """Write-diffusion: one entry per (user, conversation) for small conversations."""

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
        """Raise max_seq to ``seq`` for every user; ``reader_id`` (the sender) has read it too."""
        ...

    async def mark_read(self, user_id: str, conversation_id: str, seq: int) -> None: ...

    async def entries(self, user_id: str, conversation_ids: Collection[str]) -> dict[str, InboxEntry]: ...

    async def put(self, user_id: str, conversation_id: str, entry: InboxEntry) -> None:
        """Seed a missing entry (rebuilt from the store after a cache loss)."""
        ...


@dataclass
class TimelineHead:
    max_seq: int
    last_message: Mapping[str, Any]
    last_activity_at: datetime


class Timeline(Protocol):
    """Read-diffusion: the newest events of large conversations, shared by all members."""

    async def append(self, conversation_id: str, *, seq: int, message: Mapping[str, Any], at: datetime) -> None: ...

    async def heads(self, conversation_ids: Collection[str]) -> dict[str, TimelineHead]: ...


@dataclass(frozen=True)
class Record:
    topic: str
    key: str
    value: bytes
    headers: Mapping[str, bytes] = field(default_factory=dict)
    event: Decoded | None = field(default=None, compare=False, repr=False)
    """What ``value`` holds, already decoded, when the record was made in this process from a commit's
    event: a log in the same process hands the record itself to the fan-out, which then need not decode
    it (Kafka carries ``value`` alone; a swept row has only its payload)."""


class EventLog(Protocol):
    """The broker between the outbox relay and the fan-out worker (Kafka when distributed)."""

    async def publish(self, records: Sequence[Record]) -> None:
        """Durably accepted when it returns, in order per key."""
        ...


Instant = TypeVar("Instant", float, datetime)


def holds_back(lease_token: str | None, leased_until: Instant, *, token: str, now: Instant) -> bool:
    """The outbox hand-over rule (docs/design.md 3.3): an outbox row still waiting in a conversation holds
    back that conversation's new rows from the relay holding ``token`` (they go to the sweep, after it)
    unless that relay holds it itself, live: leased to ``token`` until after ``now``. The memory store
    applies it as it is; the SQL store's seq read asks it as an ``EXISTS`` (checked against this)."""
    return lease_token != token or leased_until <= now


class Consumer(Protocol):
    """One member of a consumer group: records in order per key; offsets committed explicitly."""

    async def poll(self, *, max_records: int, timeout_s: float) -> list[Record]: ...

    async def commit(self) -> None:
        """Everything returned by ``poll`` so far is processed."""
        ...

    async def rewind(self) -> None:
        """Forget what was polled since the last commit: the next ``poll`` returns it again."""
        ...


class AheadConsumer(Consumer, Protocol):
    """A consumer whose owner polls ahead of its processing (the fan-out worker) and so commits a prefix."""

    async def commit_first(self, count: int) -> None:
        """The first ``count`` records ``poll`` returned since the last commit are processed; those after
        them may still be in hand and are not committed."""
        ...


class LogMonitor(Protocol):
    """Where consumer groups stand in the event log: what the lag and dead-letter gauges sample."""

    async def lag(self, group: str, topic: str) -> dict[int, int]:
        """Per partition of ``topic``: records not yet committed by ``group`` (end minus committed offset)."""
        ...

    async def held(self, topic: str) -> int:
        """Records ``topic`` holds (end minus beginning offsets, summed over its partitions)."""
        ...


@dataclass(frozen=True)
class Conversation:
    """What the message service needs to know of a conversation."""

    conversation_id: str
    roles: Mapping[str, str]
    large: bool


class Conversations(Protocol):
    async def get(self, conversation_id: str) -> Conversation | None: ...

    async def conversation_ids(self, user_id: str) -> list[str]: ...


class FileShares(Protocol):
    async def attach(self, file_id: str, conversation_id: str, user_id: str) -> dict[str, Any]: ...
