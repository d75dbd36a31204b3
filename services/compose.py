"""The composition root: Courier's whole object graph, built from ``Settings`` and a set of roles.

A role is one service: identity, conversation, message, presence, file or delivery. ``courier dev``
composes every role in one process; ``courier run X`` composes role X alone. A role's builder asks the
``Wiring`` for each port it needs and gets the other service's own object when that role is composed in
the same process (a function call), or its client over the internal HTTP API when it is not. The
adapters behind the ports follow ``Settings`` alone: the database URL (SQLite under ``data_dir`` when
every role is here), Redis when ``COURIER_REDIS__URL`` is set, Kafka when ``COURIER_KAFKA__BOOTSTRAP``
is, the in-process cache and log otherwise. The object graph of both modes is written once, here.

The gateway is not a role: in ``courier dev`` its edge (limits, the web page, rtc) wraps the one app
(``services.allinone``), in the distributed mode it is a process of its own (``services.run``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from fastapi import APIRouter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import db, telemetry
from services.common.errors import NotFound
from services.common.internal import InternalClient, RequireInternal
from services.common.push import Pusher
from services.common.revocation import CLOCK_MARGIN_S, MemoryRevocations, RedisRevocations
from services.common.ring import Ring, RingSource
from services.common.settings import Settings
from services.common.tokens import AccessTokens, RevokedSessions
from services.common.web import Authenticate
from services.conversation import internal as conversation_internal
from services.conversation.directory import ConversationDirectory
from services.conversation.domain import Activity as ConversationActivity
from services.conversation.domain import Conversation as ConversationRecord
from services.conversation.main import build_conversations
from services.conversation.ports import ActivityReader, UserDirectory
from services.delivery import internal as delivery_internal
from services.delivery.handoff import reconnect_lost_users
from services.delivery.hub import Hub
from services.delivery.main import build_delivery
from services.delivery.ports import Messages, PresenceTracker
from services.delivery.routes import RouteTable
from services.file import internal as file_internal
from services.file.main import build_files, collect_garbage_forever
from services.gateway.ratelimit import MemoryBucketStore, RateLimiter
from services.identity import internal as identity_internal
from services.identity.main import build_identity
from services.message import app as message_app
from services.message import internal as message_internal
from services.message.adapters.memory import MemoryEventLog, MemoryInbox, MemoryTimeline
from services.message.adapters.sql import SqlMessageStore
from services.message.api import build_router as build_message_router
from services.message.ports import Conversation, Conversations, EventLog, FileShares, Inbox, Timeline
from services.message.service import MessageService
from services.message.workers import (
    FANOUT_GROUP,
    MESSAGES_TOPIC,
    FanoutWorker,
    OutboxRelay,
    prime_metrics,
    sample_forever,
    sample_log,
    sample_outbox,
)
from services.migrate import upgrade
from services.presence import internal as presence_internal
from services.presence.main import build_presence

log = logging.getLogger("courier.compose")

ROLES = ("identity", "conversation", "presence", "file", "message", "delivery")
"""Every role, in the order they are built: a role's in-process collaborators come before it (the one
cycle, conversation reading message's activity, is closed by ``LocalActivity``)."""
LOOP_STOP_S = 10.0
"""How long a process's loops get to end once stopped (``Process.stop``)."""
DATABASE_ROLES = frozenset({"identity", "conversation", "message", "file"})
Loop = Callable[[], Coroutine[Any, Any, None]]
Hook = Callable[[], Awaitable[None]]


@dataclass
class Built:
    """What the roles of one process contribute to it."""

    routers: list[APIRouter] = field(default_factory=list)
    internal: list[APIRouter] = field(default_factory=list)
    """``/internal``: what the other roles' processes call (none when every role is in this one)."""
    loops: dict[str, Loop] = field(default_factory=dict)
    on_start: list[Hook] = field(default_factory=list)
    on_stop: list[Hook] = field(default_factory=list)
    drains: list[Hook] = field(default_factory=list)
    """What to do between SIGTERM and the shutdown besides serving on (a delivery node moves its sockets away)."""

    def add(self, other: Built) -> None:
        self.routers += other.routers
        self.internal += other.internal
        self.loops.update(other.loops)
        self.on_start += other.on_start
        self.on_stop += other.on_stop
        self.drains += other.drains


