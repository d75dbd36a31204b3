"""presence's internal API for the delivery nodes, and the client that implements their
``PresenceTracker`` port over it."""

from collections.abc import Collection, Sequence
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.common.batching import Batcher
from services.common.contract import call, serve
from services.common.internal import InternalClient, RequireInternal
from services.presence.app import PresenceTracker

MAX_HEARTBEATS = 500


class Device(BaseModel):
    user_id: str
    device_id: str


class Devices(BaseModel):
    devices: list[Device] = Field(max_length=MAX_HEARTBEATS)


class Subscription(BaseModel):
    subscriber_id: str
    user_ids: list[str] = []


class Frames(BaseModel):
    frames: list[dict[str, Any]]


@call("POST", "/internal/presence/connected", Device)
async def connected(tracker: PresenceTracker, body: Device) -> None:
    await tracker.connected(body.user_id, body.device_id)


@call("POST", "/internal/presence/heartbeat", Device)
async def heartbeat(tracker: PresenceTracker, body: Device) -> None:
    """One heartbeat: what delivery nodes of the previous release send during a rolling upgrade."""
    await tracker.heartbeat(body.user_id, body.device_id)


@call("POST", "/internal/presence/heartbeat/batch", Devices)
async def heartbeat_many(tracker: PresenceTracker, body: Devices) -> None:
    """The heartbeats a delivery node gathered while its previous request was out."""
    await tracker.heartbeat_many([(d.user_id, d.device_id) for d in body.devices])


@call("POST", "/internal/presence/disconnected", Device)
async def disconnected(tracker: PresenceTracker, body: Device) -> None:
    await tracker.disconnected(body.user_id, body.device_id)


@call("POST", "/internal/presence/subscribe", Subscription, Frames)
async def subscribe(tracker: PresenceTracker, body: Subscription) -> Frames:
    return Frames(frames=await tracker.subscribe(body.subscriber_id, body.user_ids))


@call("POST", "/internal/presence/unsubscribe_all", Subscription)
async def unsubscribe_all(tracker: PresenceTracker, body: Subscription) -> None:
    await tracker.unsubscribe_all(body.subscriber_id)


def internal_router(tracker: PresenceTracker, guard: RequireInternal) -> APIRouter:
    return serve(tracker, guard, [connected, heartbeat, heartbeat_many, disconnected, subscribe, unsubscribe_all])


class PresenceClient:
    """delivery's ``PresenceTracker`` over HTTP. Heartbeats leave in batches (``Batcher``): a node
    keeps every one of its sockets alive every ``ttl / 3``, thousands of devices per round."""

    def __init__(self, client: InternalClient) -> None:
        self._client = client
        self._heartbeats: Batcher[Device, None] = Batcher(self._heartbeat_each, max_batch=MAX_HEARTBEATS)

    async def connected(self, user_id: str, device_id: str) -> None:
        await connected.ask(self._client, Device(user_id=user_id, device_id=device_id))

    async def heartbeat(self, user_id: str, device_id: str) -> None:
        await self._heartbeats.submit(Device(user_id=user_id, device_id=device_id))

    async def _heartbeat_each(self, devices: list[Device]) -> list[None]:
        await heartbeat_many.ask(self._client, Devices(devices=devices))
        return [None] * len(devices)

    async def heartbeat_many(self, devices: Sequence[tuple[str, str]]) -> None:
        for start in range(0, len(devices), MAX_HEARTBEATS):
            chunk = [Device(user_id=u, device_id=d) for u, d in devices[start : start + MAX_HEARTBEATS]]
            await heartbeat_many.ask(self._client, Devices(devices=chunk))

    async def disconnected(self, user_id: str, device_id: str) -> None:
        await disconnected.ask(self._client, Device(user_id=user_id, device_id=device_id))

    async def subscribe(self, subscriber_id: str, user_ids: Collection[str]) -> list[dict[str, Any]]:
        return (
            await subscribe.ask(self._client, Subscription(subscriber_id=subscriber_id, user_ids=list(user_ids)))
        ).frames

    async def unsubscribe_all(self, subscriber_id: str) -> None:
        await unsubscribe_all.ask(self._client, Subscription(subscriber_id=subscriber_id))
