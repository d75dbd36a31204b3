"""One device's WebSocket session: turns client frames into use-case calls and answers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from services.common import metrics
from services.common.errors import CourierError, InvalidRequest
from services.common.push import Pusher
from services.delivery import protocol
from services.delivery.hub import Connection, Hub
from services.delivery.ports import Members, Messages, PresenceTracker
from services.delivery.routes import RouteTable
from services.message.app import SendMessage, SyncedConversation

log = logging.getLogger("courier.delivery.session")

FRAME_LABELS = (*protocol.CLIENT_FRAME_TYPES, "invalid")
"""``type`` values of the client-frame metrics: every frame type, and ``invalid`` for what does not parse."""
# Each series looked up once per process rather than with ``labels()`` for every frame.
RECEIVED_SERIES = {
    (kind, outcome): metrics.WS_FRAMES_RECEIVED.labels(kind, outcome)
    for kind in FRAME_LABELS
    for outcome in ("ok", "error")
}
_DURATION_SERIES = {kind: metrics.WS_FRAME_DURATION.labels(kind) for kind in FRAME_LABELS}


def prime_metrics() -> None:
    """Create every client frame type's series at zero, so /metrics shows them before traffic."""
    for kind in FRAME_LABELS:
        metrics.WS_FRAME_DURATION.labels(kind)
        for outcome in ("ok", "error"):
            metrics.WS_FRAMES_RECEIVED.labels(kind, outcome)


@dataclass(frozen=True)
class SessionDeps:
    hub: Hub
    pusher: Pusher
    messages: Messages
    members: Members
    presence: PresenceTracker
    heartbeat_every_s: float
    sync_limit: int
    sync_max_bytes: int
    """Encoded size a ``sync_result`` stops taking messages at (one always fits)."""
    routes: RouteTable | None = None
    """Where this node records its devices (distributed mode)."""
    node_name: str = ""


