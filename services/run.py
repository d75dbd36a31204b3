"""The composition roots of ``courier run <service>``: one service per process, real adapters,
service-to-service HTTP with the internal token, delivery nodes on a consistent-hash ring.

Each builder returns the routers and the background loops of its service; ``create_service_app``
puts them in a FastAPI app with health, readiness and metrics. The gateway is special: a byte
splicing front (``services.gateway.front``) before its HTTP app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import ORJSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import db, shutdown, telemetry
from services.common.internal import InternalClient, RequireInternal
from services.common.metrics import RING_HANDOFFS
from services.common.observe import observe
from services.common.revocation import CLOCK_MARGIN_S, MemoryRevocations, RedisRevocations
from services.common.ring import Ring, RingSource
from services.common.settings import Settings
from services.common.tokens import AccessTokens, RevokedSessions
from services.common.web import Authenticate, install_error_handlers

log = logging.getLogger("courier.run")

SERVICES = ("gateway", "identity", "conversation", "message", "delivery", "presence", "file")
STATIC_DIR = Path(__file__).parent / "gateway" / "static"
Loop = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class Built:
    """What one service contributes to its process."""

    routers: list[APIRouter] = field(default_factory=list)
    loops: dict[str, Loop] = field(default_factory=dict)
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    engine: AsyncEngine | None = None
    # What to do between SIGTERM and the shutdown besides serving on (a delivery node moves its sockets away).
    drain: Callable[[], Awaitable[Any]] | None = None


class Wiring:
    """Shared pieces of one process, created on first use and closed at exit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
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
        self._clients: dict[str, InternalClient] = {}
        self._redis: Any = None
        self._revocations: RedisRevocations | None = None
        self.closers: list[Callable[[], Awaitable[None]]] = []

    def client(self, service: str) -> InternalClient:
        if service not in self._clients:
            client = InternalClient(getattr(self.settings.services, service), self.settings.internal_token)
            self._clients[service] = client
            self.closers.append(client.close)
        return self._clients[service]

    def redis(self) -> Any:
        """The process's one Redis client (``COURIER_REDIS__URL``), or None for in-process state."""
        if not self.settings.redis.url:
            return None
        if self._redis is None:
            from services.message.adapters.redis import connect

            self._redis = connect(self.settings.redis.url)
            self.closers.append(self._redis.aclose)
        return self._redis

    def shared_revocations(self) -> RedisRevocations | None:
        """Revoked sessions shared through Redis, which every process follows; None without Redis (then
        only the identity process itself refuses the tokens of a session it ended)."""
        redis = self.redis()
        if redis is None:
            return None
        if self._revocations is None:
            ttl_s = self.settings.jwt.access_ttl_s + CLOCK_MARGIN_S
            self._revocations = RedisRevocations(redis, self.revoked, ttl_s=ttl_s)
        return self._revocations

    def engine(self) -> AsyncEngine:
        if not self.settings.database_url:
            raise SystemExit("courier run needs COURIER_DATABASE_URL (MySQL/MariaDB or PostgreSQL)")
        engine = db.create_engine(self.settings.database_url)
        telemetry.instrument_engine(engine)
        self.closers.append(engine.dispose)
        return engine

    def routes(self) -> Any:
        """The Redis route table (where devices really are), or None without Redis."""
        redis = self.redis()
        if redis is None:
            return None
        from services.delivery.routes import RedisRouteTable

        return RedisRouteTable(redis, ttl_s=int(self.settings.presence_ttl_s * 2))

    def pusher(self) -> Any:
        from services.delivery.internal import RingPusher

        pusher = RingPusher(self.ring, self.settings.internal_token, routes=self.routes())
        self.closers.append(pusher.close)
        return pusher


def build_identity(w: Wiring) -> Built:
    from services.identity.internal import internal_router
    from services.identity.main import build_identity as build

    engine = w.engine()
    revocations = w.shared_revocations() or MemoryRevocations(
        w.revoked, ttl_s=w.settings.jwt.access_ttl_s + CLOCK_MARGIN_S
    )
    identity = build(
        w.settings, sessions=db.sessionmaker(engine), tokens=w.tokens, auth=w.auth, revocations=revocations
    )
    return Built([identity.router, internal_router(identity.directory, w.guard)], engine=engine)


def build_conversation(w: Wiring) -> Built:
    from services.conversation.internal import internal_router
    from services.conversation.main import build_conversations
    from services.identity.internal import IdentityClient
    from services.message.internal import MessagesClient

    engine = w.engine()
    conversations = build_conversations(
        w.settings,
        sessions=db.sessionmaker(engine),
        auth=w.auth,
        users=IdentityClient(w.client("identity")),
        activity=MessagesClient(w.client("message")),
        pusher=w.pusher(),
    )
    return Built([conversations.router, internal_router(conversations.directory, w.guard)], engine=engine)