class Wiring:
    """One process's shared pieces, each made on first use and closed at exit, and the ports one role
    needs from another: the other role's own object when it is composed here, its client otherwise.
    The gateway's process has no role and uses the shared pieces alone."""

    def __init__(self, settings: Settings, roles: Collection[str]) -> None:
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"roles are some of {', '.join(ROLES)}; got {sorted(roles)}")
        self.settings = settings
        self.roles = frozenset(roles)
        self.embedded = self.roles == set(ROLES)
        """Every role in this process (``courier dev``): SQLite is allowed and migrated at start."""
        self.revoked = RevokedSessions()
        self.tokens = AccessTokens(settings.jwt, revoked=self.revoked)
        self.auth = Authenticate(self.tokens)
        self.guard = RequireInternal(settings.internal_token)
        self.ring = RingSource(
            nodes=settings.ring.nodes,
            file=settings.ring.file,
            vnodes=settings.ring.vnodes,
            reload_s=settings.ring.reload_s,
        )
        self.local: dict[str, Any] = {}
        """Each role composed so far -> the object its internal API serves."""
        self.closers: list[Hook] = []
        self._clients: dict[str, InternalClient] = {}

    def _local(self, role: str) -> Any:
        """What role ``role`` serves when it is composed in this process (built before whoever asks), else None."""
        if role not in self.roles:
            return None
        if role not in self.local:
            raise RuntimeError(f"{role} is asked for before it is built: ROLES is not in dependency order")
        return self.local[role]

    # --- shared pieces ---

    @property
    def remote_roles(self) -> frozenset[str]:
        """The roles this process calls over HTTP."""
        return frozenset(self._clients)

    def client(self, role: str) -> InternalClient:
        """The HTTP client of role ``role``'s internal API."""
        if role not in self._clients:
            self._clients[role] = InternalClient(getattr(self.settings.services, role), self.settings.internal_token)
            self.closers.append(self._clients[role].close)
        return self._clients[role]

    @cached_property
    def redis(self) -> Any:
        """The process's one Redis client (``COURIER_REDIS__URL``), or None for in-process state."""
        if not self.settings.redis.url:
            return None
        from services.message.adapters.redis import connect

        redis = connect(self.settings.redis.url)
        self.closers.append(redis.aclose)
        return redis

    @cached_property
    def engine(self) -> AsyncEngine:
        """The process's one database engine. A process without every role needs a server database
        (``COURIER_DATABASE_URL``): SQLite is one process's file."""
        if not self.settings.database_url and not self.embedded:
            raise SystemExit("courier run needs COURIER_DATABASE_URL (MySQL/MariaDB or PostgreSQL)")
        engine = db.create_engine(self.settings.sqlalchemy_url)
        telemetry.instrument_engine(engine)
        self.closers.append(engine.dispose)
        return engine

    @cached_property
    def revocations(self) -> MemoryRevocations | RedisRevocations:
        """Revoked sessions: shared through Redis, which every process follows, or this process's own (then
        only the identity process itself refuses the tokens of a session it ended)."""
        ttl_s = self.settings.jwt.access_ttl_s + CLOCK_MARGIN_S
        if self.redis is None:
            return MemoryRevocations(self.revoked, ttl_s=ttl_s)
        return RedisRevocations(self.redis, self.revoked, ttl_s=ttl_s)

    @cached_property
    def routes(self) -> RouteTable | None:
        """The Redis route table (where devices really are), or None without Redis."""
        if self.redis is None:
            return None
        from services.delivery.routes import RedisRouteTable

        return RedisRouteTable(self.redis, ttl_s=int(self.settings.presence_ttl_s * 2))

    @cached_property
    def limiter(self) -> RateLimiter:
        """Token buckets shared by every replica through Redis (on the wall clock, the one clock all
        replicas share), or per process without it."""
        if self.redis is None:
            return RateLimiter(self.settings.limits, MemoryBucketStore())
        from services.gateway.redis_buckets import RedisBucketStore

        return RateLimiter(self.settings.limits, RedisBucketStore(self.redis), time.time)

    @cached_property
    def hub(self) -> Hub:
        """This process's delivery node: its sockets, and their unacked pushes kept in Redis when there is
        one (so they outlive the node)."""
        pending = None
        if self.redis is not None:
            from services.delivery.pending import RedisPendingStore

            pending = RedisPendingStore(self.redis, ttl_s=3600)
        return Hub(pending=pending, send_budget_bytes=self.settings.delivery.send_queue_total_bytes)

    # --- one role's port onto another ---

    @cached_property
    def pusher(self) -> Pusher:
        """Pushes to devices: straight into the hub when this process is the only delivery node, through the
        ring to every node otherwise."""
        if "delivery" in self.roles and not (self.settings.ring.nodes or self.settings.ring.file):
            return self.hub
        pusher = delivery_internal.RingPusher(self.ring, self.settings.internal_token, routes=self.routes)
        self.closers.append(pusher.close)
        return pusher

    @cached_property
    def users(self) -> UserDirectory:
        directory: UserDirectory | None = self._local("identity")
        return directory or identity_internal.IdentityClient(self.client("identity"))

    @cached_property
    def conversations(self) -> LocalConversations | conversation_internal.ConversationsClient:
        """message's ``Conversations``, delivery's ``Members`` and file's ``ConversationMembership``."""
        directory: ConversationDirectory | None = self._local("conversation")
        if directory is not None:
            return LocalConversations(directory)
        return conversation_internal.ConversationsClient(self.client("conversation"))

    @cached_property
    def messages(self) -> Messages:
        service: MessageService | None = self._local("message")
        return service or self.messages_client

    @cached_property
    def activity(self) -> ActivityReader:
        """The message service is built after the conversation service that asks for this: found on use."""
        if "message" in self.roles:
            return LocalActivity(lambda: self.local["message"])
        return self.messages_client

    @cached_property
    def messages_client(self) -> message_internal.MessagesClient:
        """delivery's ``Messages`` and conversation's ``ActivityReader`` over HTTP."""
        return message_internal.MessagesClient(self.client("message"))

    @cached_property
    def file_shares(self) -> FileShares:
        shares: FileShares | None = self._local("file")
        return shares or file_internal.FileSharesClient(self.client("file"))

    @cached_property
    def presence(self) -> PresenceTracker:
        tracker: PresenceTracker | None = self._local("presence")
        return tracker or presence_internal.PresenceClient(self.client("presence"))


