"""Identifiers: time-ordered, URL-safe strings, so ids sort by creation time in indexes and logs."""

from __future__ import annotations

import secrets
import time


def new_id() -> str:
    """A 26-character lowercase hex id: 48 bits of milliseconds, then 56 random bits."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(7)}"
