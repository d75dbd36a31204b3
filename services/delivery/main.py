"""Composition of the delivery service: settings and collaborators in, the WebSocket router, the hub and
the node's loops out."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter

from services.common.push import Pusher
from services.common.settings import Settings
from services.common.tokens import AccessTokens, RevokedSessions
from services.delivery import hub as hub_metrics
from services.delivery import session
from services.delivery.api import WebSocketSettings, build_router
from services.delivery.hub import Hub
from services.delivery.ports import FrameLimiter, Members, Messages, PresenceTracker
from services.delivery.revocation import close_revoked_forever
from services.delivery.routes import RouteTable
from services.delivery.session import SessionDeps, keep_presence_alive

LOCAL_NODE = "local"
"""The node's name in its metrics when it has none: the one delivery node of ``courier dev``."""
Loop = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Delivery:
    router: APIRouter
    """``/v1/ws``."""
    hub: Hub
    """This node's sockets: what pushes reach, served as ``/internal/push`` to the other processes."""
    loops: dict[str, Loop]
    """Retransmits, closing the sockets of revoked sessions, keeping the devices' presence alive."""


def build_delivery(
    settings: Settings,
    *,
    hub: Hub,
    pusher: Pusher,
    messages: Messages,
    members: Members,
    presence: PresenceTracker,
    tokens: AccessTokens,
    revoked: RevokedSessions,
    limiter: FrameLimiter,
    routes: RouteTable | None,
    internal_token: str | None,
) -> Delivery:
    """``routes`` None: this node holds every device (one node, or no Redis). ``internal_token`` set: the node
    sits behind Courier's gateway and believes the client address the gateway passes with that token."""
    node = settings.node_name or LOCAL_NODE
    hub_metrics.prime_metrics(node)
    session.prime_metrics()
    every_s = settings.presence_ttl_s / 3
    deps = SessionDeps(
        hub=hub,
        pusher=pusher,
        messages=messages,
        members=members,
        presence=presence,
        heartbeat_every_s=every_s,
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
    router = build_router(deps, tokens=tokens, settings=ws_settings, limiter=limiter, internal_token=internal_token)
    loops: dict[str, Loop] = {
        "retransmit": lambda: hub.run_retransmits(settings.delivery.retransmit_tick_s),
        "revoked-sockets": lambda: close_revoked_forever(hub, revoked),
        "presence-keepalive": lambda: keep_presence_alive(hub, presence, every_s=every_s, routes=routes),
    }
    return Delivery(router=router, hub=hub, loops=loops)