class LocalConversations:
    """Other services' view of conversations, read from the conversation directory in this process."""

    def __init__(self, directory: ConversationDirectory) -> None:
        self._directory = directory

    async def get(self, conversation_id: str) -> Conversation | None:
        found = await self._directory.get(conversation_id)
        if found is None:
            return None
        return Conversation(found.conversation_id, {uid: str(role) for uid, role in found.members.items()}, found.large)

    async def conversation_ids(self, user_id: str) -> list[str]:
        return await self._directory.conversation_ids(user_id)

    async def members(self, conversation_id: str, user_id: str) -> Sequence[str]:
        found = await self._directory.get(conversation_id)
        if found is None or user_id not in found.members:
            raise NotFound("no such conversation")
        return list(found.members)

    async def is_member(self, conversation_id: str, user_id: str) -> bool:
        found = await self._directory.get(conversation_id)
        return found is not None and user_id in found.members


class LocalActivity:
    """The conversation list's unread counts and last messages, from the message service in this process
    (built after the conversation service, hence found when first asked)."""

    def __init__(self, service: Callable[[], MessageService]) -> None:
        self._service = service

    async def activity(
        self, user_id: str, conversations: Sequence[ConversationRecord]
    ) -> Mapping[str, ConversationActivity]:
        views = [
            Conversation(c.conversation_id, {uid: str(r) for uid, r in c.members.items()}, c.large)
            for c in conversations
        ]
        found = await self._service().activity(user_id, views)
        return {
            cid: ConversationActivity(a.max_seq, a.read_seq, a.unread_count, a.last_message, a.last_activity_at)
            for cid, a in found.items()
        }


# --- the roles ---


def _identity(w: Wiring) -> Built:
    identity = build_identity(
        w.settings, sessions=db.sessionmaker(w.engine), tokens=w.tokens, auth=w.auth, revocations=w.revocations
    )
    w.local["identity"] = identity.directory
    return Built([identity.router], [identity_internal.internal_router(identity.directory, w.guard)])


