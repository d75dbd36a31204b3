"""The push port: how any service gets a frame onto the sockets of a set of users.

In one process it is the delivery hub itself; distributed, a client that batches frames per owning
delivery node (found on the ring) and posts them there.

Two kinds of frames:
- tracked: stored events (``message``, ``recalled``, ``edited``). Each device keeps them in its ACK
  window until it acks ``ack_seq(frame)`` (cumulatively) and gets them again if it does not.
- transient: everything else (typing, receipts, presence, membership, calls); lost if offline.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Frame = Mapping[str, Any]


@dataclass(frozen=True)
class Push:
    """One ``Pusher.push`` call as a value, for those that send several at once."""

    user_ids: Collection[str]
    frame: Frame
    tracked: bool = False
    skip_device: tuple[str, str] | None = None


class Pusher(Protocol):
    async def push(
        self,
        user_ids: Collection[str],
        frame: Frame,
        *,
        tracked: bool = False,
        skip_device: tuple[str, str] | None = None,
    ) -> None:
        """Send ``frame`` to every connected device of ``user_ids`` except ``skip_device``
        (``(user_id, device_id)``, the device the event came from)."""
        ...

    async def push_many(self, pushes: Sequence[Push]) -> None:
        """Several pushes, each device getting its frames in the order given (the fan-out of one
        conversation's events that arrived together)."""
        ...

    async def push_frames(self, user_ids: Collection[str], frames: Sequence[Frame]) -> None:
        """Several transient frames to the same users, in order, the recipients found once (a
        thousand members added to a large group: a thousand ``member_added`` to every member)."""
        ...


def ack_seq(frame: Frame) -> int:
    """The seq a device acks for a tracked frame: the event's own seq."""
    return int(frame.get("event_seq", frame["seq"]))
