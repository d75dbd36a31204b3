"""The composition root of ``courier dev``: every service in one process on embedded adapters.

SQLite under ``data_dir``, the in-process cache and event log, the local-disk object
store, and in-process calls where the distributed mode uses HTTP. The use-case code is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import ORJSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from services.common import db, telemetry
from services.common.errors import NotFound
from services.common.hardening import harden
from services.common.observe import observe
from services.common.revocation import CLOCK_MARGIN_S, MemoryRevocations
from services.common.settings import Settings
from services.common.tokens import AccessTokens, RevokedSessions
from services.common.web import Authenticate, install_error_handlers
from services.conversation.directory import ConversationDirectory
from services.conversation.domain import Activity as ConversationActivity
from services.conversation.domain import Conversation as ConversationRecord
from services.conversation.main import build_conversations
from services.delivery import hub as delivery_hub
from services.delivery import session as delivery_session
from services.delivery.api import WebSocketSettings
from services.delivery.api import build_router as build_ws_router
from services.delivery.hub import Hub
from services.delivery.revocation import close_revoked_forever
from services.delivery.session import SessionDeps, keep_presence_alive
from services.file.main import build_files, collect_garbage_forever
from services.gateway.edge import EdgeMiddleware
from services.gateway.ratelimit import MemoryBucketStore, RateLimiter
from services.identity.main import build_identity
from services.message import app as message_app
from services.message.adapters.memory import MemoryEventLog, MemoryInbox, MemoryTimeline
from services.message.adapters.sql import SqlMessageStore
from services.message.api import build_router as build_message_router
from services.message.ports import Conversation
from services.message.service import MessageService
from services.message.workers import (
    DLQ_TOPIC,
    MESSAGES_TOPIC,
    FanoutWorker,
    OutboxRelay,
    prime_metrics,
    sample_forever,
    sample_log,
    sample_outbox,
)
from services.migrate import upgrade
from services.presence.main import build_presence
from services.rtc.main import build_rtc

log = logging.getLogger("courier.allinone")

STATIC_DIR = Path(__file__).parent / "gateway" / "static"
FANOUT_GROUP = "courier-fanout"
LOCAL_NODE = "local"
"""The WebSocket metrics' node label in one process, where there is no ring."""


class ConversationsForMessages:
    """The message service's view of conversations, over the conversation directory."""

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


class ActivityForConversations:
    """The conversation list's unread counts and last messages, from the message service."""

    def __init__(self) -> None:
        self.service: MessageService | None = None

    async def activity(
        self, user_id: str, conversations: Sequence[ConversationRecord]
    ) -> Mapping[str, ConversationActivity]:
        assert self.service is not None, "wired before the first request"
        views = [
            Conversation(c.conversation_id, {uid: str(r) for uid, r in c.members.items()}, c.large)
            for c in conversations
        ]
        found = await self.service.activity(user_id, views)
        return {
            cid: ConversationActivity(a.max_seq, a.read_seq, a.unread_count, a.last_message, a.last_activity_at)
            for cid, a in found.items()
        }


