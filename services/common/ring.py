"""The consistent-hash ring of delivery nodes: crc32 over 150 virtual nodes per member.

The one implementation used by the gateway (which node owns a user's sockets), the fan-out worker
(where to push) and the operator (what to publish). Members are stable node names.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import zlib
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.common.metrics import RING_MEMBERS, RING_VERSION

DEFAULT_VNODES = 150
log = logging.getLogger("courier.ring")


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

    def node_for(self, key: str, *, avoid: Collection[str] = ()) -> str:
        """The member owning ``key``: the first virtual node clockwise from the key's hash.

        With ``avoid``, the first clockwise whose member is not avoided: exactly the owner the ring without those
        members would give, so a key sent elsewhere while its node is away stays put once the ring drops the node."""
        if not self._points:
            raise LookupError("the ring has no members")
        index = bisect.bisect_right(self._points, _point(key)) % len(self._points)
        if not avoid:
            return self._owners[index]
        for step in range(len(self._owners)):
            owner = self._owners[(index + step) % len(self._owners)]
            if owner not in avoid:
                return owner
        raise LookupError("every member of the ring is avoided")

    def to_dict(self) -> dict[str, object]:
        return {"version": self.version, "members": list(self.members), "vnodes": self.vnodes}


class RingSource:
    """The ring in force: static members from settings, or a JSON file (a mounted ConfigMap in
    Kubernetes) re-read when it changes. Listeners hear of every change of membership.

    File shape: ``{"version": 3, "members": ["delivery-0", ...], "vnodes": 150,
    "urls": {"delivery-0": "http://..."}}`` or ``"url_template": "http://{member}.svc:8080"``.
    """

    def __init__(
        self, *, nodes: Mapping[str, str], file: str = "", vnodes: int = DEFAULT_VNODES, reload_s: float = 1.0
    ) -> None:
        self._file = Path(file) if file else None
        self._reload_s = reload_s
        self._mtime: float | None = None
        self._urls: dict[str, str] = dict(nodes)
        self._template = ""
        self._listeners: list[Callable[[Ring, Ring], Awaitable[None]]] = []
        self._set(Ring.of(nodes, vnodes=vnodes, version=0))
        if self._file is not None:
            self.reload()

    def _set(self, ring: Ring) -> None:
        self.ring = ring
        RING_VERSION.set(ring.version)
        RING_MEMBERS.set(len(ring.members))

    def url_for(self, member: str) -> str:
        if member in self._urls:
            return self._urls[member]
        if self._template:
            return self._template.format(member=member)
        raise LookupError(f"no address for delivery node {member!r}")

    def on_change(self, listener: Callable[[Ring, Ring], Awaitable[None]]) -> None:
        self._listeners.append(listener)

    def reload(self) -> bool:
        """Re-read the file if it changed; True when the membership changed."""
        if self._file is None:
            return False
        try:
            mtime = self._file.stat().st_mtime
            if mtime == self._mtime:
                return False
            data = json.loads(self._file.read_text())
        except (OSError, ValueError):
            log.warning("ring file %s unreadable; keeping ring version %d", self._file, self.ring.version)
            return False
        self._mtime = mtime
        self._urls.update(data.get("urls") or {})
        self._template = str(data.get("url_template") or self._template)
        new = Ring.of(
            data.get("members") or [],
            vnodes=int(data.get("vnodes") or self.ring.vnodes),
            version=int(data.get("version") or 0),
        )
        changed = new.members != self.ring.members
        self._set(new)
        return changed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._reload_s)
            old = self.ring
            if self.reload():
                log.info("ring changed to version %d: %s", self.ring.version, ", ".join(self.ring.members))
                for listener in self._listeners:
                    try:
                        await listener(old, self.ring)
                    except Exception:  # one listener's failure must not stop the watcher
                        log.exception("ring change listener failed")
