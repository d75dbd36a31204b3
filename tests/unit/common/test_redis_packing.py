"""``PackedConnection`` packs every command into the bytes redis-py's own packer makes, and refuses what it refuses."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Connection
from redis.exceptions import DataError

from services.common.redis import PackedConnection

COMMANDS: list[tuple[Any, ...]] = [
    ("EVALSHA", "0123abcd", 4, "k:{1}:a", "k:{1}:b", "k:{1}:c", "k:{1}:d", 3600, 10_000, "c", 7, "c\0" + "7".zfill(20)),
    (
        "HSET",
        "h",
        "text",
        "ñ ✓ \x00 end",
        "bytes",
        b"\xff\x00",
        "n",
        -(2**70),
        "f",
        0.1,
        "e",
        1e20,
        "inf",
        float("inf"),
    ),
    (b"GET", b"k"),
    ("SCRIPT LOAD", "return 1"),
    (b"CONFIG GET", b"maxmemory"),
    ("SET", "k", memoryview(b"view")),
    ("SET", "k", "x" * 10_000),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_a_command_packs_to_the_bytes_redis_py_makes(command: tuple[Any, ...]) -> None:
    assert b"".join(PackedConnection().pack_command(*command)) == b"".join(Connection().pack_command(*command))


@pytest.mark.parametrize("value", [None, True, object()], ids=["none", "bool", "object"])
def test_an_argument_redis_py_refuses_is_refused_alike(value: Any) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", value)
    with pytest.raises(DataError):
        PackedConnection().pack_command("SET", "k", value)