class AllInOne:
    """Everything ``courier dev`` runs, built without I/O; ``start``/``stop`` run the loops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = db.create_engine(settings.sqlalchemy_url)
        sessions = db.sessionmaker(self.engine)
        self.revoked = RevokedSessions()
        self.tokens = AccessTokens(settings.jwt, revoked=self.revoked)
        auth = Authenticate(self.tokens)
        self.limiter = RateLimiter(settings.limits, MemoryBucketStore())
        self.hub = Hub(send_budget_bytes=settings.delivery.send_queue_total_bytes)

        revocations = MemoryRevocations(self.revoked, ttl_s=settings.jwt.access_ttl_s + CLOCK_MARGIN_S)
        self.identity = build_identity(
            settings, sessions=sessions, tokens=self.tokens, auth=auth, revocations=revocations
        )
        activity = ActivityForConversations()
        self.conversations = build_conversations(
            settings, sessions=sessions, auth=auth, users=self.identity.directory, activity=activity, pusher=self.hub
        )
        conversations = ConversationsForMessages(self.conversations.directory)
        self.files = build_files(settings, sessions=sessions, auth=auth, membership=self.conversations.directory)
        self.presence = build_presence(settings, auth=auth, pusher=self.hub)

        self.event_log = MemoryEventLog()
        self.store = store = SqlMessageStore(self.engine)
        self.relay = OutboxRelay(store, self.event_log)
        store.publish_on_commit(self.relay)
        deps = message_app.MessageDeps(
            store=store,
            conversations=conversations,
            files=self.files.shares,
            locks=message_app.ConversationLocks(),
            limits=message_app.Limits(settings.max_text_length, settings.recall_window_s, settings.edit_window_s),
        )
        self.messages = MessageService(
            deps, MemoryInbox(), MemoryTimeline(), self.hub, sync_limit=settings.delivery.sync_page_limit
        )
        activity.service = self.messages
        self.fanout = FanoutWorker(
            self.event_log.consumer(MESSAGES_TOPIC, FANOUT_GROUP), self.event_log, self.messages.handle_record
        )
        session_deps = SessionDeps(
            hub=self.hub,
            pusher=self.hub,
            messages=self.messages,
            members=conversations,
            presence=self.presence.tracker,
            heartbeat_every_s=settings.presence_ttl_s / 3,
            sync_limit=settings.delivery.sync_page_limit,
            sync_max_bytes=settings.delivery.sync_result_max_bytes,
        )
        ws_settings = WebSocketSettings(
            queue_size=settings.delivery.send_queue_size,
            queue_bytes=settings.delivery.send_queue_bytes,
            write_timeout_s=settings.delivery.write_timeout_s,
            idle_timeout_s=settings.delivery.idle_timeout_s,
            max_frame_bytes=settings.limits.max_body_bytes,
            ack_timeout_s=settings.ack_timeout_s,
            max_redeliveries=settings.max_redeliveries,
        )
        self.routers = [
            self.identity.router,
            self.conversations.router,
            build_message_router(self.messages, auth),
            self.files.router,
            self.presence.router,
            build_rtc(settings, auth=auth),
            build_ws_router(session_deps, tokens=self.tokens, settings=ws_settings, limiter=self.limiter),
        ]
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await upgrade(self.engine)
        await self.files.start()
        prime_metrics(group=FANOUT_GROUP)
        delivery_hub.prime_metrics(LOCAL_NODE)
        delivery_session.prime_metrics()
        loops = {
            "outbox-gauges": sample_forever(lambda: sample_outbox(self.store), what="the outbox"),
            "log-gauges": sample_forever(lambda: sample_log(self.event_log, group=FANOUT_GROUP), what="the event log"),
            "outbox-relay": self.relay.run(),
            "fanout": self.fanout.run(),
            "retransmit": self.hub.run_retransmits(self.settings.delivery.retransmit_tick_s),
            "revoked-sockets": close_revoked_forever(self.hub, self.revoked),
            "presence-expiry": self.presence.tracker.run(),
            "file-garbage": collect_garbage_forever(self.files),
            "presence-keepalive": keep_presence_alive(
                self.hub, self.presence.tracker, every_s=self.settings.presence_ttl_s / 3
            ),
        }
        self._tasks = [asyncio.create_task(coro, name=name) for name, coro in loops.items()]

    async def stop(self) -> None:
        self.hub.close_all(1012, "service restart")
        await asyncio.sleep(0)  # let the writers send their close frames
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.files.close()
        await self.engine.dispose()

    async def ready(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001 - readiness reports any database failure as not ready
            log.warning("database not reachable", exc_info=True)
            return False
        return all(not task.done() for task in self._tasks)

    def dlq_size(self) -> int:
        return self.event_log.size(DLQ_TOPIC)


def create_app(settings: Settings) -> FastAPI:
    settings = harden(settings)
    telemetry.configure("all")
    system = AllInOne(settings)
    telemetry.instrument_engine(system.engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await system.start()
        try:
            yield
        finally:
            await system.stop()
            telemetry.shutdown()

    app = FastAPI(
        title="Courier",
        version="1",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
        description="Instant messaging over HTTP and WebSocket; see docs/protocol.md.",
    )
    app.state.system = system
    install_error_handlers(app)
    for router in system.routers:
        app.include_router(router)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(response: Response) -> dict[str, Any]:
        ready = await system.ready()
        response.status_code = 200 if ready else 503
        return {"status": "ready" if ready else "unavailable"}

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    if STATIC_DIR.is_dir():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="web")
    app.add_middleware(
        EdgeMiddleware,
        limiter=system.limiter,
        tokens=system.tokens,
        max_body_bytes=settings.limits.max_body_bytes,
        own_body_limit_prefixes=("/v1/files/blobs/",),
    )
    observe(app, "all")  # outside the edge, so its 429s and 413s are counted too
    telemetry.instrument_app(app)
    return app
