"""The sockets of one delivery node: who is connected, and pushing frames to them.

Each connection has one outgoing queue drained by one writer task, so a slow client never blocks a
broadcast; a client whose queue overflows is disconnected and will catch up with ``sync``. Queues are
bounded in frames and bytes per socket, and in bytes for the whole process (``SendBudget``). With a
``PendingStore`` each device's unacked frames outlive this node: whichever node the device reconnects
to sends them again at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from opentelemetry import trace

from services.common import metrics, telemetry
from services.common.errors import Unavailable
from services.common.push import Push, ack_seq
from services.delivery.pending import PendingStore
from services.delivery.protocol import AckWindow

log = logging.getLogger("courier.delivery.hub")

CLOSE_REPLACED = 4009
CLOSE_TOO_SLOW = 1013
CLOSE_RESTART = 1012
CLOSE_INTERNAL = 1011
QUEUE_OVERFLOW = "send queue overflow: client too slow, reconnect and sync"
WRITE_TIMEOUT = "write timeout: client too slow, reconnect and sync"

# Bounded label values of the WebSocket metrics, created at start-up so /metrics shows them before traffic.
SERVER_FRAME_TYPES = (
    "message",
    "recalled",
    "edited",
    "read_receipt",
    "typing",
    "presence",
    "member_added",
    "member_removed",
    "call",
    "reconnect",
    "error",
    "send_ack",
    "sync_result",
    "pong",
    "other",
)
SENT_SERIES = {kind: metrics.WS_FRAMES_SENT.labels(kind) for kind in SERVER_FRAME_TYPES}
"""``courier_ws_frames_sent_total`` of each frame type, looked up once per process rather than per frame."""
CLOSE_REASONS = (
    "replaced",
    "slow_client",
    "idle",
    "reconnect",
    "shutdown",
    "rate_limited",
    "unauthorized",
    "revoked",
    "error",
)
_REASON_OF_CODE = {
    4009: "replaced",
    1013: "slow_client",
    1001: "idle",
    1012: "shutdown",
    4008: "rate_limited",
    4003: "revoked",
}


def close_reason(code: int) -> str:
    """The ``courier_ws_closes_total`` reason of a close code (unknown codes count as errors)."""
    return _REASON_OF_CODE.get(code, "error")


def prime_metrics(node: str) -> None:
    """Create this node's WebSocket series at zero (the client frame types are primed by the session)."""
    metrics.WS_CONNECTIONS.labels(node)
    for kind in SERVER_FRAME_TYPES:
        metrics.WS_FRAMES_SENT.labels(kind)
    for reason in CLOSE_REASONS:
        metrics.WS_CLOSES.labels(reason)


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True)
class Outgoing:
    """One encoded frame on its way to the socket, with what the writer records once it is written.

    Held as UTF-8: its length is both the memory it takes and the bytes it puts on the wire."""

    data: bytes
    kind: str
    created_at: float | None = None
    """A message frame's stored ``created_at`` (epoch seconds): the start of its send-to-push latency."""
    redelivered: bool = False

    @property
    def text(self) -> str:
        return self.data.decode()

    @property
    def size(self) -> int:
        return len(self.data)


def outgoing(frame: Mapping[str, Any]) -> Outgoing:
    kind = frame.get("type")
    label = kind if isinstance(kind, str) and kind in SERVER_FRAME_TYPES else "other"
    created_at = None
    if label == "message" and isinstance(frame.get("created_at"), str):
        try:
            created_at = datetime.fromisoformat(frame["created_at"]).timestamp()
        except ValueError:
            created_at = None
    return Outgoing(orjson.dumps(frame), label, created_at, bool(frame.get("redelivered")))


