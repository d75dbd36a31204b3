"""The WebSocket tier's Prometheus metrics, read from the process registry before and after an action."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any

from prometheus_client import REGISTRY

from services.common.clock import rfc3339, utcnow
from services.delivery import api
from services.delivery.hub import Close, Connection, Hub, prime_metrics
from services.delivery.session import prime_metrics as prime_frame_metrics
from services.message.app import SyncedConversation
from services.message.domain import Message
from tests.unit.delivery.test_pending_contract import uid
from tests.unit.delivery.test_pending_hub import Unused, connect, session


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class FakeSocket:
    """What the writer loop needs of a WebSocket: text frames and a close."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.closed: tuple[int, str] | None = None

    async def send_text(self, text: str) -> None:
        self.texts.append(text)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def message_frame(cid: str, seq: int, *, age_s: float) -> dict[str, Any]:
    created = rfc3339(utcnow() - timedelta(seconds=age_s))
    return {"type": "message", "conversation_id": cid, "seq": seq, "created_at": created}


def test_priming_shows_the_node_frame_types_and_close_reasons_at_zero() -> None:
    node = uid("node")
    prime_metrics(node)
    prime_frame_metrics()
    assert REGISTRY.get_sample_value("courier_ws_connections", {"node": node}) == 0
    assert REGISTRY.get_sample_value("courier_ws_frames_sent_total", {"type": "sync_result"}) is not None
    assert REGISTRY.get_sample_value("courier_ws_closes_total", {"reason": "slow_client"}) is not None
    assert (
        REGISTRY.get_sample_value("courier_ws_frames_received_total", {"type": "invalid", "outcome": "ok"}) is not None
    )
    assert REGISTRY.get_sample_value("courier_ws_frame_duration_seconds_count", {"type": "send"}) is not None


async def test_a_message_frame_written_to_the_socket_counts_as_pushed_with_its_send_to_push_latency() -> None:
    hub, cid = Hub(clock=lambda: 0.0), uid("c")
    conn = connect(hub, uid("u"), "phone")
    pushed, latency = value("courier_messages_pushed_total"), value("courier_send_to_push_seconds_count")
    slow = value("courier_send_to_push_seconds_bucket", le="0.5")
    sent_frames = value("courier_ws_frames_sent_total", type="message")

    await hub.push([conn.user_id], message_frame(cid, 1, age_s=2.0), tracked=True)
    assert value("courier_messages_pushed_total") == pushed  # queued is not written yet
    socket = FakeSocket()
    writer = asyncio.create_task(api._write(socket, conn, write_timeout_s=30))  # type: ignore[arg-type]
    while not socket.texts:
        await asyncio.sleep(0)
    conn.close(1012, "service restart")
    await writer

    assert value("courier_messages_pushed_total") == pushed + 1
    assert value("courier_ws_frames_sent_total", type="message") == sent_frames + 1
    assert value("courier_send_to_push_seconds_count") == latency + 1
    assert value("courier_send_to_push_seconds_bucket", le="0.5") == slow  # it waited about 2 s


async def test_acks_count_every_message_they_release_and_retransmits_are_counted() -> None:
    now = [0.0]
    hub, cid = Hub(clock=lambda: now[0]), uid("c")
    conn = connect(hub, uid("u"), "phone")
    for seq in (1, 2, 3):
        await hub.push([conn.user_id], message_frame(cid, seq, age_s=0), tracked=True)
    acked, retransmitted = value("courier_messages_acked_total"), value("courier_messages_retransmitted_total")

    await hub.ack(conn, cid, 2)
    now[0] = 10.0  # past the 5 s ACK timeout of the window
    assert hub.retransmit_due() == 1

    assert value("courier_messages_acked_total") == acked + 2
    assert value("courier_messages_retransmitted_total") == retransmitted + 1


def test_server_closes_are_counted_by_reason() -> None:
    hub = Hub()
    user = uid("u")
    replaced, slow = (
        value("courier_ws_closes_total", reason="replaced"),
        value("courier_ws_closes_total", reason="slow_client"),
    )
    old = connect(hub, user, "phone")
    connect(hub, user, "phone")
    tiny = connect(hub, uid("u"), "d", queue_size=1)
    tiny.offer({"type": "typing"})
    tiny.offer({"type": "typing"})
    tiny.close(1012, "again")  # idempotent: counted once

    assert isinstance(old.closing, Close)
    assert value("courier_ws_closes_total", reason="replaced") == replaced + 1
    assert value("courier_ws_closes_total", reason="slow_client") == slow + 1


class Syncing(Unused):
    async def sync(
        self, user_id: str, cursors: Mapping[str, int], *, limit: int | None = None
    ) -> list[SyncedConversation]:
        at = utcnow()
        messages = [
            Message(uid("m"), "c", seq, "u", "d", uid("k"), {"type": "text", "text": "x"}, at) for seq in (1, 2)
        ]
        return [SyncedConversation("c", messages, False)]


async def test_client_frames_are_counted_by_type_and_outcome_and_synced_messages_are_counted() -> None:
    hub = Hub()
    conn: Connection = connect(hub, uid("u"), "phone")
    s = session(hub, conn)
    s.deps = replace(s.deps, messages=Syncing())
    ok_ping = value("courier_ws_frames_received_total", type="ping", outcome="ok")
    invalid = value("courier_ws_frames_received_total", type="invalid", outcome="error")
    bad_sync = value("courier_ws_frames_received_total", type="sync", outcome="error")
    timed = value("courier_ws_frame_duration_seconds_count", type="ping")
    synced = value("courier_messages_synced_total")

    await s.on_text('{"type": "ping", "id": 1}')
    await s.on_text("not json")
    await s.on_text('{"type": "nope"}')
    await s.on_text('{"type": "sync", "cursors": "wrong"}')
    await s.on_text('{"type": "sync", "id": 2}')

    assert value("courier_ws_frames_received_total", type="ping", outcome="ok") == ok_ping + 1
    assert value("courier_ws_frames_received_total", type="invalid", outcome="error") == invalid + 3
    assert value("courier_ws_frame_duration_seconds_count", type="ping") == timed + 1
    assert value("courier_ws_frames_received_total", type="sync", outcome="error") == bad_sync
    assert value("courier_messages_synced_total") == synced + 2
