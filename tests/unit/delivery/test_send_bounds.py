"""What a delivery node holds for sockets that do not read: bounded per socket and per process in bytes,
and a ``sync_result`` bounded in bytes (more pages, never a frame the queues cannot take)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import REGISTRY

from services.delivery.hub import CLOSE_TOO_SLOW, QUEUE_OVERFLOW, Close, Connection, Hub, SendBudget
from services.delivery.pending import MemoryPendingStore
from services.delivery.protocol import AckWindow
from services.delivery.session import Session, SessionDeps
from services.message.app import SendMessage, Sent, SyncedConversation
from services.message.domain import Message
from tests.unit.delivery.test_pending_contract import message, uid
from tests.unit.delivery.test_pending_hub import Unused

EMOJI_TEXT = "\U0001f600" * 4000
"""The longest text message, in its largest encoding: 16 000 bytes of UTF-8."""


def connection(*, max_bytes: int | None = None, budget: SendBudget | None = None, queue_size: int = 1024) -> Connection:
    return Connection(
        uid("u"),
        "phone",
        queue_size=queue_size,
        window=AckWindow(timeout_s=30, max_redeliveries=2),
        max_bytes=max_bytes,
        budget=budget,
    )


def frame_of(size: int) -> dict[str, Any]:
    """A frame whose encoding is exactly ``size`` bytes."""
    frame = {"type": "presence", "user_id": ""}
    frame["user_id"] = "x" * (size - len(orjson.dumps(frame)))
    return frame


def queued_bytes_gauge() -> float:
    return REGISTRY.get_sample_value("courier_ws_send_queue_bytes") or 0.0


def test_socket_offered_more_bytes_than_its_bound_is_closed_with_1013_and_gives_them_back() -> None:
    before = queued_bytes_gauge()
    budget = SendBudget()
    conn = connection(max_bytes=10_000, budget=budget)

    assert [conn.offer(frame_of(3000)) for _ in range(3)] == [True, True, True]
    assert budget.held == conn.held_bytes == 9000
    assert queued_bytes_gauge() == before + 9000
    assert conn.offer(frame_of(3000)) is False

    assert conn.closing == Close(CLOSE_TOO_SLOW, QUEUE_OVERFLOW)
    assert (budget.held, queued_bytes_gauge()) == (0, before)
    assert conn.offer(frame_of(10)) is False  # nothing more is queued for a closing socket


async def test_closing_socket_sends_only_the_close_once_its_queue_overflowed() -> None:
    conn = connection(max_bytes=10_000)
    while conn.offer(frame_of(3000)):
        pass

    assert await conn.next_item() == Close(CLOSE_TOO_SLOW, QUEUE_OVERFLOW)


def test_one_frame_larger_than_the_socket_bound_still_reaches_an_empty_socket() -> None:
    conn = connection(max_bytes=1000)

    assert conn.offer(frame_of(5000)) is True  # alone: the client can still make progress
    assert conn.offer(frame_of(100)) is False  # but nothing may queue behind it
    assert conn.closing is not None and conn.closing.code == CLOSE_TOO_SLOW


async def test_bytes_count_until_the_writer_has_written_the_frame_or_the_socket_ends() -> None:
    budget = SendBudget()
    conn = connection(budget=budget)
    conn.offer(frame_of(1000))
    conn.offer(frame_of(500))

    await conn.next_item()  # being written
    assert (conn.waiting_bytes, conn.held_bytes, budget.held) == (500, 1500, 1500)
    await conn.next_item()  # asking for the next frame: the first one is written
    assert (conn.waiting_bytes, conn.held_bytes, budget.held) == (0, 500, 500)
    conn.end()
    assert budget.held == 0


def test_process_over_its_bound_closes_the_socket_holding_the_most_and_keeps_the_others() -> None:
    budget = SendBudget(limit=20_000)
    stuck, quiet, healthy = connection(budget=budget), connection(budget=budget), connection(budget=budget)
    for _ in range(5):
        stuck.offer(frame_of(3000))  # a client that stopped reading
    quiet.offer(frame_of(1000))
    healthy.offer(frame_of(3000))

    assert healthy.offer(frame_of(3000)) is True

    assert stuck.closing == Close(CLOSE_TOO_SLOW, QUEUE_OVERFLOW)
    assert (quiet.closing, healthy.closing) == (None, None)
    assert budget.held == 7000


def test_process_over_its_bound_refuses_the_socket_that_holds_the_most() -> None:
    budget = SendBudget(limit=10_000)
    greedy, other = connection(budget=budget), connection(budget=budget)
    for _ in range(3):
        greedy.offer(frame_of(3000))
    other.offer(frame_of(500))

    assert greedy.offer(frame_of(3000)) is False

    assert greedy.closing is not None and greedy.closing.code == CLOSE_TOO_SLOW
    assert other.closing is None
    assert budget.held == 500


async def test_reconnecting_device_gets_at_most_half_the_free_bytes_of_its_pending_frames_and_stays_open() -> None:
    store, user, cid = MemoryPendingStore(), uid("u"), uid("c")
    await store.add(user, "phone", [message(cid, seq, EMOJI_TEXT) for seq in range(1, 21)])  # 320 kB unacked
    hub = Hub(pending=store, send_budget_bytes=1 << 20)
    conn = Connection(
        user,
        "phone",
        queue_size=1024,
        window=AckWindow(timeout_s=30, max_redeliveries=2),
        max_bytes=128_000,
        budget=hub.send_budget,
    )
    hub.attach(conn)

    restored = await hub.restore(conn)

    assert 0 < restored < 20
    assert conn.held_bytes <= 64_000
    assert conn.closing is None
    assert conn.offer(frame_of(1000))  # room left for live pushes


class History(Unused):
    """Stored messages of a few conversations, synced the way the message service does."""

    def __init__(self, conversations: Mapping[str, int], text: str) -> None:
        created = datetime(2026, 1, 1, tzinfo=UTC)
        self._messages = {
            cid: [
                Message(f"m{cid}{seq}", cid, seq, "alice", "laptop", f"c{seq}", {"type": "text", "text": text}, created)
                for seq in range(1, count + 1)
            ]
            for cid, count in conversations.items()
        }

    async def send_many(self, cmds: Sequence[SendMessage]) -> list[Sent | Exception]:
        raise AssertionError("not used")

    async def sync(
        self, user_id: str, cursors: Mapping[str, int], *, limit: int | None = None
    ) -> list[SyncedConversation]:
        limit = limit or 100
        synced = []
        for cid, messages in self._messages.items():
            after = [m for m in messages if m.seq > cursors.get(cid, 0)]
            if after:
                synced.append(SyncedConversation(cid, after[:limit], len(after) > limit))
        return synced


def syncing_session(history: History, *, max_bytes: int) -> tuple[Session, Connection]:
    hub = Hub()
    conn = connection()
    hub.attach(conn)
    unused = Unused()
    deps = SessionDeps(
        hub=hub,
        pusher=hub,
        messages=history,
        members=unused,
        presence=unused,
        heartbeat_every_s=3600,
        sync_limit=100,
        sync_max_bytes=max_bytes,
    )
    return Session(conn, deps, clock=lambda: 0.0), conn


async def sync(session: Session, conn: Connection, cursors: Mapping[str, int]) -> tuple[dict[str, Any], int]:
    """One sync round trip: the answer and its size on the wire."""
    await session.on_text(orjson.dumps({"type": "sync", "id": "y", "cursors": cursors, "limit": 100}))
    text = await conn.next_outgoing()
    assert isinstance(text, str)
    answer: dict[str, Any] = orjson.loads(text)
    assert answer["type"] == "sync_result", answer
    return answer, len(text.encode())


def seqs(page: Mapping[str, Any]) -> list[int]:
    return [m["seq"] for m in page["messages"]]


async def test_sync_result_stops_at_its_byte_bound_with_has_more_and_paging_delivers_every_message() -> None:
    session, conn = syncing_session(History({"c1": 100}, EMOJI_TEXT), max_bytes=256 << 10)

    first, size = await sync(session, conn, {"c1": 0})
    [page] = first["conversations"]
    assert 0 < len(page["messages"]) < 100 and page["has_more"] is True
    assert size <= 256 << 10

    received, cursor = seqs(page), seqs(page)[-1]
    while True:
        answer, size = await sync(session, conn, {"c1": cursor})
        [page] = answer["conversations"]
        assert size <= 256 << 10
        received += seqs(page)
        cursor = received[-1]
        if not page["has_more"]:
            break
    assert received == list(range(1, 101))


async def test_message_larger_than_the_sync_bound_is_synced_alone() -> None:
    session, conn = syncing_session(History({"c1": 3}, EMOJI_TEXT), max_bytes=4096)

    pages = []
    cursor = 0
    for _ in range(3):
        answer, _ = await sync(session, conn, {"c1": cursor})
        [page] = answer["conversations"]
        pages.append((seqs(page), page["has_more"]))
        cursor = seqs(page)[-1]

    assert pages == [([1], True), ([2], True), ([3], False)]


async def test_conversations_after_the_cut_are_listed_empty_with_has_more_and_come_next() -> None:
    session, conn = syncing_session(History({"c1": 40, "c2": 2}, EMOJI_TEXT), max_bytes=256 << 10)

    first, _ = await sync(session, conn, {})
    c1, c2 = first["conversations"]
    assert (c1["conversation_id"], c1["has_more"]) == ("c1", True)
    assert (c2["conversation_id"], c2["messages"], c2["has_more"]) == ("c2", [], True)

    cursors = {"c1": seqs(c1)[-1], "c2": 0}
    while True:
        answer, _ = await sync(session, conn, cursors)
        for page in answer["conversations"]:
            if page["messages"]:
                cursors[page["conversation_id"]] = seqs(page)[-1]
        if not any(page["has_more"] for page in answer["conversations"]):
            break
    assert cursors == {"c1": 40, "c2": 2}


async def test_small_sync_pages_are_not_cut() -> None:
    session, conn = syncing_session(History({"c1": 100, "c2": 100}, "hello"), max_bytes=256 << 10)

    answer, _ = await sync(session, conn, {})

    assert [(len(p["messages"]), p["has_more"]) for p in answer["conversations"]] == [(100, False), (100, False)]
