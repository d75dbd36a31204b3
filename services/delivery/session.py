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
from services.delivery.hub import CLOSE_INTERNAL, Connection, Hub
from services.delivery.ports import Members, Messages, PresenceTracker
from services.delivery.routes import RouteTable
from services.message.app import SendMessage, Sent, SyncedConversation

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


SENDS_AHEAD = 64
"""Most ``send`` frames of one socket read before their answers: past it the socket is read no further
until its sends are answered."""
SENDS_AHEAD_BYTES = 256 * 1024
"""The same bound on the frames' size: a client cannot make a socket hold more than this (and the frame that
passed it) in sends not yet handed over, where 64 frames of the largest size would be 64 MiB."""

# Frames handled as soon as they are read, even with sends in flight: no answer, and nothing they do depends
# on those sends.
_UNORDERED = (protocol.AckFrame, protocol.TypingFrame)


class Session:
    """A socket's frames in the order received. ``send`` frames do not wait for the sends before them:
    they are read while those are committed, handed to the message service together (one hand-over in
    flight per socket), committed in their order and answered in it (docs/design.md 4.1). Every other
    frame with an answer, or whose effect may depend on an earlier send, waits for the sends before it
    to be answered."""

    def __init__(self, conn: Connection, deps: SessionDeps, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.conn = conn
        self.deps = deps
        self._clock = clock
        self._last_heartbeat = clock()
        self._unsent: list[tuple[protocol.SendFrame, float]] = []  # sends read, not handed over; when each was read
        self._unsent_bytes = 0  # the size of their frames
        self._sending: asyncio.Task[None] | None = None

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
            if isinstance(frame, protocol.SendFrame):
                await self._send_later(frame, started, len(data))
                kind = ""  # counted when answered
                return
            if not isinstance(frame, _UNORDERED):
                await self.settled()
            await self._dispatch(frame)
            outcome = "ok"
        except protocol.FrameError as exc:
            await self.settled()
            self.conn.offer(protocol.error_frame(exc.ref, InvalidRequest.code, exc.message))
        except CourierError as exc:
            await self.settled()
            self.conn.offer(protocol.error_frame(ref, exc.code, exc.message))
        finally:
            if kind:
                RECEIVED_SERIES[kind, outcome].inc()
                _DURATION_SERIES[kind].observe(time.perf_counter() - started)

    async def settled(self) -> None:
        """Return once every send read so far is answered."""
        if self._sending is not None:
            await asyncio.wait({self._sending})  # a reader that is cancelled here leaves the sends be

    def stop(self) -> None:
        """The socket is over: stop answering its sends (those handed over are committed all the same)."""
        if self._sending is not None:
            self._sending.cancel()

    async def _send_later(self, frame: protocol.SendFrame, read_at: float, size: int) -> None:
        self._unsent.append((frame, read_at))
        self._unsent_bytes += size
        if self._sending is None:
            self._sending = asyncio.create_task(self._send_all())
        elif len(self._unsent) >= SENDS_AHEAD or self._unsent_bytes >= SENDS_AHEAD_BYTES:
            await self.settled()

    async def _send_all(self) -> None:
        try:
            while self._unsent:
                sends, self._unsent, self._unsent_bytes = self._unsent, [], 0
                await self._send(sends)
        except Exception:
            log.exception("the sends of %s/%s failed", self.conn.user_id, self.conn.device_id)
            self.conn.close(CLOSE_INTERNAL, "internal error; reconnect and sync")
        finally:
            self._sending = None

    async def _send(self, sends: list[tuple[protocol.SendFrame, float]]) -> None:
        conn = self.conn
        cmds = [
            SendMessage(frame.conversation_id, conn.user_id, conn.device_id, frame.client_msg_id, frame.content)
            for frame, _ in sends
        ]
        answers: Sequence[Sent | Exception]
        try:
            answers = await self.deps.messages.send_many(cmds)
        except CourierError as exc:
            answers = [exc] * len(cmds)
        for (frame, read_at), answer in zip(sends, answers, strict=True):
            if isinstance(answer, Sent):
                conn.offer(_send_ack(frame.id, answer))
                outcome = "ok"
            elif isinstance(answer, CourierError):
                conn.offer(protocol.error_frame(frame.id, answer.code, answer.message))
                outcome = "error"
            else:
                raise answer
            RECEIVED_SERIES["send", outcome].inc()
            _DURATION_SERIES["send"].observe(time.perf_counter() - read_at)

    async def _heartbeat(self) -> None:
        now = self._clock()
        if now - self._last_heartbeat >= self.deps.heartbeat_every_s:
            self._last_heartbeat = now
            await self.deps.presence.heartbeat(self.conn.user_id, self.conn.device_id)

    async def _dispatch(self, frame: protocol.ClientFrame) -> None:
        conn, deps = self.conn, self.deps
        match frame:
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


def _send_ack(ref: protocol.FrameId, sent: Sent) -> dict[str, Any]:
    message = sent.message
    return {
        "type": "send_ack",
        "ref": ref,
        "conversation_id": message.conversation_id,
        "seq": message.seq,
        "message_id": message.message_id,
        "created_at": message.created_at_wire,
        "duplicate": not sent.created,
    }


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