def _conversation(w: Wiring) -> Built:
    conversations = build_conversations(
        w.settings,
        sessions=db.sessionmaker(w.engine),
        auth=w.auth,
        users=w.users,
        activity=w.activity,
        pusher=w.pusher,
    )
    w.local["conversation"] = conversations.directory
    return Built([conversations.router], [conversation_internal.internal_router(conversations.directory, w.guard)])


def _presence(w: Wiring) -> Built:
    redis = w.redis
    store = None
    if redis is not None:
        from services.presence.adapters.redis import RedisPresenceStore

        store = RedisPresenceStore(redis)
    presence = build_presence(w.settings, auth=w.auth, pusher=w.pusher, store=store)
    w.local["presence"] = presence.tracker
    return Built(
        [presence.router],
        [presence_internal.internal_router(presence.tracker, w.guard)],
        loops={"presence-expiry": presence.tracker.run},
    )


def _file(w: Wiring) -> Built:
    files = build_files(w.settings, sessions=db.sessionmaker(w.engine), auth=w.auth, membership=w.conversations)
    w.local["file"] = files.shares
    return Built(
        [files.router],
        [file_internal.internal_router(files.shares, w.guard)],
        loops={"file-garbage": lambda: collect_garbage_forever(files)},
        on_start=[files.start],
        on_stop=[files.close],
    )


def _message(w: Wiring) -> Built:
    settings = w.settings
    prime_metrics()
    store = SqlMessageStore(w.engine)
    redis = w.redis
    inbox: Inbox
    timeline: Timeline
    if redis is not None:
        from services.message.adapters.redis import RedisInbox, RedisTimeline

        inbox = RedisInbox(redis)
        timeline = RedisTimeline(redis, keep=settings.redis.timeline_keep, ttl_s=settings.redis.timeline_ttl_s)
    else:
        inbox, timeline = MemoryInbox(), MemoryTimeline()
    on_stop: list[Hook] = []
    event_log: EventLog
    monitor: Any
    if settings.kafka.bootstrap:
        from services.message.adapters.kafka import KafkaConsumer, KafkaEventLog, KafkaLogMonitor

        event_log = kafka_log = KafkaEventLog(settings.kafka)
        consumer: Any = KafkaConsumer(settings.kafka, MESSAGES_TOPIC, FANOUT_GROUP)
        monitor = KafkaLogMonitor(settings.kafka)
        on_stop += [consumer.stop, kafka_log.stop, monitor.stop]
    else:
        event_log = monitor = memory_log = MemoryEventLog()
        consumer = memory_log.consumer(MESSAGES_TOPIC, FANOUT_GROUP)
    # The outbox makes a publish as durable as its commit. With the log in this process and every socket
    # it feeds here too, both go with the process: a row would bring back nothing that the reconnecting
    # clients' sync does not, so events go straight to the log (docs/design.md 3.3).
    volatile = not settings.kafka.bootstrap and "delivery" in w.roles and w.pusher is w.hub
    relay = OutboxRelay(store, event_log, keeps_rows=not volatile)
    store.publish_on_commit(relay)
    conversations: Conversations = w.conversations
    deps = message_app.MessageDeps(
        store=store,
        conversations=conversations,
        files=w.file_shares,
        locks=message_app.ConversationLocks(),
        limits=message_app.Limits(settings.max_text_length, settings.recall_window_s, settings.edit_window_s),
    )
    service = MessageService(deps, inbox, timeline, w.pusher, sync_limit=settings.delivery.sync_page_limit)
    w.local["message"] = service
    fanout = FanoutWorker(consumer, event_log, service.handle_record, handle_many=service.handle_records)
    return Built(
        [build_message_router(service, w.auth)],
        [message_internal.internal_router(service, w.guard)],
        loops={
            "outbox-relay": relay.run,
            "fanout": fanout.run,
            "outbox-gauges": lambda: sample_forever(lambda: sample_outbox(store), what="the outbox"),
            "log-gauges": lambda: sample_forever(lambda: sample_log(monitor), what="the event log"),
        },
        on_stop=on_stop,
    )