class Session:
    def __init__(self, conn: Connection, deps: SessionDeps, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.conn = conn
        self.deps = deps
        self._clock = clock
        self._last_heartbeat = clock()

    @property
    def user_id(self) -> str:
        return self.conn.user_id

    async def on_text(self, data: str | bytes) -> None:
        """Handle one client frame; every failure becomes an ``error`` frame, the socket stays."""
        ref: protocol.FrameId = None
        kind, outcome = "invalid", "error"
        started = time.perf_counter()
        try:
            frame = protocol.parse_frame(data)
            ref, kind = frame.id, frame.type
            await self._heartbeat()
            await self._dispatch(frame)
            outcome = "ok"
        except protocol.FrameError as exc:
            self.conn.offer(protocol.error_frame(exc.ref, InvalidRequest.code, exc.message))
        except CourierError as exc:
            self.conn.offer(protocol.error_frame(ref, exc.code, exc.message))
        finally:
            RECEIVED_SERIES[kind, outcome].inc()
            _DURATION_SERIES[kind].observe(time.perf_counter() - started)

    async def _heartbeat(self) -> None:
        now = self._clock()
        if now - self._last_heartbeat >= self.deps.heartbeat_every_s:
            self._last_heartbeat = now
            await self.deps.presence.heartbeat(self.conn.user_id, self.conn.device_id)

    async def _dispatch(self, frame: protocol.ClientFrame) -> None:
        conn, deps = self.conn, self.deps
        match frame:
            case protocol.SendFrame():
                sent = await deps.messages.send(
                    SendMessage(frame.conversation_id, conn.user_id, conn.device_id, frame.client_msg_id, frame.content)
                )
                conn.offer(
                    {
                        "type": "send_ack",
                        "ref": frame.id,
                        "conversation_id": sent.message.conversation_id,
                        "seq": sent.message.seq,
                        "message_id": sent.message.message_id,
                        "created_at": sent.message.created_at_wire,
                        "duplicate": not sent.created,
                    }
                )
            case protocol.AckFrame():
                await deps.hub.ack(conn, frame.conversation_id, frame.seq)
            case protocol.SyncFrame():
                limit = min(frame.limit or deps.sync_limit, deps.sync_limit)
                synced = await deps.messages.sync(conn.user_id, frame.cursors, limit=limit)
                answer = bounded_sync_result(frame.id, synced, max_bytes=deps.sync_max_bytes)
                metrics.MESSAGES_SYNCED.inc(sum(len(page["messages"]) for page in answer["conversations"]))
                conn.offer(answer)
            case protocol.ReadFrame():
                await deps.messages.mark_read(frame.conversation_id, conn.user_id, frame.seq)
            case protocol.TypingFrame():
                members = await deps.members.members(frame.conversation_id, conn.user_id)
                others = [m for m in members if m != conn.user_id]
                await deps.pusher.push(
                    others,
                    {
                        "type": "typing",
                        "conversation_id": frame.conversation_id,
                        "user_id": conn.user_id,
                        "state": frame.state,
                    },
                )
            case protocol.PresenceSubscribeFrame():
                for current in await deps.presence.subscribe(conn.user_id, frame.user_ids):
                    conn.offer(current)
            case protocol.CallFrame():
                await self._relay_call(frame)
            case protocol.PingFrame():
                await deps.presence.heartbeat(conn.user_id, conn.device_id)
                conn.offer({"type": "pong", "ref": frame.id})

    async def _relay_call(self, frame: protocol.CallFrame) -> None:
        """To the named peer (or every other member), and to the caller's other devices so they stop
        ringing or show the call as answered elsewhere."""
        members = await self.deps.members.members(frame.conversation_id, self.conn.user_id)
        if frame.to is not None and frame.to not in members:
            raise InvalidRequest("call target is not a member of the conversation")
        peers = [frame.to] if frame.to is not None else [m for m in members if m != self.conn.user_id]
        relayed: dict[str, Any] = frame.relayed(sender_id=self.conn.user_id, sender_device_id=self.conn.device_id)
        await self.deps.pusher.push(
            [*peers, self.conn.user_id], relayed, skip_device=(self.conn.user_id, self.conn.device_id)
        )


def bounded_sync_result(
    ref: protocol.FrameId, synced: Sequence[SyncedConversation], *, max_bytes: int
) -> dict[str, Any]:
    """The ``sync_result`` of ``synced``, its messages cut where the next one would take the encoded frame
    past ``max_bytes``. The first message always goes in, so that every sync makes progress. A cut page
    answers ``has_more: true``; a conversation after the cut is still listed, with no messages and
    ``has_more: true``, so that the client asks for it again rather than believing it is up to date.
    """
    size = _encoded_size(protocol.sync_result(ref, []))
    pages: list[dict[str, Any]] = []
    taken, full = 0, False
    for synced_conversation in synced:
        conversation_id, messages = synced_conversation.conversation_id, []
        # Sized with has_more false (the longer literal) and a separator per entry: an upper bound.
        size += _encoded_size(_page(conversation_id, [], has_more=False)) + 1
        for message in [] if full else synced_conversation.messages:
            wire = message.to_wire()
            cost = _encoded_size(wire) + 1
            if taken and size + cost > max_bytes:
                full = True
                break
            messages.append(wire)
            size, taken = size + cost, taken + 1
        has_more = synced_conversation.has_more or len(messages) < len(synced_conversation.messages)
        pages.append(_page(conversation_id, messages, has_more=has_more))
    return protocol.sync_result(ref, pages)


def _encoded_size(value: Any) -> int:
    return len(orjson.dumps(value))


def _page(conversation_id: str, messages: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    return {"conversation_id": conversation_id, "messages": messages, "has_more": has_more}


async def keep_presence_alive(
    hub: Hub, presence: PresenceTracker, *, every_s: float, routes: RouteTable | None = None
) -> None:
    """A connected socket is a live device even when its client sends nothing: heartbeat them all
    (and keep their routes from expiring)."""
    while True:
        await asyncio.sleep(every_s)
        if routes is not None:
            try:
                await routes.refresh(hub.user_ids())
            except CourierError:
                log.warning("route refresh failed; the next round retries")
        try:
            await presence.heartbeat_many([(c.user_id, c.device_id) for c in hub.connections() if c.closing is None])
        except Exception:  # a presence outage must not stop the loop; the next round retries
            log.exception("presence heartbeat failed")
