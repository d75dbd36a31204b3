"""The WebSocket protocol core, Sans-I/O: frame parsing, the per-device ACK window, retransmission.

Nothing here touches a socket or a clock: callers pass frames and ``now`` in and get frames out, so
the rules are unit-tested without a network.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from services.common.push import ack_seq
from services.common.wire import MAX_INT, JsonSeq, holds_nul

# An integer id is strict (``true`` is not 1) and fits 64 bits, like every integer a client sends: the
# answer echoes it.
FrameId = str | Annotated[int, Field(strict=True, ge=-MAX_INT - 1, le=MAX_INT)] | None
Id = Annotated[str, Field(min_length=1, max_length=64)]
Seq = JsonSeq


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    id: FrameId = None


class SendFrame(_Frame):
    type: Literal["send"]
    conversation_id: Id
    client_msg_id: Any
    content: Any


class AckFrame(_Frame):
    type: Literal["ack"]
    conversation_id: Id
    seq: Seq


class SyncFrame(_Frame):
    type: Literal["sync"]
    cursors: dict[Id, Seq] = Field(default_factory=dict, max_length=10_000)
    limit: Annotated[int, Field(strict=True, ge=1, le=1000)] | None = None


class ReadFrame(_Frame):
    type: Literal["read"]
    conversation_id: Id
    seq: Seq


class TypingFrame(_Frame):
    type: Literal["typing"]
    conversation_id: Id
    state: Literal["start", "stop"]


class PresenceSubscribeFrame(_Frame):
    type: Literal["presence_subscribe"]
    user_ids: Annotated[list[Id], Field(min_length=1, max_length=200)]


CallAction = Literal["invite", "ringing", "accept", "reject", "offer", "answer", "ice", "hangup"]


class CallFrame(_Frame):
    type: Literal["call"]
    call_id: Id
    conversation_id: Id
    action: CallAction
    sdp: Any = None
    candidate: Any = None
    to: Id | None = None
    media: Any = None

    def relayed(self, *, sender_id: str, sender_device_id: str) -> dict[str, Any]:
        frame = self.model_dump(exclude_none=True, exclude={"id"})
        return {**frame, "from": sender_id, "from_device": sender_device_id}


class PingFrame(_Frame):
    type: Literal["ping"]


ClientFrame = Annotated[
    SendFrame | AckFrame | SyncFrame | ReadFrame | TypingFrame | PresenceSubscribeFrame | CallFrame | PingFrame,
    Field(discriminator="type"),
]
_client_frame: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
_frame_id: TypeAdapter[FrameId] = TypeAdapter(FrameId)
CLIENT_FRAME_TYPES = ("send", "ack", "sync", "read", "typing", "presence_subscribe", "call", "ping")


class FrameError(Exception):
    """A client frame that cannot be understood; answered with an ``error`` frame, socket kept."""

    def __init__(self, ref: FrameId, message: str) -> None:
        super().__init__(message)
        self.ref = ref
        self.message = message


def parse_frame(data: str | bytes) -> ClientFrame:
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FrameError(None, "frame is not valid JSON") from exc
    if not isinstance(raw, dict):
        raise FrameError(None, "frame must be a JSON object")
    if raw.get("type") not in CLIENT_FRAME_TYPES:
        raise FrameError(
            _ref(raw), f"unknown frame type {raw.get('type')!r}; expected one of {', '.join(CLIENT_FRAME_TYPES)}"
        )
    # JSON can only write NUL escaped: frames without the escape are not searched.
    if ("\\u0000" in data if isinstance(data, str) else b"\\u0000" in data) and holds_nul(raw):
        raise FrameError(_ref(raw), "frame must not contain NUL (\\u0000) in any string")
    try:
        return _client_frame.validate_python(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or 'frame'}: {err['msg']}" for err in exc.errors()[:3]
        )
        raise FrameError(_ref(raw), f"invalid {raw['type']} frame: {problems}") from exc


def _ref(raw: dict[str, Any]) -> FrameId:
    """The ``id`` a refused frame's error answers with, when it is a valid one. Looked at only for a refusal:
    a frame that parses carries its validated ``id``."""
    try:
        return _frame_id.validate_python(raw.get("id"))
    except ValidationError:
        return None


def error_frame(ref: FrameId, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "ref": ref, "code": code, "message": message}


def encode(frame: Mapping[str, Any]) -> str:
    return orjson.dumps(frame).decode()


@dataclass
class _Pending:
    frame: Mapping[str, Any]
    sent_at: float
    redeliveries: int = 0


class AckWindow:
    """One device's unacknowledged tracked frames, acked cumulatively per conversation.

    ``push`` records a frame (or says it is already acked, so it need not be sent), ``ack`` clears
    everything up to a seq, ``due`` returns the frames whose ACK timed out, marked ``redelivered``,
    and gives up on a frame after ``max_redeliveries`` (the device will ``sync`` it); ``take_given_up``
    says which, so a store mirroring the window can forget them too.
    """

    def __init__(self, *, timeout_s: float, max_redeliveries: int, capacity: int = 10_000) -> None:
        self.timeout_s = timeout_s
        self.max_redeliveries = max_redeliveries
        self.capacity = capacity
        self._acked: dict[str, int] = {}
        self._pending: dict[tuple[str, int], _Pending] = {}
        self.given_up = 0
        # Bounded so a window nobody drains (no store behind it) cannot grow without limit; a key lost
        # past the bound only waits in the store for an ack, its own capacity bound or its TTL.
        self._given_up_keys: deque[tuple[str, int]] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, key: object) -> bool:
        """Whether ``(conversation_id, ack_seq)`` is tracked (unacked) right now."""
        return key in self._pending

    def take_given_up(self) -> list[tuple[str, int]]:
        """The ``(conversation_id, ack_seq)`` keys given up on since the last call."""
        keys = list(self._given_up_keys)
        self._given_up_keys.clear()
        return keys

    def acked(self, conversation_id: str) -> int:
        return self._acked.get(conversation_id, 0)

    def push(self, frame: Mapping[str, Any], now: float) -> bool:
        """Track ``frame``; False when the device already acked it (do not send)."""
        conversation_id, seq = frame["conversation_id"], ack_seq(frame)
        if seq <= self._acked.get(conversation_id, 0):
            return False
        if (conversation_id, seq) not in self._pending and len(self._pending) >= self.capacity:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            self.given_up += 1
            self._given_up_keys.append(oldest)
        self._pending[(conversation_id, seq)] = _Pending(frame, now)
        return True

    def ack(self, conversation_id: str, seq: int) -> int:
        """Everything up to ``seq`` in the conversation is delivered; returns how many were pending."""
        if seq <= self._acked.get(conversation_id, 0):
            return 0
        self._acked[conversation_id] = seq
        done = [key for key in self._pending if key[0] == conversation_id and key[1] <= seq]
        for key in done:
            del self._pending[key]
        return len(done)

    def due(self, now: float) -> list[dict[str, Any]]:
        """Frames to send again now, in seq order per conversation."""
        resend: list[tuple[tuple[str, int], dict[str, Any]]] = []
        for key, pending in list(self._pending.items()):
            if now - pending.sent_at < self.timeout_s:
                continue
            if pending.redeliveries >= self.max_redeliveries:
                del self._pending[key]
                self.given_up += 1
                self._given_up_keys.append(key)
                continue
            pending.redeliveries += 1
            pending.sent_at = now
            resend.append((key, {**pending.frame, "redelivered": True}))
        resend.sort(key=lambda item: item[0])
        return [frame for _, frame in resend]


def sync_result(ref: FrameId, conversations: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "sync_result", "ref": ref, "conversations": conversations}
