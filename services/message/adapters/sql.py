"""The message store on SQLAlchemy 2 async: messages, read cursors and the transactional outbox.

Two unique constraints carry the guarantees: ``(conversation_id, seq)`` (no seq is ever reused) and
``(sender_id, client_msg_id)`` (a resent message is never stored twice).
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import weakref
from collections import Counter, deque
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Dialect, Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common import db, telemetry
from services.common.batching import Batcher
from services.common.clock import utcnow
from services.common.db import UtcDateTime, metadata
from services.common.errors import Unavailable
from services.common.prepared import Prepared
from services.message.domain import Message, encode_event
from services.message.ports import (
    ClientMsgIdTaken,
    CommitPublisher,
    Draft,
    OutboxRecord,
    Page,
    SeqTaken,
    hand_over,
    in_conversation_order,
)

ID = String(32)
# Most appends committed in one transaction (group commit).
GROUP_COMMIT_LIMIT = 64
# Most group commits running at once on a database server (each a pooled connection), for different conversations.
COMMITS_IN_FLIGHT = 4
# A group commit waits up to this long (seconds) after the last one began, or until every conversation of the last
# one has an append queued again. Idle, an append still commits at once, and so do the appends of one conversation
# alone (its sender's next waits for the last one's commit: a pause would gather nothing). Under load the pause
# gathers the appends of other conversations: without it most commits carry one or two, each paying a whole
# transaction's begin, its round trips and its commit. On SQLite a commit runs on the loop's thread, so nothing joins
# a batch while one commits; on a server each commit also costs the server a transaction (docs/performance.md 22).
# 16 ms rather than 8 since a socket's sends no longer wait for each other's answers (docs/performance.md 27).
COMMIT_INTERVAL_S = 0.016
# Most idempotency look-ups answered by one statement.
CLIENT_ID_BATCH = 200
# Most transactions an append takes when another process keeps committing its conversation's next seq first.
SEQ_RETRIES = 8
BigId = BigInteger().with_variant(Integer(), "sqlite")
# MySQL's TEXT and BLOB stop at 64 KiB; a long message or its outbox event must not be cut off there.
Content = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
Payload = LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")

# Tables collate byte-wise on MySQL too (as on PostgreSQL and SQLite): its default *_ci collations take "Ab" for "ab".
messages = Table(
    "message_messages",
    metadata,
    Column("message_id", ID, primary_key=True),
    Column("conversation_id", ID, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("sender_id", ID, nullable=False),
    Column("sender_device_id", String(64), nullable=False),
    Column("client_msg_id", String(96), nullable=False),
    Column("content", Content, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("recalled", Boolean, nullable=False, default=False),
    Column("edited", Boolean, nullable=False, default=False),
    UniqueConstraint("conversation_id", "seq"),
    UniqueConstraint("sender_id", "client_msg_id"),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

read_cursors = Table(
    "message_read_cursors",
    metadata,
    Column("conversation_id", ID, primary_key=True),
    Column("user_id", ID, primary_key=True),
    Column("read_seq", BigInteger, nullable=False),
    Index("ix_message_read_cursors_user", "user_id"),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

outbox_rows = Table(
    "message_outbox",
    metadata,
    Column("outbox_id", BigId, primary_key=True, autoincrement=True),
    Column("conversation_id", ID, nullable=False),
    Column("payload", Payload, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("leased_until", UtcDateTime, nullable=False),
    Column("lease_token", String(32), nullable=True),
    # The sender's trace context, so the relay's publish joins the trace of the send (revision 0002).
    Column("trace_context", String(512), nullable=True),
    Index("ix_message_outbox_leased_until", "leased_until"),
    # The relay's order check: a conversation's rows still waiting (revision 0003).
    Index("ix_message_outbox_conversation", "conversation_id", "outbox_id"),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)


def _message(row: Row[Any]) -> Message:
    return Message(
        message_id=row.message_id,
        conversation_id=row.conversation_id,
        seq=int(row.seq),
        sender_id=row.sender_id,
        sender_device_id=row.sender_device_id,
        client_msg_id=row.client_msg_id,
        content=orjson.loads(row.content),
        created_at=row.created_at,
        recalled=bool(row.recalled),
        edited=bool(row.edited),
    )


def _columns(message: Message) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "conversation_id": message.conversation_id,
        "seq": message.seq,
        "sender_id": message.sender_id,
        "sender_device_id": message.sender_device_id,
        "client_msg_id": message.client_msg_id,
        "content": orjson.dumps(message.content).decode(),
        "created_at": message.created_at,
        "recalled": message.recalled,
        "edited": message.edited,
    }


def _outbox_row(event: Message, draft: Draft, now: datetime, lease: tuple[str, datetime] | None) -> dict[str, Any]:
    """A row for the sweep (free now), or leased to the publisher that takes it out on commit."""
    token, until = lease if lease is not None else (None, now)
    return {
        "conversation_id": event.conversation_id,
        "payload": encode_event(event, draft.recipients),
        "created_at": now,
        "leased_until": until,
        "lease_token": token,
        "trace_context": draft.trace_context,
    }


def _sender_cursors(events: list[Message]) -> list[dict[str, Any]]:
    """The senders have read what they sent: one cursor per (conversation, sender), at their last seq."""
    cursors = {(e.conversation_id, e.sender_id): e.seq for e in events}
    return [{"conversation_id": cid, "user_id": uid, "read_seq": seq} for (cid, uid), seq in cursors.items()]


def _apply_replace(conn: Connection, replace: Message) -> None:
    """A recall or edit rewrites the message it targets in the same transaction as its own event."""
    changed = _columns(replace)
    conn.execute(
        update(messages)
        .where(messages.c.message_id == replace.message_id)
        .values(content=changed["content"], recalled=replace.recalled, edited=replace.edited)
    )


def _advance_reads(conn: Connection, cursors: list[dict[str, Any]]) -> None:
    """Upsert cursors (distinct keys), each keeping the larger seq (the dialects spell upsert differently):
    one statement of one row executed for many (the driver's executemany)."""
    _statements(conn.dialect).upsert_cursors.run_many(conn, cursors)


# Text, not the dialects' insert constructs: those have no cache key, so every execution compiled them again.
_UPSERT_ROW = (
    "INSERT INTO message_read_cursors (conversation_id, user_id, read_seq)"
    " VALUES (:conversation_id, :user_id, :read_seq)"
)
_CURSOR_UPSERTS = {
    "sqlite": text(
        f"{_UPSERT_ROW} ON CONFLICT (conversation_id, user_id)"
        " DO UPDATE SET read_seq = max(message_read_cursors.read_seq, excluded.read_seq)"
    ),
    "postgresql": text(
        f"{_UPSERT_ROW} ON CONFLICT (conversation_id, user_id)"
        " DO UPDATE SET read_seq = GREATEST(message_read_cursors.read_seq, excluded.read_seq)"
    ),
    "mysql": text(f"{_UPSERT_ROW} ON DUPLICATE KEY UPDATE read_seq = GREATEST(read_seq, VALUES(read_seq))"),
}
_CURSOR_UPSERTS["mariadb"] = _CURSOR_UPSERTS["mysql"]


MAX_SEQS_CHUNK = 256


def _max_seqs(conn: Connection, conversation_ids: Collection[str]) -> dict[str, int]:
    """The highest stored seq of each conversation that has one."""
    seqs, _ = _heads(conn, conversation_ids)
    return seqs


def _heads(
    conn: Connection,
    conversation_ids: Collection[str],
    *,
    lease: tuple[str, datetime] | None = None,
    prepared: bool = False,
) -> tuple[dict[str, int], set[str]]:
    """The highest stored seq of each conversation that has one; with ``lease`` (a token and now), also
    the conversations with a row in the outbox that is not leased to that token and live. ``prepared``:
    on the driver's cursor (the group commit), else through Core (reads, which Core's events observe).

    One max() per conversation, each answered from the end of the (conversation_id, seq) index: a
    GROUP BY over an IN list reads every message of those conversations on PostgreSQL."""
    seqs: dict[str, int] = {}
    blocked: set[str] = set()
    blockers = lease is not None
    for params in _bound_conversations(conversation_ids):
        size = len(params)
        if lease is not None:
            params["token"], params["now"] = lease
        rows: Iterable[Sequence[Any]] = (
            _statements(conn.dialect).heads(size, blockers=blockers).rows(conn, params)
            if prepared
            else conn.execute(_heads_statement(size, blockers=blockers), params)
        )
        for row in rows:  # conversation_id, seq[, blocked]
            if row[1] is not None:
                seqs[row[0]] = int(row[1])
            if blockers and row[2]:
                blocked.add(row[0])
    return seqs, blocked


def _bound_conversations(conversation_ids: Collection[str]) -> Iterator[dict[str, Any]]:
    """The distinct ids, at most ``MAX_SEQS_CHUNK`` at a time, bound as c0, c1, ...: each chunk padded to a
    power of two by repeating its last id, so a handful of statements serve every batch size."""
    ids = list(dict.fromkeys(conversation_ids))
    for start in range(0, len(ids), MAX_SEQS_CHUNK):
        chunk = ids[start : start + MAX_SEQS_CHUNK]
        size = 1 << (len(chunk) - 1).bit_length()
        chunk += chunk[-1:] * (size - len(chunk))
        yield {f"c{i}": cid for i, cid in enumerate(chunk)}


@functools.cache
def _heads_statement(size: int, *, blockers: bool) -> Any:
    """``_heads`` for ``size`` conversations, their ids bound as c0, c1, ...: built once per shape, so its
    cache key is computed once too (building it for every batch cost more than running it)."""
    heads = []
    for i in range(size):
        cid = bindparam(f"c{i}", type_=ID)
        columns = [
            cid.label("conversation_id"),
            select(func.max(messages.c.seq)).where(messages.c.conversation_id == cid).scalar_subquery().label("seq"),
        ]
        if blockers:  # ports.holds_back, as SQL
            foreign = or_(
                outbox_rows.c.lease_token.is_(None),
                outbox_rows.c.lease_token != bindparam("token", type_=String(32)),
                outbox_rows.c.leased_until <= bindparam("now", type_=UtcDateTime),
            )
            waiting = select(outbox_rows.c.outbox_id).where(outbox_rows.c.conversation_id == cid, foreign)
            columns.append(waiting.exists().label("blocked"))
        heads.append(select(*columns))
    return union_all(*heads) if size > 1 else heads[0]


_DELETE_OUTBOX = outbox_rows.delete().where(outbox_rows.c.outbox_id.in_(bindparam("ids", expanding=True)))
MESSAGE_COLUMNS = tuple(column.name for column in messages.c)
OUTBOX_COLUMNS = ("conversation_id", "payload", "created_at", "leased_until", "lease_token", "trace_context")


class _CommitStatements:
    """The group commit's statements for one dialect, each compiled on the first use of its shape and run
    on the driver's cursor (``Prepared``): Core's work per execution was half of a one-message commit."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.insert_messages = Prepared(messages.insert(), dialect, columns=MESSAGE_COLUMNS)
        self.insert_outbox = Prepared(outbox_rows.insert(), dialect, columns=OUTBOX_COLUMNS)
        self.upsert_cursors = Prepared(_CURSOR_UPSERTS[dialect.name], dialect)
        self._heads: dict[tuple[int, bool], Prepared] = {}
        self._outbox_returning: dict[int, Prepared] = {}
        self._mine: dict[int, Prepared] = {}

    def heads(self, size: int, *, blockers: bool) -> Prepared:
        key = (size, blockers)
        if key not in self._heads:
            self._heads[key] = Prepared(_heads_statement(size, blockers=blockers), self.dialect)
        return self._heads[key]

    def outbox_returning(self, count: int) -> Prepared:
        """A multi-row insert of ``count`` rows returning their ids, its binds ``<column>_<row>``."""
        if count not in self._outbox_returning:
            values = [
                {name: bindparam(f"{name}_{i}", type_=outbox_rows.c[name].type) for name in OUTBOX_COLUMNS}
                for i in range(count)
            ]
            statement = (
                outbox_rows.insert().values(values).returning(outbox_rows.c.outbox_id, outbox_rows.c.conversation_id)
            )
            self._outbox_returning[count] = Prepared(statement, self.dialect)
        return self._outbox_returning[count]

    def mine(self, size: int) -> Prepared:
        """The outbox rows leased to ``token`` of ``size`` conversations, bound as c0, c1, ..."""
        if size not in self._mine:
            conversations = [bindparam(f"c{i}", type_=ID) for i in range(size)]
            statement = select(outbox_rows.c.outbox_id, outbox_rows.c.conversation_id).where(
                outbox_rows.c.conversation_id.in_(conversations),
                outbox_rows.c.lease_token == bindparam("token", type_=String(32)),
            )
            self._mine[size] = Prepared(statement, self.dialect)
        return self._mine[size]


_STATEMENTS: weakref.WeakKeyDictionary[Dialect, _CommitStatements] = weakref.WeakKeyDictionary()


def _statements(dialect: Dialect) -> _CommitStatements:
    found = _STATEMENTS.get(dialect)
    if found is None:
        found = _STATEMENTS[dialect] = _CommitStatements(dialect)
    return found


def returns_inserted(dialect: Dialect) -> bool:
    """Whether an INSERT can return its rows (``RETURNING``): MariaDB from 10.5, PostgreSQL and SQLite do,
    MySQL does not. Known once the engine has connected."""
    return bool(dialect.insert_returning)


def _insert_outbox(conn: Connection, rows: list[dict[str, Any]], token: str | None) -> list[int | None]:
    """Insert the rows in order; the ids of those leased to ``token``, None for the others.

    A multi-row insert numbers its rows in the order given, so the k rows of a conversation leased here
    take the conversation's k highest ids leased to the token, in order (nobody else writes the token)."""
    statements = _statements(conn.dialect)
    if token is None:
        statements.insert_outbox.run_many(conn, rows)
        return [None] * len(rows)
    mine = Counter(row["conversation_id"] for row in rows if row["lease_token"] == token)
    if returns_inserted(conn.dialect):
        numbered = {f"{name}_{i}": row[name] for i, row in enumerate(rows) for name in OUTBOX_COLUMNS}
        found = statements.outbox_returning(len(rows)).rows(conn, numbered)
    else:  # MySQL: no RETURNING; the token's rows of those conversations, earlier ones included
        statements.insert_outbox.run_many(conn, rows)
        found = []
        for params in _bound_conversations(mine):
            size = len(params)
            params["token"] = token
            found += statements.mine(size).rows(conn, params)
    ids: dict[str, list[int]] = {}
    for outbox_id, cid in sorted(found):
        ids.setdefault(cid, []).append(int(outbox_id))
    new = {cid: deque(ids[cid][-count:]) for cid, count in mine.items()}
    return [new[row["conversation_id"]].popleft() if row["lease_token"] == token else None for row in rows]


def _set_read(conversation_id: str, user_id: str, seq: int, conn: Connection) -> int:
    """Advance the user's read cursor of the conversation to ``seq`` unless it is past it; its value now."""
    _advance_reads(conn, [{"conversation_id": conversation_id, "user_id": user_id, "read_seq": seq}])
    query = select(read_cursors.c.read_seq).where(
        read_cursors.c.conversation_id == conversation_id, read_cursors.c.user_id == user_id
    )
    return int(conn.execute(query).scalar_one())


def _write_batch(
    batch: list[Draft], conn: Connection, *, token: str | None, lease_s: float, keep_rows: bool = True
) -> tuple[list[Message], list[dict[str, Any]], list[int | None]]:
    """The group commit's statements: each draft takes its conversation's next seq, in batch order; the
    events, their outbox rows, and the ids of the rows leased to ``token`` (None for the sweep's). Without
    ``keep_rows`` the rows leased to ``token`` are not inserted (``CommitPublisher.keeps_rows``).

    Only committed rows are visible to the seq read, so a seq is committed only right after the one
    before it: no gap, even when a process dies mid-commit. Two processes that read the same maximum
    insert the same seq, and the unique key refuses the later one (``IntegrityError``)."""
    now = utcnow()
    # With the seqs, the conversations whose new rows must wait for the sweep: those with a row still
    # waiting that this relay does not hold. Those rows go out first, in order (docs/design.md 3.3).
    highest, blocked = _heads(
        conn, [draft.conversation_id for draft in batch], lease=None if token is None else (token, now), prepared=True
    )
    events = []
    for draft in batch:
        cid = draft.conversation_id
        highest[cid] = highest.get(cid, 0) + 1
        events.append(draft.build(highest[cid]))
    direct = set() if token is None else set(highest) - blocked
    _statements(conn.dialect).insert_messages.run_many(conn, [_columns(event) for event in events])
    for draft in batch:
        if draft.replace is not None:
            _apply_replace(conn, draft.replace)
    lease = None if token is None else (token, now + timedelta(seconds=lease_s))
    rows = [
        _outbox_row(event, draft, now, lease if event.conversation_id in direct else None)
        for draft, event in zip(batch, events, strict=True)
    ]
    if keep_rows:
        ids = _insert_outbox(conn, rows, token if direct else None)
    else:
        _insert_outbox(conn, [row for row in rows if row["lease_token"] is None], None)
        ids = [None] * len(rows)
    _advance_reads(conn, _sender_cursors(events))
    return events, rows, ids


def _commit_span(system: str, size: int) -> AbstractContextManager[Any]:
    """One span for a group commit when tracing is on: its statements run on the driver's cursor, out of
    sight of the SQLAlchemy instrumentation that traces every other statement."""
    if not telemetry.is_enabled():
        return contextlib.nullcontext()
    attributes: dict[str, str | int] = {"db.system": system, "db.operation": "message commit", "courier.messages": size}
    return telemetry.tracer(__name__).start_as_current_span("message commit", attributes=attributes)


class SqlMessageStore:
    def __init__(self, engine: AsyncEngine, *, commits_in_flight: int | None = None) -> None:
        self._engine = engine
        self._publisher: CommitPublisher | None = None
        # Group commit: one transaction per conversation at a time (its seqs are read and taken in order),
        # different conversations' transactions side by side on a server; SQLite has one writer anyway.
        sqlite = engine.dialect.name == "sqlite"
        if commits_in_flight is None:
            commits_in_flight = 1 if sqlite else COMMITS_IN_FLIGHT
        self._appends: Batcher[Draft, Message] = Batcher(
            self._commit_group,
            max_batch=GROUP_COMMIT_LIMIT,
            in_flight=commits_in_flight,
            key=lambda draft: draft.conversation_id,
            interval_s=COMMIT_INTERVAL_S,
        )
        self._client_ids: Batcher[tuple[str, str], Message | None] = Batcher(
            self._find_by_client_ids, max_batch=CLIENT_ID_BATCH
        )

    def publish_on_commit(self, publisher: CommitPublisher) -> None:
        self._publisher = publisher

    def _read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return db.reading(self._engine, "message")

    def _write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return db.writing(self._engine, "message")

    async def find_by_client_id(self, sender_id: str, client_msg_id: str) -> Message | None:
        """Asked after a resend was refused at the insert (``ClientMsgIdTaken``): the resends of a burst
        (clients retrying after an outage) that arrive while one query runs go in the next one
        (``Batcher``), one statement and one connection for all of them."""
        return await self._client_ids.submit((sender_id, client_msg_id))

    async def _find_by_client_ids(self, keys: list[tuple[str, str]]) -> list[Message | None]:
        key = tuple_(messages.c.sender_id, messages.c.client_msg_id)
        query = select(messages).where(key.in_(list(dict.fromkeys(keys))))
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        found = {(row.sender_id, row.client_msg_id): _message(row) for row in rows}
        return [found.get(k) for k in keys]

    async def get(self, conversation_id: str, seq: int) -> Message | None:
        query = select(messages).where(messages.c.conversation_id == conversation_id, messages.c.seq == seq)
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _message(row)

    async def append(self, draft: Draft) -> Message:
        """Group commit: appends that arrive while commits are running wait for one to end and are then
        committed together, one transaction and one multi-row statement per table for all of them,
        so under load the database work per message shrinks with the batch instead of queueing."""
        return await self._appends.submit(draft)

    async def _commit_group(self, drafts: list[Draft]) -> list[Message | Exception]:
        if len(drafts) == 1:
            return [await self._commit_alone(drafts[0])]
        try:
            return list(await self._commit(drafts))
        except (IntegrityError, Unavailable) as exc:
            if isinstance(exc, Unavailable) and not db.is_deadlock(exc):
                raise
        # A client_msg_id sent again, or a seq another process took (refused by the unique key, or, on MariaDB,
        # the two inserts' locks ending in a deadlock): the batch rolled back as a whole; commit its appends one
        # by one so each gets its own answer.
        return [await self._commit_alone(draft) for draft in drafts]

    async def _commit_alone(self, draft: Draft) -> Message | Exception:
        """The draft in a transaction of its own, or its sender's error. A seq another process took is asked
        again here, up to ``SEQ_RETRIES`` times, while the conversation's later appends wait behind it: they
        keep their order (a socket's sends in flight together, docs/design.md 3.1)."""
        attempts = SEQ_RETRIES
        while True:
            attempts -= 1
            try:
                return await self._append_one(draft)
            except SeqTaken as exc:
                if not attempts:
                    return exc
            except Exception as exc:  # noqa: BLE001 - the sender's own error, handed to the sender
                return exc

    async def _append_one(self, draft: Draft) -> Message:
        try:
            [event] = await self._commit([draft])
        except Unavailable as exc:
            if not db.is_deadlock(exc):
                raise
            # MariaDB ends two inserts of the same next seq in a deadlock rather than a duplicate key: taken.
            raise SeqTaken(f"the next seq of {draft.conversation_id} was taken") from exc
        except IntegrityError as exc:
            sample = draft.build(0)  # its sender and client_msg_id, whatever the seq
            if await self.find_by_client_id(sample.sender_id, sample.client_msg_id) is not None:
                raise ClientMsgIdTaken(sample.client_msg_id) from exc
            raise SeqTaken(f"the next seq of {draft.conversation_id} was taken") from exc
        return event

    async def _commit(self, batch: list[Draft]) -> list[Message]:
        """One transaction for the batch (``_write_batch``), its leased outbox rows then handed to the publisher."""
        publisher = self._publisher
        token = publisher.lease_token if publisher is not None else None
        lease_s = publisher.lease_s if publisher is not None else 0.0
        keep_rows = publisher is None or publisher.keeps_rows
        write = functools.partial(_write_batch, batch, token=token, lease_s=lease_s, keep_rows=keep_rows)
        with _commit_span(self._engine.dialect.name, len(batch)):
            events, rows, ids = await db.write_sync(self._engine, "message", write)
        if publisher is not None and token is not None:
            committed = [
                OutboxRecord(
                    outbox_id,
                    row["conversation_id"],
                    row["payload"],
                    row["trace_context"],
                    draft.decoded(event),
                )
                for outbox_id, row, event, draft in zip(ids, rows, events, batch, strict=True)
                if row["lease_token"] == token
            ]
            await hand_over(publisher, committed, lease_token=token, swept=len(committed) < len(rows))
        return events

    async def max_seq(self, conversation_id: str) -> int:
        query = select(func.max(messages.c.seq)).where(messages.c.conversation_id == conversation_id)
        async with self._read() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    async def max_seqs(self, conversation_ids: Collection[str]) -> dict[str, int]:
        async with self._read() as conn:
            return await conn.run_sync(_max_seqs, conversation_ids)

    async def last_messages(self, conversation_ids: Collection[str]) -> dict[str, Message]:
        heads = await self.max_seqs(conversation_ids)
        if not heads:
            return {}
        wanted = [and_(messages.c.conversation_id == cid, messages.c.seq == seq) for cid, seq in heads.items()]
        found: dict[str, Message] = {}
        async with self._read() as conn:
            for start in range(0, len(wanted), 200):
                rows = (await conn.execute(select(messages).where(or_(*wanted[start : start + 200])))).all()
                found.update((row.conversation_id, _message(row)) for row in rows)
        return found

    async def page(self, conversation_id: str, *, after_seq: int | None, before_seq: int | None, limit: int) -> Page:
        query = select(messages).where(messages.c.conversation_id == conversation_id)
        if after_seq is not None:
            query = query.where(messages.c.seq > after_seq)
        if before_seq is not None:
            query = query.where(messages.c.seq < before_seq)
        ordered = query.order_by(messages.c.seq if after_seq is not None else messages.c.seq.desc())
        async with self._read() as conn:
            rows = (await conn.execute(ordered.limit(limit + 1))).all()
        has_more = len(rows) > limit
        chosen = [_message(row) for row in rows[:limit]]
        if after_seq is None:
            chosen.reverse()
        return Page(chosen, has_more)

    async def set_read(self, conversation_id: str, user_id: str, seq: int) -> int:
        return await db.write_sync(self._engine, "message", functools.partial(_set_read, conversation_id, user_id, seq))

    async def read_seqs(self, user_id: str, conversation_ids: Collection[str]) -> dict[str, int]:
        if not conversation_ids:
            return {}
        query = select(read_cursors.c.conversation_id, read_cursors.c.read_seq).where(
            read_cursors.c.user_id == user_id, read_cursors.c.conversation_id.in_(list(conversation_ids))
        )
        async with self._read() as conn:
            return {cid: int(seq) for cid, seq in (await conn.execute(query)).all()}

    async def claim_outbox(self, *, limit: int, lease_s: float) -> list[OutboxRecord]:
        now = utcnow()
        token = secrets.token_hex(16)
        async with self._write() as conn:
            candidates = (
                select(outbox_rows.c.outbox_id, outbox_rows.c.conversation_id)
                .where(outbox_rows.c.leased_until <= now)
                .order_by(outbox_rows.c.outbox_id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            free = [(int(outbox_id), cid) for outbox_id, cid in (await conn.execute(candidates)).all()]
            if not free:
                return []
            # A plain read sees the rows another relay holds, its lease committed or not (skipped above).
            waiting = (
                select(outbox_rows.c.outbox_id, outbox_rows.c.conversation_id)
                .where(
                    outbox_rows.c.conversation_id.in_({cid for _, cid in free}),
                    outbox_rows.c.outbox_id <= free[-1][0],
                )
                .order_by(outbox_rows.c.outbox_id)
            )
            ids = in_conversation_order(free, [(int(i), cid) for i, cid in (await conn.execute(waiting)).all()])
            if not ids:
                return []
            await conn.execute(
                update(outbox_rows)
                .where(outbox_rows.c.outbox_id.in_(ids), outbox_rows.c.leased_until <= now)
                .values(leased_until=now + timedelta(seconds=lease_s), lease_token=token)
            )
            rows = (
                await conn.execute(
                    select(
                        outbox_rows.c.outbox_id,
                        outbox_rows.c.conversation_id,
                        outbox_rows.c.payload,
                        outbox_rows.c.trace_context,
                    )
                    # By primary key: lease_token has no index, and the backlog may be long.
                    .where(outbox_rows.c.outbox_id.in_(ids), outbox_rows.c.lease_token == token)
                    .order_by(outbox_rows.c.outbox_id)
                )
            ).all()
        return [
            OutboxRecord(int(row.outbox_id), row.conversation_id, bytes(row.payload), row.trace_context) for row in rows
        ]

    async def release_outbox(self, outbox_ids: Collection[int]) -> None:
        if outbox_ids:
            async with self._write() as conn:
                await conn.execute(
                    update(outbox_rows)
                    .where(outbox_rows.c.outbox_id.in_(list(outbox_ids)))
                    .values(leased_until=utcnow(), lease_token=None)
                )

    async def delete_outbox(self, outbox_ids: Collection[int]) -> None:
        if outbox_ids:
            async with self._write() as conn:
                await conn.execute(_DELETE_OUTBOX, {"ids": list(outbox_ids)})

    async def outbox_stats(self) -> tuple[int, datetime | None]:
        async with self._read() as conn:
            count, oldest = (
                await conn.execute(select(func.count(), func.min(outbox_rows.c.created_at, type_=UtcDateTime)))
            ).one()
        return int(count), oldest
