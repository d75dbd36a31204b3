"""Pushing to delivery nodes: the node's ``/internal/push`` route, and ``RingPusher``, the
``Pusher`` every other process uses to reach the node that holds a user's sockets."""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Collection, Mapping
from typing import Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel

from services.common.errors import CourierError
from services.common.internal import InternalClient, RequireInternal
from services.common.push import Pusher
from services.common.ring import RingSource
from services.delivery.routes import RouteTable

log = logging.getLogger("courier.delivery.push")


class PushBody(BaseModel):
    user_ids: list[str]
    frame: dict[str, Any]
    tracked: bool = False
    skip_device: tuple[str, str] | None = None


def internal_router(local: Pusher, guard: RequireInternal) -> APIRouter:
    router = APIRouter(prefix="/internal", dependencies=[Depends(guard)], include_in_schema=False)

    @router.post("/push", status_code=204)
    async def push(body: PushBody) -> Response:
        await local.push(body.user_ids, body.frame, tracked=body.tracked, skip_device=body.skip_device)
        return Response(status_code=204)

    return router


class RingPusher:
    """Groups recipients by owning node (ring, or the route table when a user's devices sit on
    another node) and posts one batch per node, concurrently. Best effort: a node that cannot be
    reached is logged; its users will ``sync``."""

    def __init__(
        self, ring: RingSource, token: str, *, routes: RouteTable | None = None, timeout_s: float = 5.0
    ) -> None:
        self._ring = ring
        self._token = token
        self._routes = routes
        self._timeout_s = timeout_s
        self._clients: dict[str, InternalClient] = {}
        self.failures = 0

    def _client(self, node: str) -> InternalClient:
        url = self._ring.url_for(node)
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = InternalClient(url, self._token, timeout_s=self._timeout_s)
        return client

    async def push(
        self,
        user_ids: Collection[str],
        frame: Mapping[str, Any],
        *,
        tracked: bool = False,
        skip_device: tuple[str, str] | None = None,
    ) -> None:
        if not user_ids or not self._ring.ring.members:
            return
        by_node: dict[str, list[str]] = defaultdict(list)
        routed: dict[str, set[str]] = {}
        if self._routes is not None:
            try:
                routed = await self._routes.nodes_of(user_ids)
            except CourierError as exc:  # the table is an optimisation: the ring still routes
                log.warning("route table unavailable (%s); routing by the ring", exc)
        for user_id in user_ids:
            for node in routed.get(user_id) or {self._ring.ring.node_for(user_id)}:
                by_node[node].append(user_id)
        body = {"frame": dict(frame), "tracked": tracked, "skip_device": skip_device}
        await asyncio.gather(*(self._post(node, {**body, "user_ids": users}) for node, users in by_node.items()))

    async def _post(self, node: str, body: dict[str, Any]) -> None:
        try:
            await self._client(node).call("POST", "/internal/push", body)
        except (CourierError, LookupError) as exc:
            self.failures += 1
            log.warning("push to %s failed (%s); its users will sync", node, exc)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