def build_message(w: Wiring) -> Built:
    from services.conversation.internal import ConversationsClient
    from services.file.internal import FileSharesClient
    from services.message import app as message_app
    from services.message.adapters.memory import MemoryEventLog, MemoryInbox, MemoryTimeline
    from services.message.adapters.sql import SqlMessageStore
    from services.message.api import build_router
    from services.message.internal import internal_router
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

    prime_metrics()
    settings = w.settings
    engine = w.engine()
    store = SqlMessageStore(engine)
    redis = w.redis()
    inbox: Any
    timeline: Any
    if redis is not None:
        from services.message.adapters.redis import RedisInbox, RedisTimeline

        inbox = RedisInbox(redis)
        timeline = RedisTimeline(redis, keep=settings.redis.timeline_keep, ttl_s=settings.redis.timeline_ttl_s)
    else:
        inbox, timeline = MemoryInbox(), MemoryTimeline()
    on_stop: list[Callable[[], Awaitable[None]]] = []
    if settings.kafka.bootstrap:
        from services.message.adapters.kafka import KafkaConsumer, KafkaEventLog, KafkaLogMonitor

        event_log: Any = KafkaEventLog(settings.kafka)
        consumer: Any = KafkaConsumer(settings.kafka, MESSAGES_TOPIC, FANOUT_GROUP)
        monitor: Any = KafkaLogMonitor(settings.kafka)
        on_stop += [consumer.stop, event_log.stop, monitor.stop]
    else:
        event_log = monitor = MemoryEventLog()
        consumer = event_log.consumer(MESSAGES_TOPIC, FANOUT_GROUP)
    relay = OutboxRelay(store, event_log)
    store.publish_on_commit(relay)
    deps = message_app.MessageDeps(
        store=store,
        conversations=ConversationsClient(w.client("conversation")),
        files=FileSharesClient(w.client("file")),
        locks=message_app.ConversationLocks(),
        limits=message_app.Limits(settings.max_text_length, settings.recall_window_s, settings.edit_window_s),
    )
    service = MessageService(deps, inbox, timeline, w.pusher(), sync_limit=settings.delivery.sync_page_limit)
    fanout = FanoutWorker(consumer, event_log, service.handle_record)
    return Built(
        [build_router(service, w.auth), internal_router(service, w.guard)],
        loops={
            "outbox-relay": relay.run,
            "fanout": fanout.run,
            "outbox-gauges": lambda: sample_forever(lambda: sample_outbox(store), what="the outbox"),
            "log-gauges": lambda: sample_forever(lambda: sample_log(monitor), what="the event log"),
        },
        on_stop=on_stop,
        engine=engine,
    )


def build_presence(w: Wiring) -> Built:
    from services.presence.internal import internal_router
    from services.presence.main import build_presence as build

    redis = w.redis()
    store = None
    if redis is not None:
        from services.presence.adapters.redis import RedisPresenceStore

        store = RedisPresenceStore(redis)
    presence = build(w.settings, auth=w.auth, pusher=w.pusher(), store=store)
    return Built(
        [presence.router, internal_router(presence.tracker, w.guard)], loops={"presence-expiry": presence.tracker.run}
    )


def build_file(w: Wiring) -> Built:
    from services.conversation.internal import ConversationsClient
    from services.file.internal import internal_router
    from services.file.main import build_files, collect_garbage_forever

    engine = w.engine()
    files = build_files(
        w.settings,
        sessions=db.sessionmaker(engine),
        auth=w.auth,
        membership=ConversationsClient(w.client("conversation")),
    )
    return Built(
        [files.router, internal_router(files.shares, w.guard)],
        loops={"file-garbage": lambda: collect_garbage_forever(files)},
        engine=engine,
        on_start=[files.start],
        on_stop=[files.close],
    )