class SendBudget:
    """The bytes this process holds for the outgoing frames of all its sockets, bounded by ``limit``.

    A frame that would take the total past the limit first closes (1013) the sockets with the most bytes
    waiting in their queues, largest first, until it fits: the few clients that stopped reading go, and
    the others keep their pushes. The frame is refused only when its own socket is the largest, or when
    nothing waiting is left to drop (the bytes are all being written; the write timeout ends those).
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.held = 0
        self._waiting: set[Connection] = set()

    def make_room(self, conn: Connection, size: int) -> bool:
        """Whether ``size`` more bytes for ``conn`` fit, once larger holders are closed if need be."""
        while self.limit is not None and self.held + size > self.limit:
            largest = max(self._waiting, key=lambda c: c.waiting_bytes, default=None)
            if largest is None or largest is conn:
                return False
            largest.close(CLOSE_TOO_SLOW, QUEUE_OVERFLOW)
        return True

    def hold(self, conn: Connection, size: int) -> None:
        """``conn`` holds ``size`` more bytes (fewer when negative)."""
        self.held += size
        metrics.WS_SEND_QUEUE_BYTES.inc(size)
        if conn.waiting_bytes > 0 and conn.closing is None:
            self._waiting.add(conn)
        else:
            self._waiting.discard(conn)


class Connection:
    """The outgoing side of one device's socket."""

    def __init__(
        self,
        user_id: str,
        device_id: str,
        *,
        queue_size: int,
        window: AckWindow,
        session_id: str = "",
        max_bytes: int | None = None,
        budget: SendBudget | None = None,
    ) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.session_id = session_id
        """The login session of the access token the socket was opened with (closed when it is revoked)."""
        self.window = window
        self._limit = queue_size
        self._max_bytes = max_bytes
        self._budget = budget if budget is not None else SendBudget()
        self._queue: asyncio.Queue[Outgoing | Close] = asyncio.Queue()
        self._waiting = 0
        """Bytes of the frames in the queue."""
        self._writing = 0
        """Bytes of the frame the writer took last: held until it asks for the next one."""
        self._ended = False
        self.closing: Close | None = None

    def offer(self, frame: Mapping[str, Any]) -> bool:
        """Queue a frame; False (and the connection closes) when the client is too slow."""
        return self.enqueue(outgoing(frame))

    def enqueue(self, item: Outgoing) -> bool:
        """Queue an encoded frame; False (and the connection closes with 1013) when it would take the
        socket past its frames or its bytes (a frame alone always fits an empty socket), or the process
        past its bytes while this socket holds the most."""
        if self.closing is not None or self._ended:
            return False
        held = self.held_bytes
        over = self._queue.qsize() >= self._limit or (
            self._max_bytes is not None and held > 0 and held + item.size > self._max_bytes
        )
        if over or not self._budget.make_room(self, item.size):
            self.close(CLOSE_TOO_SLOW, QUEUE_OVERFLOW)
            return False
        self._put(item)
        return True

    def close(
        self, code: int, reason: str, *, cause: str | None = None, farewell: Mapping[str, Any] | None = None
    ) -> None:
        """Drop what is queued and close after nothing else (idempotent), or after ``farewell``, a frame
        telling why. ``cause`` is the metric's reason when the close code alone does not tell it (1012 for a
        ring hand-off, say)."""
        if self.closing is not None:
            return
        metrics.WS_CLOSES.labels(cause or close_reason(code)).inc()
        self.closing = Close(code, reason)
        self._drop_queue()
        if farewell is not None:
            self._put(outgoing(farewell))
        self._queue.put_nowait(self.closing)

    def end(self) -> None:
        """The socket is gone: give back every byte it held and queue nothing more."""
        self._ended = True
        self._drop_queue()
        self._done_writing()

    async def next_outgoing(self) -> str | Close:
        item = await self.next_item()
        return item if isinstance(item, Close) else item.text

    async def next_item(self) -> Outgoing | Close:
        """What the socket writer sends next, with what it records once written. Asking means the
        previous frame is written: its bytes are given back."""
        self._done_writing()
        item = await self._queue.get()
        if isinstance(item, Outgoing):
            self._waiting -= item.size
            self._writing = item.size
            self._budget.hold(self, 0)
        return item

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def waiting_bytes(self) -> int:
        """Bytes of the frames queued and not yet taken by the writer."""
        return self._waiting

    @property
    def held_bytes(self) -> int:
        """Bytes this socket holds: its queue and the frame being written."""
        return self._waiting + self._writing

    @property
    def room(self) -> int:
        """Frames that can still be queued before the client counts as too slow."""
        return max(self._limit - self._queue.qsize(), 0)

    @property
    def room_bytes(self) -> int | None:
        """Bytes that can still be queued before the client counts as too slow (None: no byte bound)."""
        return None if self._max_bytes is None else max(self._max_bytes - self.held_bytes, 0)

    def _put(self, item: Outgoing) -> None:
        self._queue.put_nowait(item)
        self._waiting += item.size
        self._budget.hold(self, item.size)

    def _drop_queue(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
        dropped, self._waiting = self._waiting, 0
        self._budget.hold(self, -dropped)

    def _done_writing(self) -> None:
        written, self._writing = self._writing, 0
        if written:
            self._budget.hold(self, -written)


@dataclass
class _Behind:
    """What one device's store has not been told yet: the tracked frames pushed to its sockets, in push
    order with when and where, and the acks of its sockets."""

    frames: list[tuple[float, Connection, Mapping[str, Any]]] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)


