"""Messages and their rules: content validation, the recall and edit windows, tombstone events.

Every stored event of a conversation (a message, a recall, an edit) takes the next ``seq``; recall and
edit are tombstones whose content names the ``target_seq`` they change.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import orjson

from services.common.clock import rfc3339
from services.common.errors import Forbidden, InvalidRequest

SENDABLE_TYPES = ("text", "file", "call")
CALL_STATES = ("started", "missed", "rejected", "ended")
RECALL, EDIT = "recall", "edit"
# Always ``fullmatch``: ``$`` would also match before a trailing newline.
_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
PRIVILEGED_ROLES = frozenset({"owner", "admin"})


@dataclass(frozen=True)
class Message:
    message_id: str
    conversation_id: str
    seq: int
    sender_id: str
    sender_device_id: str
    client_msg_id: str
    content: dict[str, Any]
    created_at: datetime
    recalled: bool = False
    edited: bool = False

    @functools.cached_property
    def created_at_wire(self) -> str:
        """``created_at`` as RFC 3339, computed once: a message goes on the wire several times (the
        outbox record, the send's answer; in the fan-out the inbox entry and the pushed frame)."""
        return rfc3339(self.created_at)

    @property
    def is_tombstone(self) -> bool:
        return self.content.get("type") in (RECALL, EDIT)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Message:
        return cls(
            message_id=data["message_id"],
            conversation_id=data["conversation_id"],
            seq=int(data["seq"]),
            sender_id=data["sender_id"],
            sender_device_id=data["sender_device_id"],
            client_msg_id=data["client_msg_id"],
            content=data["content"],
            created_at=datetime.fromisoformat(data["created_at"].replace("Z", "+00:00")),
            recalled=bool(data["recalled"]),
            edited=bool(data["edited"]),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "conversation_id": self.conversation_id,
            "seq": self.seq,
            "sender_id": self.sender_id,
            "sender_device_id": self.sender_device_id,
            "client_msg_id": self.client_msg_id,
            "content": self.content,
            "created_at": self.created_at_wire,
            "recalled": self.recalled,
            "edited": self.edited,
        }


def validate_client_msg_id(client_msg_id: object) -> str:
    if not isinstance(client_msg_id, str) or not _ID.fullmatch(client_msg_id):
        raise InvalidRequest("client_msg_id must be 1-64 characters of letters, digits and _ . : -")
    return client_msg_id


def validate_content(content: object, *, max_text_length: int) -> dict[str, Any]:
    """The content a client may send, normalized; anything else is ``InvalidRequest``."""
    if not isinstance(content, dict):
        raise InvalidRequest("content must be an object with a type")
    kind = content.get("type")
    if kind == "text":
        text = content.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequest("a text message needs a non-empty text")
        if len(text) > max_text_length:
            raise InvalidRequest(f"text is longer than {max_text_length} characters")
        return {"type": "text", "text": text}
    if kind == "file":
        file_id = content.get("file_id")
        if not isinstance(file_id, str) or not _ID.fullmatch(file_id):
            raise InvalidRequest("a file message needs the file_id of a completed upload")
        caption = content.get("caption")
        normalized: dict[str, Any] = {"type": "file", "file_id": file_id}
        if caption is not None:
            if not isinstance(caption, str) or len(caption) > max_text_length:
                raise InvalidRequest("caption must be a string of at most the text length limit")
            normalized["caption"] = caption
        return normalized
    if kind == "call":
        call_id, state = content.get("call_id"), content.get("state")
        if not isinstance(call_id, str) or not _ID.fullmatch(call_id):
            raise InvalidRequest("a call message needs a call_id")
        if state not in CALL_STATES:
            raise InvalidRequest(f"call state must be one of {', '.join(CALL_STATES)}")
        return {"type": "call", "call_id": call_id, "state": state}
    raise InvalidRequest(f"unknown content type {kind!r}; expected one of {', '.join(SENDABLE_TYPES)}")


def check_recall(target: Message, *, by: str, role: str, now: datetime, window_s: float) -> None:
    """The sender may recall within the window; owners and admins may recall any message."""
    if target.is_tombstone:
        raise InvalidRequest("recall and edit events cannot be recalled")
    if role in PRIVILEGED_ROLES:
        return
    if target.sender_id != by:
        raise Forbidden("only the sender or an admin may recall this message")
    if now - target.created_at > timedelta(seconds=window_s):
        raise Forbidden(f"the recall window of {window_s:g} seconds has passed")


def check_edit(target: Message, *, by: str, now: datetime, window_s: float) -> None:
    if target.is_tombstone or target.content.get("type") != "text":
        raise InvalidRequest("only text messages can be edited")
    if target.recalled:
        raise InvalidRequest("a recalled message cannot be edited")
    if target.sender_id != by:
        raise Forbidden("only the sender may edit a message")
    if now - target.created_at > timedelta(seconds=window_s):
        raise Forbidden(f"the edit window of {window_s:g} seconds has passed")


RECALLED_CONTENT: dict[str, Any] = {"type": "recalled"}


def recalled(target: Message) -> Message:
    """The target as stored after a recall: its content is wiped, not just hidden."""
    return replace(target, content=dict(RECALLED_CONTENT), recalled=True)


def edited(target: Message, content: dict[str, Any]) -> Message:
    return replace(target, content=content, edited=True)


def tombstone_frame(event: Message) -> dict[str, Any]:
    """The push frame of a recall or edit event: ``seq`` names the target, ``event_seq`` is its own."""
    frame: dict[str, Any] = {
        "type": "recalled" if event.content["type"] == RECALL else "edited",
        "conversation_id": event.conversation_id,
        "seq": event.content["target_seq"],
        "event_seq": event.seq,
        "by": event.sender_id,
        "created_at": event.created_at_wire,
    }
    if event.content["type"] == EDIT:
        frame["content"] = event.content["content"]
    return frame


def push_frame(event: Message) -> dict[str, Any]:
    """The frame that delivers a stored event to devices."""
    if event.is_tombstone:
        return tombstone_frame(event)
    return {"type": "message", **event.to_wire()}


def encode_event(event: Message, recipients: Sequence[str] | None = None) -> bytes:
    """The outbox row and event-log record of a stored event; ``recipients`` spare the fan-out a
    look-up of the conversation's members (small conversations)."""
    body: dict[str, Any] = {"event": event.to_wire()}
    if recipients is not None:
        body["recipients"] = list(recipients)
    return orjson.dumps(body)


def decode_event(payload: bytes) -> tuple[Message, list[str] | None]:
    """An event-log record: the event, and its recipients when the record carries them (a record of
    a large conversation, or of a release before they were carried, does not)."""
    body = orjson.loads(payload)
    recipients = body.get("recipients")
    return Message.from_wire(body["event"]), None if recipients is None else [str(r) for r in recipients]


def clamp_limit(limit: int | None, *, default: int = 50, maximum: int = 200) -> int:
    if limit is None:
        return default
    if limit < 1 or limit > maximum:
        raise InvalidRequest(f"limit must be between 1 and {maximum}")
    return limit