def _delivery(w: Wiring) -> Built:
    settings = w.settings
    if not settings.node_name and not w.embedded:
        raise SystemExit("a delivery node needs COURIER_NODE_NAME (its member name on the ring)")
    delivery = build_delivery(
        settings,
        hub=w.hub,
        pusher=w.pusher,
        messages=w.messages,
        members=w.conversations,
        presence=w.presence,
        tokens=w.tokens,
        revoked=w.revoked,
        limiter=w.limiter,
        routes=w.routes,
        # Behind the gateway the node believes the client address the gateway passes; alone it sees the client.
        internal_token=None if w.embedded else settings.internal_token,
    )
    hub = delivery.hub
    w.local["delivery"] = hub

    async def hand_off(_old: Ring, new: Ring) -> None:
        await reconnect_lost_users(hub, new, settings.node_name)

    w.ring.on_change(hand_off)

    async def close_sockets() -> None:
        hub.close_all(1012, "service restart")
        await asyncio.sleep(0)  # let the writers send their close frames

    async def drain() -> None:
        await hub.drain(settings.shutdown.drain_s)

    return Built(
        [delivery.router],
        [delivery_internal.internal_router(hub, w.guard)],
        loops=delivery.loops,
        on_stop=[close_sockets],
        drains=[drain],
    )


BUILDERS: dict[str, Callable[[Wiring], Built]] = {
    "identity": _identity,
    "conversation": _conversation,
    "presence": _presence,
    "file": _file,
    "message": _message,
    "delivery": _delivery,
}


class Process:
    """The roles ``roles`` composed into one process: its routers, and the loops ``start``/``stop`` run.

    Every process that pushes follows the ring file, and every process follows revoked sessions (it
    verifies access tokens). The embedded process migrates its database at start; a distributed one is
    migrated beforehand (``courier migrate``)."""

    def __init__(self, settings: Settings, roles: Collection[str]) -> None:
        self.wiring = w = Wiring(settings, roles)
        self.built = built = Built()
        for role in ROLES:
            if role in w.roles:
                built.add(BUILDERS[role](w))
        self.engine = w.engine if w.roles & DATABASE_ROLES else None
        if settings.ring.file:
            built.loops.setdefault("ring-watch", w.ring.run)
        revocations = w.revocations
        if isinstance(revocations, RedisRevocations):
            built.on_start.insert(0, revocations.start)
            built.loops.setdefault("revoked-sessions", revocations.run)
        self.draining = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def routers(self) -> list[APIRouter]:
        """The public routers, and the internal ones when other processes call this one."""
        return self.built.routers if self.wiring.embedded else self.built.routers + self.built.internal

    async def start(self) -> None:
        if self.wiring.embedded and not self.wiring.settings.database_url:
            self.wiring.settings.data_dir.mkdir(parents=True, exist_ok=True)
        if self.wiring.embedded and self.engine is not None:
            await upgrade(self.engine)
        for start in self.built.on_start:
            await start()
        self._tasks = [asyncio.create_task(loop(), name=name) for name, loop in self.built.loops.items()]

    async def stop(self) -> None:
        """Loops first, then what they use: a loop still running would reopen a client just stopped. A loop
        that has not ended ``LOOP_STOP_S`` after its cancellation is left behind, named in the log, so that
        what it uses is stopped all the same: a process stuck here would keep its Kafka consumer in the
        fan-out group, holding its partitions without reading them, until something killed it."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            ended, stuck = await asyncio.wait(self._tasks, timeout=LOOP_STOP_S)
            for task in stuck:
                log.error(
                    "loop %s did not end within %g s of being stopped; stopping without it",
                    task.get_name(),
                    LOOP_STOP_S,
                )
            for task in ended:
                if not task.cancelled() and task.exception() is not None:
                    log.error("loop %s had failed", task.get_name(), exc_info=task.exception())
        for stop in self.built.on_stop:
            await stop()
        for close in reversed(self.wiring.closers):
            await close()

    @asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        """The app's lifespan: started before it serves, stopped (and its traces flushed) after."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()
            telemetry.shutdown()

    async def drain(self, lag: Hook) -> None:
        """SIGTERM: not ready from now on, serving on for ``lag``, and meanwhile the roles' own drains."""
        self.draining.set()
        await asyncio.gather(lag(), *(drain() for drain in self.built.drains))

    async def ready(self) -> bool:
        if self.draining.is_set():
            return False
        if self.engine is not None:
            try:
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            except Exception:  # noqa: BLE001 - readiness reports any database failure as not ready
                log.warning("database not reachable", exc_info=True)
                return False
        return all(not task.done() for task in self._tasks)
