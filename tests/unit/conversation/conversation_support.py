"""Fakes of the conversation tests: plain recording classes standing in for the other services."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.common.ids import new_id
from services.common.push import Frame
from services.conversation.domain import Activity, Conversation, ConversationType, Role

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def uid(name: str) -> str:
    """A unique user id that still reads as a name in failures."""
    return f"{name}-{new_id()}"


class FakeUsers:
    """A user registry that knows exactly the ids it was given, and records every lookup."""

    def __init__(self, known: Collection[str] = ()) -> None:
        self.known = set(known)
        self.calls: list[set[str]] = []

    def add(self, *user_ids: str) -> None:
        self.known.update(user_ids)

    async def missing(self, user_ids: Collection[str]) -> set[str]:
        self.calls.append(set(user_ids))
        return set(user_ids) - self.known


class FakeActivity:
    """Activity set per (user, conversation) by the test; anything unset means no messages."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str], Activity] = {}
        self.calls: list[tuple[str, list[str]]] = []

    def set(self, user_id: str, conversation_id: str, activity: Activity) -> None:
        self.by_key[(user_id, conversation_id)] = activity

    async def activity(self, user_id: str, conversations: Sequence[Conversation]) -> Mapping[str, Activity]:
        self.calls.append((user_id, [c.conversation_id for c in conversations]))
        return {
            c.conversation_id: self.by_key[(user_id, c.conversation_id)]
            for c in conversations
            if (user_id, c.conversation_id) in self.by_key
        }


@dataclass(frozen=True)
class Push:
    user_ids: frozenset[str]
    frame: dict[str, Any]
    tracked: bool
    skip_device: tuple[str, str] | None


@dataclass
class RecordingPusher:
    pushes: list[Push] = field(default_factory=list)

    async def push(
        self,
        user_ids: Collection[str],
        frame: Frame,
        *,
        tracked: bool = False,
        skip_device: tuple[str, str] | None = None,
    ) -> None:
        self.pushes.append(Push(frozenset(user_ids), dict(frame), tracked, skip_device))

    async def push_frames(self, user_ids: Collection[str], frames: Sequence[Frame]) -> None:
        for frame in frames:
            await self.push(user_ids, frame)

    def of_type(self, frame_type: str) -> list[Push]:
        return [p for p in self.pushes if p.frame["type"] == frame_type]


def group(*members: tuple[str, Role], conversation_id: str | None = None, threshold: int = 500) -> Conversation:
    """A group with members in the given seniority order."""
    return Conversation(
        conversation_id=conversation_id or new_id(),
        type=ConversationType.GROUP,
        title="team",
        members=dict(members),
        created_at=T0,
        large=len(members) > threshold,
    )
