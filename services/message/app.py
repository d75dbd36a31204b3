"""Use cases of the message service: send, history, read cursors, recall, edit, sync and activity."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson

from services.common import metrics, telemetry
from services.common.clock import utcnow
from services.common.errors import Conflict, InvalidRequest, NotFound, Unavailable
from services.common.ids import new_id
from services.common.push import Push, Pusher
from services.message import domain
from services.message.domain import EDIT, RECALL, Message
from services.message.ports import (
    ClientMsgIdTaken,
    Conversation,
    Conversations,
    Draft,
    FileShares,
    Inbox,
    InboxEntry,
    MessageStore,
    Page,
    SeqTaken,
    Timeline,
)

# Bound once per content type: ``labels()`` per message walked a dictionary under a lock.
_SENT_SERIES = {content_type: metrics.MESSAGES_SENT.labels(content_type) for content_type in domain.SENDABLE_TYPES}
log = logging.getLogger("courier.message")
T = TypeVar("T")


@dataclass(frozen=True)
class SendMessage:
    conversation_id: str
    sender_id: str
    sender_device_id: str
    client_msg_id: str
    content: Any


@dataclass(frozen=True)
class Sent:
    message: Message
    created: bool


@dataclass(frozen=True)
class Limits:
    max_text_length: int
    recall_window_s: float
    edit_window_s: float


class ConversationLocks:
    """One lock per conversation, held by a recall or an edit from reading its target to committing
    the change, so two of them cannot both pass their checks on the same old target."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = defaultdict(int)

    def __call__(self, conversation_id: str) -> _Held:
        return _Held(self, conversation_id)


class _Held:
    def __init__(self, locks: ConversationLocks, conversation_id: str) -> None:
        self._locks, self._cid = locks, conversation_id

    async def __aenter__(self) -> None:
        locks = self._locks
        locks._users[self._cid] += 1
        await locks._locks.setdefault(self._cid, asyncio.Lock()).acquire()

    async def __aexit__(self, *_exc: object) -> None:
        locks = self._locks
        locks._locks[self._cid].release()
        locks._users[self._cid] -= 1
        if locks._users[self._cid] == 0:
            del locks._users[self._cid], locks._locks[self._cid]


@dataclass(frozen=True)
class MessageDeps:
    store: MessageStore
    conversations: Conversations
    files: FileShares
    locks: ConversationLocks
    limits: Limits


async def member_conversation(conversation_id: str, user_id: str, *, conversations: Conversations) -> Conversation:
    """The conversation if ``user_id`` belongs to it; otherwise ``NotFound`` (no existence leak)."""
    conversation = await conversations.get(conversation_id)
    if conversation is None or user_id not in conversation.roles:
        raise NotFound("no such conversation")
    return conversation


TRACE_CONTEXT_MAX = 512
"""Size of the outbox's trace context column."""


def trace_context() -> str | None:
    """The current trace context as the outbox stores it (JSON), or None when tracing is off. A tracestate
    too long for the column is dropped: the traceparent alone keeps the trace joined."""
    carrier = telemetry.inject()
    if not carrier:
        return None
    text = orjson.dumps(carrier).decode()
    if len(text) > TRACE_CONTEXT_MAX:
        text = orjson.dumps({k: v for k, v in carrier.items() if k == "traceparent"}).decode()
    return text if len(text) <= TRACE_CONTEXT_MAX else None


async def _commit_event(
    conversation: Conversation, build: Callable[[int], Message], deps: MessageDeps, *, replace: Message | None = None
) -> Message:
    """Commit the event ``build`` makes for the conversation's next seq, which the store gives it (and asks
    again for when another process committed it first)."""
    draft = Draft(
        conversation.conversation_id,
        build,
        recipients=None if conversation.large else list(conversation.roles),
        replace=replace,
        trace_context=trace_context(),
    )
    try:
        return await deps.store.append(draft)
    except SeqTaken as exc:
        raise Unavailable("could not allocate a sequence number; retry") from exc


async def send_message(cmd: SendMessage, *, deps: MessageDeps) -> Sent:
    return await _commit_send(await _prepare_send(cmd, deps=deps), deps=deps)