class Hub:
    """Local connections by user and device; implements the ``Pusher`` port for this node.

    ``pending`` (distributed mode) mirrors every device's ACK window, written behind: a frame is
    recorded only if it is still unacked a tick after its push (``write_behind``), and acks are
    recorded once a tick. Most frames are acked within milliseconds and never reach the store. A
    socket that ends, and a device's socket replaced by a new one, have everything recorded at once.
    It is best effort: when it fails the sockets carry on and the devices ``sync``, which is the
    ground truth anyway.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        pending: PendingStore | None = None,
        send_budget_bytes: int | None = None,
    ) -> None:
        self._users: dict[str, dict[str, Connection]] = {}
        self.send_budget = SendBudget(send_budget_bytes)
        """What this node's sockets may hold together, in bytes (``None``: unbounded)."""
        self._clock = clock
        self._pending = pending
        self._pending_ok = True
        self._behind: dict[tuple[str, str], _Behind] = {}
        self._given_up: dict[tuple[str, str], list[tuple[str, int]]] = {}
        self.pushed = 0
        self.retransmitted = 0
        self.restored = 0
        self.pending_failures = 0
        self.draining = False

    def attach(self, conn: Connection) -> None:
        """Register a new socket; the same device's previous socket is closed with 4009."""
        devices = self._users.setdefault(conn.user_id, {})
        previous = devices.get(conn.device_id)
        devices[conn.device_id] = conn
        if previous is not None:
            previous.close(CLOSE_REPLACED, "replaced by a newer connection of the same device")

    def detach(self, conn: Connection) -> bool:
        """Forget a socket that ended; False when a newer one of the device replaced it already."""
        devices = self._users.get(conn.user_id, {})
        if devices.get(conn.device_id) is not conn:
            return False
        del devices[conn.device_id]
        if not devices:
            del self._users[conn.user_id]
        return True

    def devices(self, user_id: str) -> list[Connection]:
        return list(self._users.get(user_id, {}).values())

    def connections(self) -> Iterator[Connection]:
        for devices in list(self._users.values()):
            yield from list(devices.values())

    @property
    def connection_count(self) -> int:
        return sum(len(devices) for devices in self._users.values())

    def user_ids(self) -> list[str]:
        return list(self._users)

    async def push(
        self,
        user_ids: Collection[str],
        frame: Mapping[str, Any],
        *,
        tracked: bool = False,
        skip_device: tuple[str, str] | None = None,
    ) -> None:
        await self.push_many([Push(user_ids, frame, tracked, skip_device)])

    async def push_frames(self, user_ids: Collection[str], frames: Sequence[Mapping[str, Any]]) -> None:
        await self.push_many([Push(user_ids, frame) for frame in frames])

    async def push_many(self, pushes: Sequence[Push]) -> None:
        """Several pushes in their order: every frame is offered, and the tracked ones are left for the
        pending store's next ``write_behind``. In a span ``push`` when tracing is on (off, not even a
        no-op span: this runs once per pushed batch)."""
        if not telemetry.is_enabled():
            self._push_many(pushes, None)
            return
        with telemetry.tracer(__name__).start_as_current_span("push") as span:
            self._push_many(pushes, span)

    def _push_many(self, pushes: Sequence[Push], span: trace.Span | None) -> None:
        now = self._clock()
        offered = 0
        for push in pushes:
            offered += self._offer(push, now)
        if span is not None and span.is_recording():
            span.set_attributes(
                {
                    "courier.frame.type": ",".join(sorted({str(p.frame.get("type")) for p in pushes})),
                    "courier.push.frames": len(pushes),
                    "courier.push.connections": offered,
                }
            )

    def _offer(self, push: Push, now: float) -> int:
        """Queue one push's frame on its devices' sockets; returns how many took it."""
        offered = 0
        for user_id in push.user_ids:
            for conn in self.devices(user_id):
                if push.skip_device == (user_id, conn.device_id):
                    continue
                if push.tracked:
                    if not conn.window.push(push.frame, now):
                        continue
                    if self._pending is not None:
                        self._behind_of(conn).frames.append((now, conn, push.frame))
                if conn.offer(push.frame):
                    self.pushed += 1
                    offered += 1
        return offered

    def _behind_of(self, conn: Connection) -> _Behind:
        device = (conn.user_id, conn.device_id)
        behind = self._behind.get(device)
        if behind is None:
            behind = self._behind[device] = _Behind()
        return behind

    async def ack(self, conn: Connection, conversation_id: str, seq: int) -> int:
        """The device acked ``seq`` (cumulatively); returns how many of its frames that delivered."""
        fresh = seq > conn.window.acked(conversation_id)
        done = conn.window.ack(conversation_id, seq)
        metrics.MESSAGES_ACKED.inc(done)
        if fresh and self._pending is not None:
            acked = self._behind_of(conn).acked
            acked[conversation_id] = max(seq, acked.get(conversation_id, 0))
        return done

    async def write_behind(self, older_than_s: float) -> None:
        """Tell the pending store every ack not recorded yet, and every tracked frame pushed at least
        ``older_than_s`` ago that is still unacked (it may never be acked: its socket can end, its node
        die). The calls of all devices share pipelines."""
        if self._pending is None or not self._behind:
            return
        deadline = self._clock() - older_than_s
        await self._record({device: self._take_due(device, deadline) for device in list(self._behind)})

    async def write_behind_device(self, user_id: str, device_id: str) -> None:
        """Record at once what the device's store has not been told (its socket ended or was replaced)."""
        device = (user_id, device_id)
        if self._pending is not None and device in self._behind:
            await self._record({device: self._take_due(device, float("inf"))})

    def _take_due(self, device: tuple[str, str], deadline: float) -> _Behind:
        """Take out of the device's backlog its acks and its frames pushed by ``deadline`` still unacked."""
        behind = self._behind[device]
        frames = behind.frames
        due = 0
        while due < len(frames) and frames[due][0] <= deadline:
            due += 1
        taken = _Behind(
            [item for item in frames[:due] if (item[2]["conversation_id"], ack_seq(item[2])) in item[1].window],
            behind.acked,
        )
        del frames[:due]
        behind.acked = {}
        if not frames:
            del self._behind[device]
        return taken

    async def _record(self, due: Mapping[tuple[str, str], _Behind]) -> None:
        pending = self._pending
        assert pending is not None
        calls: list[Awaitable[None]] = []
        for (user_id, device_id), behind in due.items():
            for conversation_id, seq in behind.acked.items():
                ack = pending.ack(user_id, device_id, conversation_id, seq)
                calls.append(self._guarded("acknowledging", user_id, device_id, ack))
        frames = {device: [frame for _, _, frame in behind.frames] for device, behind in due.items() if behind.frames}
        if frames:
            user_id, device_id = next(iter(frames))  # the device a failure's log line names
            add = pending.add_many(frames)
            calls.append(self._guarded("recording pushes", user_id, device_id, add, devices=len(frames)))
        if calls:
            # Acks and frames at once: the store skips a frame at or below its conversation's acked seq, so
            # whichever lands first, an acked frame is not left behind.
            await asyncio.gather(*calls)

    async def restore(self, conn: Connection) -> int:
        """Right after ``attach``: send the device's frames still unacked from its previous socket
        (maybe on another node) again, marked ``redelivered``, and track them; returns how many.

        At most half the free queue (in frames and in bytes) is used, so the restore itself never makes a
        client too slow; the rest stays in the store for the next reconnect, and ``sync`` delivers it
        meanwhile.
        """
        if self._pending is None:
            return 0
        # What the device's previous socket on this node left unrecorded goes first, so it is loaded too.
        await self.write_behind_device(conn.user_id, conn.device_id)
        try:
            frames, acked = await self._pending.load(conn.user_id, conn.device_id)
        except Unavailable as exc:
            self._failed("loading", conn.user_id, conn.device_id, exc)
            return 0
        self._recovered()
        window, now = conn.window, self._clock()
        for conversation_id, seq in acked.items():
            window.ack(conversation_id, seq)
        budget, count = conn.room // 2, 0
        room_bytes = conn.room_bytes
        bytes_left = None if room_bytes is None else room_bytes // 2
        for frame in frames:
            if count >= budget:
                break
            conversation_id, seq = frame["conversation_id"], ack_seq(frame)
            if (conversation_id, seq) in window or seq <= window.acked(conversation_id):
                continue  # pushed live since attach (already on its way), or acked
            item = outgoing({**frame, "redelivered": True})
            if bytes_left is not None:
                if item.size > bytes_left:
                    break
                bytes_left -= item.size
            window.push(frame, now)
            if not conn.enqueue(item):
                break
            count += 1
        self.restored += count
        return count

    def retransmit_due(self) -> int:
        now = self._clock()
        count = 0
        for conn in self.connections():
            for frame in conn.window.due(now):
                if not conn.offer(frame):
                    break
                count += 1
            given_up = conn.window.take_given_up()
            if given_up and self._pending is not None:
                self._given_up.setdefault((conn.user_id, conn.device_id), []).extend(given_up)
        self.retransmitted += count
        metrics.MESSAGES_RETRANSMITTED.inc(count)
        return count

    async def forget_given_up(self) -> None:
        """Drop from the store what the windows gave up on in ``retransmit_due`` (those devices sync)."""
        batches, self._given_up = self._given_up, {}
        pending = self._pending
        if pending is None:
            return
        for (user_id, device_id), keys in batches.items():
            await self._guarded("forgetting", user_id, device_id, pending.forget(user_id, device_id, keys))

    async def run_retransmits(self, tick_s: float) -> None:
        """Every tick: retransmit what timed out, and bring the pending store up to date with the frames
        unacked for a tick (``write_behind``)."""
        while True:
            await asyncio.sleep(tick_s)
            try:
                self.retransmit_due()
                await self.write_behind(tick_s)
                await self.forget_given_up()
            except Exception:  # keep the loop alive; one bad frame must not stop retransmission
                log.exception("retransmit sweep failed")

    async def _guarded(
        self, doing: str, user_id: str, device_id: str, call: Awaitable[Any], *, devices: int = 1
    ) -> None:
        try:
            await call
        except Unavailable as exc:
            self._failed(doing, user_id, device_id, exc, devices=devices)
        else:
            self._recovered()

    def _failed(self, doing: str, user_id: str, device_id: str, exc: Unavailable, *, devices: int = 1) -> None:
        """Counted per device every time, logged once per outage so a Redis outage does not flood the log."""
        self.pending_failures += devices
        if self._pending_ok:
            self._pending_ok = False
            log.warning(
                "pending store failed %s for %s/%s (%s); carrying on, devices will sync",
                doing,
                user_id,
                device_id,
                exc.message,
            )

    def _recovered(self) -> None:
        if not self._pending_ok:
            self._pending_ok = True
            log.info("pending store is back")

    def close_all(self, code: int, reason: str) -> None:
        for conn in self.connections():
            conn.close(code, reason)

    async def drain(self, window_s: float, *, grace_s: float = 5.0, rng: random.Random | None = None) -> int:
        """Move every socket off this node before it stops, spread over ``window_s``; returns how many were asked.

        From now on the node takes no new socket (``draining``: the upgrade is refused, the gateway picks another
        node). Each socket is sent ``reconnect`` with its own delay drawn from the window, and is closed with 1012
        ``grace_s`` after that delay if its client has not left by itself: clients come back one by one, never all at
        once, and a client that ignores the frame is closed on the same spread schedule. Frames it left unacked
        follow it through the pending store."""
        self.draining = True
        rng = rng or random.Random()
        conns = list(self.connections())
        if not conns:
            return 0
        log.info("draining %d sockets over %.1f s", len(conns), window_s)
        loop = asyncio.get_running_loop()
        started = loop.time()
        delays = sorted(rng.uniform(0, window_s) for _ in conns)
        rng.shuffle(conns)
        for conn, delay in zip(conns, delays, strict=True):
            conn.offer({"type": "reconnect", "after_ms": round(delay * 1000)})
        for conn, delay in zip(conns, delays, strict=True):
            wait = started + delay + grace_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if conn in self.devices(conn.user_id):  # still here: its client ignored the reconnect
                conn.close(CLOSE_RESTART, "service restart")
        return len(conns)
