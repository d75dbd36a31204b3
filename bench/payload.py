"""The text of benchmark messages: the send time rides inside, so the receiving client measures
send-to-receive latency against the same machine clock."""

from __future__ import annotations

import time

PREFIX = "bench "


def stamped(size: int, *, now_ns: int | None = None) -> str:
    """``bench <send time in ns> xxx...``, padded to ``size`` characters (at least the stamp)."""
    head = f"{PREFIX}{time.time_ns() if now_ns is None else now_ns} "
    return head + "x" * max(0, size - len(head))


def sent_at(text: object) -> float | None:
    """The send time (epoch seconds) of a stamped text, or None for any other text."""
    if not isinstance(text, str) or not text.startswith(PREFIX):
        return None
    stamp = text[len(PREFIX) :].split(" ", 1)[0]
    return int(stamp) / 1e9 if stamp.isdigit() else None