async def send_many(cmds: Sequence[SendMessage], *, deps: MessageDeps) -> list[Sent | Exception]:
    """Several sends, one answer each in their order (a send's error is its answer). The sends of one device
    to one conversation are committed in their order, whatever the checks before their commit wait for: a
    socket may have several sends in flight (docs/design.md 4.1). Each is queued to the store before the next
    of them is checked, and the store keeps a conversation's appends in the order queued; other devices' and
    conversations' sends are checked side by side, and all are committed together."""
    chains: dict[tuple[str, str, str], list[SendMessage]] = defaultdict(list)
    for cmd in cmds:
        chains[cmd.sender_id, cmd.sender_device_id, cmd.conversation_id].append(cmd)

    async def one_after_another(chain: list[SendMessage]) -> list[Sent | Exception]:
        if len(chain) == 1:
            return [await _outcome(send_message(chain[0], deps=deps))]
        committing: list[asyncio.Task[Sent] | Exception] = []
        try:
            for cmd in chain:
                prepared = await _outcome(_prepare_send(cmd, deps=deps))
                if isinstance(prepared, Exception):
                    committing.append(prepared)
                else:
                    # A task's first step runs before anything this loop awaits next: the draft is queued before
                    # the next send of the chain is checked, and before the next task's first step.
                    committing.append(asyncio.create_task(_commit_send(prepared, deps=deps)))
            chain_answers: list[Sent | Exception] = []
            for step in committing:
                chain_answers.append(await _outcome(step) if isinstance(step, asyncio.Task) else step)
            return chain_answers
        finally:
            for task in committing:
                if isinstance(task, asyncio.Task):
                    task.cancel()

    if len(chains) == 1:  # one socket's sends to one conversation, the usual batch: no task to gather
        answers = [await one_after_another(next(iter(chains.values())))]
    else:
        answers = await asyncio.gather(*map(one_after_another, chains.values()))
    answered = {key: iter(chain_answers) for key, chain_answers in zip(chains, answers, strict=True)}
    return [next(answered[cmd.sender_id, cmd.sender_device_id, cmd.conversation_id]) for cmd in cmds]


async def _outcome(step: Awaitable[T]) -> T | Exception:
    """What ``step`` returns, or the exception it raises (a send's error is its answer)."""
    try:
        return await step
    except Exception as exc:  # noqa: BLE001 - this send's answer
        return exc


@dataclass(frozen=True)
class _Prepared:
    cmd: SendMessage
    conversation: Conversation
    client_msg_id: str
    content: dict[str, Any]


async def _prepare_send(cmd: SendMessage, *, deps: MessageDeps) -> _Prepared:
    """A send's checks: its client_msg_id, content, the sender's membership, and the file it shares."""
    client_msg_id = domain.validate_client_msg_id(cmd.client_msg_id)
    content = domain.validate_content(cmd.content, max_text_length=deps.limits.max_text_length)
    # No look-up of client_msg_id first: a resend is rare, and the store's unique key on (sender,
    # client_msg_id) refuses it at the insert (ClientMsgIdTaken, below) at no cost to every other send.
    conversation = await member_conversation(cmd.conversation_id, cmd.sender_id, conversations=deps.conversations)
    if content["type"] == "file":
        shared = await deps.files.attach(content["file_id"], cmd.conversation_id, cmd.sender_id)
        content = {**content, **{k: shared[k] for k in ("name", "size", "content_type")}}
    return _Prepared(cmd, conversation, client_msg_id, content)


async def _commit_send(prepared: _Prepared, *, deps: MessageDeps) -> Sent:
    """Store a checked send (queued to the store before this first yields), or find the message it resends."""
    cmd, client_msg_id, content = prepared.cmd, prepared.client_msg_id, prepared.content

    def build(seq: int) -> Message:
        return Message(
            message_id=new_id(),
            conversation_id=cmd.conversation_id,
            seq=seq,
            sender_id=cmd.sender_id,
            sender_device_id=cmd.sender_device_id,
            client_msg_id=client_msg_id,
            content=content,
            created_at=utcnow(),
        )

    try:
        stored = await _commit_event(prepared.conversation, build, deps)
    except ClientMsgIdTaken:
        existing = await deps.store.find_by_client_id(cmd.sender_id, client_msg_id)
        assert existing is not None
        return _resent(existing, cmd)
    _SENT_SERIES[content["type"]].inc()
    return Sent(stored, created=True)


def _resent(existing: Message, cmd: SendMessage) -> Sent:
    if existing.conversation_id != cmd.conversation_id:
        raise Conflict("client_msg_id was already used for a message in another conversation")
    return Sent(existing, created=False)


