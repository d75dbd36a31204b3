"""Helpers shared by the file service tests: constants, a settable clock, a membership fake, payloads."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.common.ids import new_id
from services.common.tokens import AccessTokens, Principal
from services.file.main import Files

PART_SIZE = 1024
MAX_SIZE = 10 * 1024
URL_TTL_S = 60
DOWNLOAD_TTL_S = 30
SECRET = "file-tests-secret"


class FakeClock:
    """Unix time that moves only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Memberships:
    """The conversation membership port, answered from a dict."""

    def __init__(self) -> None:
        self._members: dict[str, set[str]] = {}

    def add(self, conversation_id: str, *user_ids: str) -> None:
        self._members.setdefault(conversation_id, set()).update(user_ids)

    async def is_member(self, conversation_id: str, user_id: str) -> bool:
        return user_id in self._members.get(conversation_id, set())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int) -> bytes:
    """``size`` bytes unique to the calling test, so dedup never matches another test's file."""
    seed = new_id().encode()
    return (seed * (size // len(seed) + 1))[:size]


@dataclass
class Harness:
    client: httpx.AsyncClient
    files: Files
    clock: FakeClock
    members: Memberships
    tokens: AccessTokens
    objects: Path

    def auth(self, user_id: str) -> dict[str, str]:
        token = self.tokens.issue(Principal(user_id, f"device-{user_id}"), session_id=new_id())
        return {"Authorization": f"Bearer {token}"}
