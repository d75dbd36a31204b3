"""Composition of the presence service: settings and collaborators in, router and tracker out."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import APIRouter

from services.common.push import Pusher
from services.common.settings import Settings
from services.common.web import Authenticate
from services.presence.adapters.memory import MemoryPresenceStore
from services.presence.api import build_router
from services.presence.app import PresenceTracker
from services.presence.ports import PresenceStore


@dataclass(frozen=True)
class Presence:
    router: APIRouter
    # For the delivery nodes: connected/heartbeat/disconnected, subscribe, and the expiry loop (run).
    tracker: PresenceTracker


def build_presence(
    settings: Settings,
    *,
    auth: Authenticate,
    pusher: Pusher,
    clock: Callable[[], float] = time.time,
    store: PresenceStore | None = None,
) -> Presence:
    """``store`` None keeps presence in process memory (the embedded mode)."""
    tracker = PresenceTracker(store or MemoryPresenceStore(), pusher, ttl_s=settings.presence_ttl_s, clock=clock)
    return Presence(router=build_router(tracker, auth=auth), tracker=tracker)
