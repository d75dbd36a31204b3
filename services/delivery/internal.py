"""Pushing to delivery nodes: the node's ``/internal/push`` route, and ``RingPusher``, the
``Pusher`` every other process uses to reach the node that holds a user's sockets."""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.common.batching import Batcher
from services.common.contract import Call, call, serve
from services.common.errors import CourierError
from services.common.internal import InternalClient, RequireInternal
from services.common.push import Push
from services.common.ring import Ring, RingSource
from services.delivery.routes import RouteTable

if TYPE_CHECKING:
    from services.delivery.hub import Hub

log = logging.getLogger("courier.delivery.push")

MAX_BATCH = 500
Request = TypeVar("Request", bound=BaseModel)


class PushTo(BaseModel):
    user_ids: list[str]
    frame: dict[str, Any]
    tracked: bool = False
    skip_device: tuple[str, str] | None = None

    def to_push(self) -> Push:
        return Push(self.user_ids, self.frame, self.tracked, self.skip_device)


class Pushes(BaseModel):
    pushes: list[PushTo] = Field(max_length=MAX_BATCH)


class FramesTo(BaseModel):
    user_ids: list[str]
    frames: list[dict[str, Any]] = Field(max_length=MAX_BATCH)


@call("POST", "/internal/push", PushTo)
async def push(local: "Hub", body: PushTo) -> None:
    """One push: what processes of the previous release send during a rolling upgrade."""
    await local.push_many([body.to_push()])


@call("POST", "/internal/push/batch", Pushes)
async def push_many(local: "Hub", body: Pushes) -> None:
    """Several pushes in their order (``RingPusher`` sends what gathered during its last request)."""
    await local.push_many([p.to_push() for p in body.pushes])


@call("POST", "/internal/push/frames", FramesTo)
async def push_frames(local: "Hub", body: FramesTo) -> None:
    """Several transient frames to the same users, in order (``RingPusher.push_frames``)."""
    await local.push_frames(body.user_ids, body.frames)


def internal_router(local: "Hub", guard: RequireInternal) -> APIRouter:
    return serve(local, guard, [push, push_many, push_frames])


def _group_by_node(
    user_ids: Collection[str], routed: Mapping[str, Mapping[str, str]], ring: Ring, skip_device: tuple[str, str] | None
) -> dict[str, list[str]]:
    """The nodes to send a push to, each with its share of ``user_ids``: the nodes holding each user's devices
    (the route table's record), else the node the ring names for the user. A node holding only the device the
    event came from gets nothing for that user: the sender's node, in the usual case of a single device."""
    by_node: dict[str, list[str]] = defaultdict(list)
    for user_id in user_ids:
        devices = routed.get(user_id)
        if not devices:
            by_node[ring.node_for(user_id)].append(user_id)
            continue
        for node in {node for device, node in devices.items() if (user_id, device) != skip_device}:
            by_node[node].append(user_id)
    return by_node


class RingPusher:
    """Groups recipients by owning node (ring, or the route table when a user's devices sit on
    another node; a node holding only the device a push comes from is left out for its user) and hands
    each node its share through that node's ``Batcher``: one request per node in flight, carrying every
    push that arrived while the previous one was out. Best effort: a node that cannot be reached is
    logged; its users will ``sync``."""

    def __init__(
        self,
        ring: RingSource,
        token: str,
        *,
        routes: RouteTable | None = None,
        timeout_s: float = 5.0,
        max_batch: int = MAX_BATCH,
    ) -> None:
        if max_batch > MAX_BATCH:
            raise ValueError(f"the push calls take at most {MAX_BATCH} pushes or frames")
        self._ring = ring
        self._token = token
        self._routes = routes
        self._timeout_s = timeout_s
        self._max_batch = max_batch
        self._clients: dict[str, InternalClient] = {}
        self._batchers: dict[str, Batcher[PushTo, None]] = {}
        self.failures = 0

    def _client(self, node: str) -> InternalClient:
        url = self._ring.url_for(node)
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = InternalClient(url, self._token, timeout_s=self._timeout_s)
        return client

    def _batcher(self, node: str) -> Batcher[PushTo, None]:
        batcher = self._batchers.get(node)
        if batcher is None:
            batcher = self._batchers[node] = Batcher(partial(self._post, node), max_batch=self._max_batch)
        return batcher

    async def _routed(self, user_ids: Collection[str]) -> dict[str, dict[str, str]]:
        """The route table's record of each user's devices (none for a user the ring alone routes)."""
        if self._routes is None:
            return {}
        try:
            return await self._routes.devices_of(user_ids)
        except CourierError as exc:  # the table is an optimisation: the ring still routes
            log.warning("route table unavailable (%s); routing by the ring", exc)
            return {}

    async def _by_node(self, user_ids: Collection[str]) -> dict[str, list[str]]:
        return _group_by_node(user_ids, await self._routed(user_ids), self._ring.ring, None)

    async def push(
        self,
        user_ids: Collection[str],
        frame: Mapping[str, Any],
        *,
        tracked: bool = False,
        skip_device: tuple[str, str] | None = None,
    ) -> None:
        await self.push_many([Push(user_ids, frame, tracked, skip_device)])

    async def push_many(self, pushes: Sequence[Push]) -> None:
        """One route look-up for every recipient, then each push's share queued on its nodes' batchers in
        the order given, so a node receives them in that order (one request in flight per node)."""
        if not pushes or not self._ring.ring.members:
            return
        users = {user_id for push in pushes for user_id in push.user_ids}
        if not users:
            return
        routed, ring = await self._routed(users), self._ring.ring
        shares = [
            self._batcher(node).submit(
                PushTo.model_construct(
                    user_ids=users, frame=dict(push.frame), tracked=push.tracked, skip_device=push.skip_device
                )
            )
            for push in pushes
            for node, users in _group_by_node(push.user_ids, routed, ring, push.skip_device).items()
        ]
        await asyncio.gather(*shares)

    async def push_frames(self, user_ids: Collection[str], frames: Sequence[Mapping[str, Any]]) -> None:
        """One route look-up, then per node the users once and the frames in requests of ``max_batch``."""
        if not user_ids or not frames or not self._ring.ring.members:
            return

        async def to_node(node: str, users: list[str]) -> None:
            for start in range(0, len(frames), self._max_batch):
                chunk = [dict(frame) for frame in frames[start : start + self._max_batch]]
                await self._send(node, push_frames, FramesTo(user_ids=users, frames=chunk), len(chunk))

        await asyncio.gather(*(to_node(node, users) for node, users in (await self._by_node(user_ids)).items()))

    async def _post(self, node: str, pushes: list[PushTo]) -> list[None]:
        await self._send(node, push_many, Pushes(pushes=pushes), len(pushes))
        return [None] * len(pushes)

    async def _send(self, node: str, to: Call["Hub", Request, None], request: Request, frames: int) -> None:
        try:
            await to.ask(self._client(node), request)
        except (CourierError, LookupError) as exc:
            self.failures += 1
            log.warning("push of %d frames to %s failed (%s); its users will sync", frames, node, exc)

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        for client in self._clients.values():
            await client.close()
