"""presence's internal API for the delivery nodes, and the client that implements their port."""

from collections.abc import Collection, Sequence
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from services.common.batching import Batcher
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


def internal_router(tracker: PresenceTracker, guard: RequireInternal) -> APIRouter:
    router = APIRouter(prefix="/internal/presence", dependencies=[Depends(guard)], include_in_schema=False)

    @router.post("/connected", status_code=204)
    async def connected(body: Device) -> None:
        await tracker.connected(body.user_id, body.device_id)

    @router.post("/heartbeat", status_code=204)
    async def heartbeat(body: Device) -> None:
        """One heartbeat: what delivery nodes of the previous release send during a rolling upgrade."""
        await tracker.heartbeat(body.user_id, body.device_id)

    @router.post("/heartbeat/batch", status_code=204)
    async def heartbeats(body: Devices) -> None:
        """The heartbeats a delivery node gathered while its previous request was out."""
        await tracker.heartbeat_many([(d.user_id, d.device_id) for d in body.devices])

    @router.post("/disconnected", status_code=204)
    async def disconnected(body: Device) -> None:
        await tracker.disconnected(body.user_id, body.device_id)

    @router.post("/subscribe")
    async def subscribe(body: Subscription) -> dict[str, Any]:
        return {"frames": await tracker.subscribe(body.subscriber_id, body.user_ids)}

    @router.post("/unsubscribe_all", status_code=204)
    async def unsubscribe_all(body: Subscription) -> None:
        await tracker.unsubscribe_all(body.subscriber_id)

    return router


class PresenceClient:
    """delivery's ``PresenceTracker`` over HTTP. Heartbeats leave in batches (``Batcher``): a node
    keeps every one of its sockets alive every ``ttl / 3``, thousands of devices per round."""

    def __init__(self, client: InternalClient) -> None:
        self._client = client
        self._heartbeats: Batcher[dict[str, str], None] = Batcher(self._heartbeat_each, max_batch=MAX_HEARTBEATS)

    async def connected(self, user_id: str, device_id: str) -> None:
        await self._client.call("POST", "/internal/presence/connected", {"user_id": user_id, "device_id": device_id})

    async def heartbeat(self, user_id: str, device_id: str) -> None:
        await self._heartbeats.submit({"user_id": user_id, "device_id": device_id})

    async def _heartbeat_each(self, devices: list[dict[str, str]]) -> list[None]:
        await self._client.call("POST", "/internal/presence/heartbeat/batch", {"devices": devices})
        return [None] * len(devices)

    async def heartbeat_many(self, devices: Sequence[tuple[str, str]]) -> None:
        for start in range(0, len(devices), MAX_HEARTBEATS):
            chunk = [{"user_id": u, "device_id": d} for u, d in devices[start : start + MAX_HEARTBEATS]]
            await self._client.call("POST", "/internal/presence/heartbeat/batch", {"devices": chunk})

    async def disconnected(self, user_id: str, device_id: str) -> None:
        await self._client.call("POST", "/internal/presence/disconnected", {"user_id": user_id, "device_id": device_id})

    async def subscribe(self, subscriber_id: str, user_ids: Collection[str]) -> list[dict[str, Any]]:
        answer = await self._client.call(
            "POST", "/internal/presence/subscribe", {"subscriber_id": subscriber_id, "user_ids": list(user_ids)}
        )
        return list(answer["frames"])

    async def unsubscribe_all(self, subscriber_id: str) -> None:
        await self._client.call("POST", "/internal/presence/unsubscribe_all", {"subscriber_id": subscriber_id})
