"""Rules on what clients send that hold in every field of every service: integers and text a store can
hold, and names a person can read. Pure, so API schemas, WebSocket frames and domain rules all share them.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import Field

from services.common.errors import InvalidRequest

MAX_INT = 2**63 - 1
"""The largest integer a client may send (a seq, a limit, a size): the widest integer column of every
database (BIGINT), and of Redis and its Lua scripts."""

JsonSeq = Annotated[int, Field(strict=True, ge=0, le=MAX_INT)]
"""A seq in a JSON body or frame: a JSON integer, never ``true`` (a Python ``bool`` is an ``int``), a
float or a string of digits."""


def holds_nul(value: object) -> bool:
    """Whether a decoded JSON value has U+0000 in a string or a key: PostgreSQL cannot store it in text,
    and answers a query that holds it with an error. Iterative, so no nesting depth can overflow."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


# Control (NUL, tab, newline), format (bidirectional overrides that make "gpj.exe" display as "exe.jpg",
# zero-width characters) and line-break characters, and surrogates, which are not characters at all.
_NOT_IN_NAMES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def check_name(value: str, field: str) -> None:
    """A name other people see (display name, device name, group title, file name) is one line of
    visible text: ``InvalidRequest`` if it holds a character of ``_NOT_IN_NAMES``."""
    if any(unicodedata.category(char) in _NOT_IN_NAMES for char in value):
        raise InvalidRequest(f"{field} must not contain control, format or line-break characters")