async def history(
    conversation_id: str,
    user_id: str,
    *,
    after_seq: int | None,
    before_seq: int | None,
    limit: int | None,
    deps: MessageDeps,
) -> Page:
    for name, value in (("after_seq", after_seq), ("before_seq", before_seq)):
        if value is not None and value < 0:
            raise InvalidRequest(f"{name} must not be negative")
    await member_conversation(conversation_id, user_id, conversations=deps.conversations)
    return await deps.store.page(
        conversation_id, after_seq=after_seq, before_seq=before_seq, limit=domain.clamp_limit(limit)
    )


async def mark_read(
    conversation_id: str, user_id: str, seq: int, *, deps: MessageDeps, inbox: Inbox, pusher: Pusher
) -> int:
    """Move the read cursor (never backwards, never past the newest seq) and tell the other members."""
    if seq < 0:
        raise InvalidRequest("seq must not be negative")
    conversation = await member_conversation(conversation_id, user_id, conversations=deps.conversations)
    seq = min(seq, await deps.store.max_seq(conversation_id))
    cursor = await deps.store.set_read(conversation_id, user_id, seq)
    await inbox.mark_read(user_id, conversation_id, cursor)
    receipt = {"type": "read_receipt", "conversation_id": conversation_id, "user_id": user_id, "seq": cursor}
    await pusher.push(list(conversation.roles), receipt)
    return cursor


async def _target(conversation_id: str, seq: int, deps: MessageDeps) -> Message:
    target = await deps.store.get(conversation_id, seq)
    if target is None:
        raise NotFound(f"no message with seq {seq}")
    return target


async def recall(conversation_id: str, seq: int, *, by: str, device_id: str, deps: MessageDeps) -> Message:
    """Wipe a message's content and store a recall tombstone with a seq of its own (idempotent).

    The target is read and checked under the conversation lock, so a concurrent edit cannot bring
    recalled content back."""
    conversation = await member_conversation(conversation_id, by, conversations=deps.conversations)
    async with deps.locks(conversation_id):
        target = await _target(conversation_id, seq, deps)
        if target.recalled:
            return target
        domain.check_recall(
            target, by=by, role=conversation.roles[by], now=utcnow(), window_s=deps.limits.recall_window_s
        )
        wiped = domain.recalled(target)

        def build(event_seq: int) -> Message:
            return Message(
                message_id=new_id(),
                conversation_id=conversation_id,
                seq=event_seq,
                sender_id=by,
                sender_device_id=device_id,
                client_msg_id=f"~recall:{target.message_id}",
                content={"type": RECALL, "target_seq": seq},
                created_at=utcnow(),
            )

        with contextlib.suppress(ClientMsgIdTaken):  # recalled concurrently elsewhere: same outcome
            await _commit_event(conversation, build, deps, replace=wiped)
    return wiped


async def edit(conversation_id: str, seq: int, content: Any, *, by: str, device_id: str, deps: MessageDeps) -> Message:
    conversation = await member_conversation(conversation_id, by, conversations=deps.conversations)
    new_content = domain.validate_content(content, max_text_length=deps.limits.max_text_length)
    if new_content["type"] != "text":
        raise InvalidRequest("an edit must be text")
    async with deps.locks(conversation_id):
        target = await _target(conversation_id, seq, deps)
        domain.check_edit(target, by=by, now=utcnow(), window_s=deps.limits.edit_window_s)
        changed = domain.edited(target, new_content)

        def build(event_seq: int) -> Message:
            return Message(
                message_id=new_id(),
                conversation_id=conversation_id,
                seq=event_seq,
                sender_id=by,
                sender_device_id=device_id,
                client_msg_id=f"~edit:{new_id()}",
                content={"type": EDIT, "target_seq": seq, "content": new_content},
                created_at=utcnow(),
            )

        await _commit_event(conversation, build, deps, replace=changed)
    return changed


@dataclass(frozen=True)
class SyncedConversation:
    conversation_id: str
    messages: list[Message]
    has_more: bool


async def sync(user_id: str, cursors: Mapping[str, int], *, limit: int, deps: MessageDeps) -> list[SyncedConversation]:
    """Everything after each cursor, for every conversation of the user that has something new.

    Conversations absent from ``cursors`` are synced from 0; cursors of conversations the user is
    not in are ignored.
    """
    conversation_ids = await deps.conversations.conversation_ids(user_id)
    heads = await deps.store.max_seqs(conversation_ids)
    behind = [cid for cid in conversation_ids if heads.get(cid, 0) > cursors.get(cid, 0)]
    results = []
    for cid in behind:
        page = await deps.store.page(cid, after_seq=max(0, cursors.get(cid, 0)), before_seq=None, limit=limit)
        results.append(SyncedConversation(cid, page.messages, page.has_more))
    return results


