"""Presence as the wire shows it, and the checks on the user ids a caller asks about. Pure, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.common.clock import rfc3339
from services.common.errors import InvalidRequest

MAX_ID_LENGTH = 64
MAX_IDS_PER_REQUEST = 200
# Bounds the fan-out of one user's presence changes kept on behalf of one subscriber.
MAX_WATCHED_PER_SUBSCRIBER = 1000


@dataclass(frozen=True)
class PresenceStatus:
    """A user is online while any of their devices is; ``last_seen`` is the last time any device of
    theirs was heard from (connect, heartbeat, disconnect), in Unix seconds, None if never."""

    user_id: str
    online: bool
    last_seen: float | None

    def wire(self) -> dict[str, Any]:
        last_seen = None if self.last_seen is None else rfc3339(datetime.fromtimestamp(self.last_seen, UTC))
        return {"user_id": self.user_id, "online": self.online, "last_seen": last_seen}

    def frame(self) -> dict[str, Any]:
        return {"type": "presence", **self.wire()}


def check_user_ids(user_ids: Iterable[str]) -> list[str]:
    """The ids without duplicates (first kept), or InvalidRequest saying what is wrong with them."""
    unique = list(dict.fromkeys(user_ids))
    if not 1 <= len(unique) <= MAX_IDS_PER_REQUEST:
        raise InvalidRequest(f"user_ids must name 1 to {MAX_IDS_PER_REQUEST} users, got {len(unique)}")
    for user_id in unique:
        if not user_id or len(user_id) > MAX_ID_LENGTH:
            raise InvalidRequest(f"a user id has 1 to {MAX_ID_LENGTH} characters: {user_id[:MAX_ID_LENGTH]!r}")
    return unique


def parse_user_ids(raw: str) -> list[str]:
    """``a,b,c`` from a query string; blanks around the commas and empty items are ignored."""
    return check_user_ids(item.strip() for item in raw.split(",") if item.strip())