def build_delivery(w: Wiring) -> Built:
    from services.conversation.internal import ConversationsClient
    from services.delivery import hub as delivery_hub
    from services.delivery import session
    from services.delivery.api import WebSocketSettings, build_router
    from services.delivery.hub import Hub
    from services.delivery.internal import internal_router
    from services.delivery.revocation import close_revoked_forever
    from services.delivery.session import SessionDeps, keep_presence_alive
    from services.message.internal import MessagesClient
    from services.presence.internal import PresenceClient

    settings = w.settings
    if not settings.node_name:
        raise SystemExit("a delivery node needs COURIER_NODE_NAME (its member name on the ring)")
    delivery_hub.prime_metrics(settings.node_name)
    session.prime_metrics()
    hub = Hub(pending=_pending_store(w.redis()), send_budget_bytes=settings.delivery.send_queue_total_bytes)
    presence = PresenceClient(w.client("presence"))
    routes = w.routes()
    deps = SessionDeps(
        hub=hub,
        pusher=w.pusher(),
        messages=MessagesClient(w.client("message")),
        members=ConversationsClient(w.client("conversation")),
        presence=presence,
        heartbeat_every_s=settings.presence_ttl_s / 3,
        sync_limit=settings.delivery.sync_page_limit,
        sync_max_bytes=settings.delivery.sync_result_max_bytes,
        routes=routes,
        node_name=settings.node_name,
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
    limiter = _limiter(settings, w.redis())

    async def hand_off(old: Ring, new: Ring) -> None:
        await reconnect_lost_users(hub, new, settings.node_name)

    w.ring.on_change(hand_off)

    async def stop() -> None:
        hub.close_all(1012, "service restart")
        await asyncio.sleep(0)

    async def drain() -> None:
        await hub.drain(settings.shutdown.drain_s)

    return Built(
        [
            build_router(
                deps, tokens=w.tokens, settings=ws_settings, limiter=limiter, internal_token=settings.internal_token
            ),
            internal_router(hub, w.guard),
        ],
        loops={
            "retransmit": lambda: hub.run_retransmits(settings.delivery.retransmit_tick_s),
            "revoked-sockets": lambda: close_revoked_forever(hub, w.revoked),
            "presence-keepalive": lambda: keep_presence_alive(
                hub, presence, every_s=settings.presence_ttl_s / 3, routes=routes
            ),
        },
        on_stop=[stop],
        drain=drain,
    )


async def reconnect_lost_users(
    hub: Any, ring: Ring, node_name: str, *, jitter_ms: int = 5000, grace_s: float = 30.0
) -> int:
    """Ask the devices of users this node no longer owns to reconnect (through the gateway, to the new
    owner) after a jittered delay, so a ring change causes no reconnect storm; close what remains."""
    moved = [u for u in hub.user_ids() if ring.members and ring.node_for(u) != node_name]
    conns = [c for u in moved for c in hub.devices(u)]
    RING_HANDOFFS.inc(len(moved))
    for conn in conns:
        conn.offer({"type": "reconnect", "after_ms": random.randint(0, jitter_ms)})

    async def close_later() -> None:
        await asyncio.sleep(grace_s + jitter_ms / 1000)
        for conn in conns:
            conn.close(1012, "moved to another delivery node", cause="reconnect")

    if conns:
        task = asyncio.create_task(close_later())
        _background.add(task)
        task.add_done_callback(_background.discard)
    return len(moved)


_background: set[asyncio.Task[None]] = set()


def _pending_store(redis: Any) -> Any:
    """Devices' unacked pushes kept in Redis, so they outlive a delivery node; None without Redis."""
    if redis is None:
        return None
    from services.delivery.pending import RedisPendingStore

    return RedisPendingStore(redis, ttl_s=3600)


def _limiter(settings: Settings, redis: Any) -> Any:
    """Token buckets shared by every replica through Redis (on the wall clock, the one clock all
    replicas share), or per process without it."""
    import time

    from services.gateway.ratelimit import MemoryBucketStore, RateLimiter

    if redis is None:
        return RateLimiter(settings.limits, MemoryBucketStore())
    from services.gateway.redis_buckets import RedisBucketStore

    return RateLimiter(settings.limits, RedisBucketStore(redis), time.time)


BUILDERS: dict[str, Callable[[Wiring], Built]] = {
    "identity": build_identity,
    "conversation": build_conversation,
    "message": build_message,
    "presence": build_presence,
    "file": build_file,
    "delivery": build_delivery,
}


def _ops_routes(app: FastAPI, ready: Callable[[], Awaitable[bool]]) -> None:
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(response: Response) -> dict[str, Any]:
        ok = await ready()
        response.status_code = 200 if ok else 503
        return {"status": "ready" if ok else "unavailable"}

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def create_service_app(name: str, settings: Settings) -> FastAPI:
    telemetry.configure(name)
    wiring = Wiring(settings)
    built = BUILDERS[name](wiring)
    tasks: list[asyncio.Task[None]] = []
    if wiring.settings.ring.file:
        built.loops.setdefault("ring-watch", wiring.ring.run)  # every process that pushes follows the ring
    revocations = wiring.shared_revocations()
    if revocations is not None:  # every process verifies access tokens, so every process follows revocations
        built.on_start.insert(0, revocations.start)
        built.loops.setdefault("revoked-sessions", revocations.run)
    draining = asyncio.Event()

    async def drain() -> None:
        """SIGTERM: not ready from now on, but serving on for the lag; then the service's own drain."""
        draining.set()
        if built.drain is not None:
            await asyncio.gather(shutdown.lag(settings.shutdown.lag_s), built.drain())
        else:
            await shutdown.lag(settings.shutdown.lag_s)

    async def ready() -> bool:
        if draining.is_set():
            return False
        if built.engine is not None:
            try:
                async with built.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            except Exception:  # noqa: BLE001 - any database failure means not ready
                return False
        return all(not t.done() for t in tasks)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        for start in built.on_start:
            await start()
        tasks.extend(asyncio.create_task(loop(), name=n) for n, loop in built.loops.items())
        try:
            yield
        finally:
            # Loops first, then what they use: a loop still running would reopen a client just stopped.
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for stop in built.on_stop:
                await stop()
            for close in reversed(wiring.closers):
                await close()
            telemetry.shutdown()

    app = FastAPI(title=f"Courier {name}", version="1", lifespan=lifespan, default_response_class=ORJSONResponse)
    app.state.drain = drain
    install_error_handlers(app)
    for router in built.routers:
        app.include_router(router)
    _ops_routes(app, ready)
    observe(app, name)
    telemetry.instrument_app(app)
    return app


def create_gateway_app(
    settings: Settings, wiring: Wiring, limiter: Any, client_ip: Callable[[tuple[str, int] | None], str | None]
) -> FastAPI:
    """The gateway's HTTP side (behind the front): limits, the web page, rtc, proxying."""
    from services.gateway.edge import EdgeMiddleware
    from services.gateway.proxy import Proxy
    from services.rtc.main import build_rtc

    proxy = Proxy(settings.services)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await proxy.close()

    app = FastAPI(
        title="Courier",
        version="1",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
        openapi_url=None,
        description="Instant messaging over HTTP and WebSocket; see docs/protocol.md.",
    )
    install_error_handlers(app)
    app.include_router(build_rtc(settings, auth=wiring.auth))

    app.state.draining = False

    async def ready() -> bool:
        return bool(wiring.ring.ring.members) and not app.state.draining

    _ops_routes(app, ready)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        from fastapi.openapi.utils import get_openapi

        own = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description)
        return await proxy.openapi(own)

    @app.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def forward(request: Request, path: str) -> Response:
        return await proxy.forward(request)

    if STATIC_DIR.is_dir():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="web")
    app.add_middleware(
        EdgeMiddleware,
        limiter=limiter,
        tokens=wiring.tokens,
        max_body_bytes=settings.limits.max_body_bytes,
        own_body_limit_prefixes=("/v1/files/blobs/",),
        client_ip=client_ip,
    )
    observe(app, "gateway")  # outside the edge, so its 429s and 413s are counted too
    telemetry.instrument_app(app)
    return app