@dataclass(frozen=True)
class Activity:
    max_seq: int
    read_seq: int
    unread_count: int
    last_message: Mapping[str, Any] | None
    last_activity_at: datetime | None


async def activity(
    user_id: str, conversations: Sequence[Conversation], *, store: MessageStore, inbox: Inbox, timeline: Timeline
) -> dict[str, Activity]:
    """The conversation list's live part, from the inbox (small) and the timeline (large).

    What the cache lacks (lost or never written) is rebuilt from the store, so unread counts
    survive a restart or a cache flush.
    """
    small = [c.conversation_id for c in conversations if not c.large]
    large = [c.conversation_id for c in conversations if c.large]
    entries = await inbox.entries(user_id, small)
    heads = await timeline.heads(large)
    missing_small = [cid for cid in small if cid not in entries]
    missing_large = [cid for cid in large if cid not in heads]
    reads = await store.read_seqs(user_id, missing_small + large)
    if missing_small or missing_large:
        lasts = await store.last_messages(missing_small + missing_large)
        for cid in missing_small:
            last = lasts.get(cid)
            entry = InboxEntry(read_seq=reads.get(cid, 0))
            if last is not None:
                entry.max_seq, entry.last_message, entry.last_activity_at = last.seq, _preview(last), last.created_at
            await inbox.put(user_id, cid, entry)
            entries[cid] = entry
        for cid in missing_large:
            last = lasts.get(cid)
            if last is not None:
                await timeline.append(cid, seq=last.seq, message=_preview(last), at=last.created_at)
                heads = {**heads, **await timeline.heads([cid])}
    found: dict[str, Activity] = {}
    for cid, entry in entries.items():
        found[cid] = Activity(entry.max_seq, entry.read_seq, entry.unread, entry.last_message, entry.last_activity_at)
    for cid, head in heads.items():
        read_seq = min(reads.get(cid, 0), head.max_seq)
        found[cid] = Activity(head.max_seq, read_seq, head.max_seq - read_seq, head.last_message, head.last_activity_at)
    return found


def _preview(event: Message) -> dict[str, Any]:
    return event.to_wire()


async def fan_out(
    event: Message,
    *,
    recipients: Collection[str],
    large: bool,
    inbox: Inbox,
    timeline: Timeline,
    pusher: Pusher,
    fanout_concurrency: int = 64,
) -> None:
    """Record a stored event in the recipients' inboxes (small) or the shared timeline (large), then
    push it to every device of every recipient but the one it came from."""
    with _FANOUT_SERIES[large].time():
        if large:
            await timeline.append(event.conversation_id, seq=event.seq, message=event.to_wire(), at=event.created_at)
        else:
            await _bump_inboxes(event, recipients, inbox=inbox, chunk=fanout_concurrency)
        await pusher.push_many([_push_of(event, recipients)])


async def fan_out_many(
    events: Sequence[tuple[Message, Collection[str]]], *, inbox: Inbox, pusher: Pusher, fanout_concurrency: int = 64
) -> None:
    """``fan_out`` of several events of small conversations (with their recipients) at once: every inbox
    bump in flight together, then one push of them all, each device getting them in the order given."""
    started = time.perf_counter()
    await asyncio.gather(
        *(_bump_inboxes(event, recipients, inbox=inbox, chunk=fanout_concurrency) for event, recipients in events)
    )
    await pusher.push_many([_push_of(event, recipients) for event, recipients in events])
    elapsed = time.perf_counter() - started
    for _ in events:
        _FANOUT_SERIES[False].observe(elapsed)


# Bound once: ``labels()`` per event was a dictionary walk and a lock per message.
_FANOUT_SERIES = {True: metrics.FANOUT_DURATION.labels("timeline"), False: metrics.FANOUT_DURATION.labels("inbox")}


def _push_of(event: Message, recipients: Collection[str]) -> Push:
    """The tracked push of an event to every device of ``recipients`` but the one it came from."""
    return Push(recipients, domain.push_frame(event), True, (event.sender_id, event.sender_device_id))


async def _bump_inboxes(event: Message, recipients: Collection[str], *, inbox: Inbox, chunk: int) -> None:
    wire = event.to_wire()
    members = list(recipients)
    for start in range(0, len(members), chunk):
        await inbox.bump(
            members[start : start + chunk],
            event.conversation_id,
            seq=event.seq,
            last_message=wire,
            at=event.created_at,
            reader_id=event.sender_id,
        )
