"""The consistent-hash ring of delivery nodes: crc32 over 150 virtual nodes per member.

The one implementation used by the gateway (which node owns a user's sockets), the fan-out worker
(where to push) and the operator (what to publish). Members are stable node names.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_VNODES = 150


def _point(label: str) -> int:
    return zlib.crc32(label.encode())


@dataclass(frozen=True)
class Ring:
    members: tuple[str, ...]
    vnodes: int = DEFAULT_VNODES
    version: int = 0
    _points: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _owners: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        members = tuple(sorted(set(self.members)))
        object.__setattr__(self, "members", members)
        pairs = sorted((_point(f"{member}#{i}"), member) for member in members for i in range(self.vnodes))
        object.__setattr__(self, "_points", tuple(point for point, _ in pairs))
        object.__setattr__(self, "_owners", tuple(member for _, member in pairs))

    @classmethod
    def of(cls, members: Iterable[str], *, vnodes: int = DEFAULT_VNODES, version: int = 0) -> Ring:
        return cls(tuple(members), vnodes, version)

    def node_for(self, key: str) -> str:
        """The member owning ``key``: the first virtual node clockwise from the key's hash."""
        if not self._points:
            raise LookupError("the ring has no members")
        index = bisect.bisect_right(self._points, _point(key)) % len(self._points)
        return self._owners[index]

    def to_dict(self) -> dict[str, object]:
        return {"version": self.version, "members": list(self.members), "vnodes": self.vnodes}