async def serve_gateway(settings: Settings) -> None:
    """The front on ``settings.host:port``; the HTTP app on a private loopback port behind it."""
    from services.gateway.front import Front

    telemetry.configure("gateway")
    wiring = Wiring(settings)
    limiter = _limiter(settings, wiring.redis())
    inner = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    inner.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    inner.bind(("127.0.0.1", 0))
    inner_port = inner.getsockname()[1]
    front = Front(
        ring=wiring.ring,
        tokens=wiring.tokens,
        limiter=limiter,
        http_upstream=("127.0.0.1", inner_port),
        internal_token=settings.internal_token,
    )
    app = create_gateway_app(settings, wiring, limiter, front.client_ip)
    # The client's address comes from the front (client_ip), never from a header a client could send.
    # log_config=None: uvicorn's loggers go to the process's (JSON) root handler.
    config = uvicorn.Config(
        app,
        log_level="warning",
        log_config=None,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
        ws="services.common.wsprotocol:BoundedCloseProtocol",
    )

    async def drain() -> None:
        """SIGTERM: not ready, but accepting for the lag; then no new connection and the sockets closed spread out."""
        app.state.draining = True
        await shutdown.lag(settings.shutdown.lag_s)
        await front.drain(settings.shutdown.drain_s)

    server = shutdown.DrainingServer(config, drain)
    revocations = wiring.shared_revocations()
    followers = [asyncio.create_task(wiring.ring.run(), name="ring-watch")]
    if revocations is not None:
        await revocations.start()
        followers.append(asyncio.create_task(revocations.run(), name="revoked-sessions"))
    listener = await front.serve(settings.host, settings.port)
    log.info("gateway on %s:%d (http app on 127.0.0.1:%d)", settings.host, settings.port, inner_port)
    try:
        await server.serve(sockets=[inner])
    finally:
        for follower in followers:
            follower.cancel()
        listener.close()
        for close in reversed(wiring.closers):
            await close()
        telemetry.shutdown()
