"""Trace propagation along the message path: the send's context is stored with the outbox row, the relay's
publish continues it into the record headers, the fan-out continues those, and the push is its child."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import telemetry
from services.delivery.hub import Connection, Hub
from services.delivery.protocol import AckWindow
from services.message import app
from services.message.adapters.memory import MemoryEventLog, MemoryInbox, MemoryTimeline
from services.message.service import MessageService
from services.message.workers import MESSAGES_TOPIC, FanoutWorker, OutboxRelay
from tests.unit.message.conftest import World


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    telemetry.reset()
    telemetry.configure("message-test", exporter=exporter)
    yield exporter
    telemetry.reset()


def _by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in finished}


async def test_one_trace_follows_a_message_from_the_send_through_the_outbox_and_fanout_to_the_push(
    world: World, spans: InMemorySpanExporter
) -> None:
    hub = Hub(clock=lambda: 0.0)
    bob = Connection("bob", "phone", queue_size=8, window=AckWindow(timeout_s=5, max_redeliveries=1))
    hub.attach(bob)
    service = MessageService(world.deps, MemoryInbox(), MemoryTimeline(), hub)
    cid = world.conversations.add("alice", "bob")
    log = MemoryEventLog()

    with telemetry.tracer("test").start_as_current_span("send"):
        await service.send(app.SendMessage(cid, "alice", "d1", "m-1", {"type": "text", "text": "hi"}))
    await OutboxRelay(world.store, log).relay_once()
    worker = FanoutWorker(log.consumer(MESSAGES_TOPIC, "g"), log, service.handle_record)
    await worker.run_once(timeout_s=0.1)

    found = _by_name(spans.get_finished_spans())
    send, publish, fanout, push = found["send"], found["outbox publish"], found["fanout"], found["push"]
    assert {s.context.trace_id for s in (send, publish, fanout, push)} == {send.context.trace_id}
    assert publish.parent is not None and publish.parent.span_id == send.context.span_id
    assert fanout.parent is not None and fanout.parent.span_id == publish.context.span_id
    assert push.parent is not None and push.parent.span_id == fanout.context.span_id
    assert bob.queued == 1


async def test_without_tracing_the_outbox_row_has_no_context_and_records_no_headers(world: World) -> None:
    telemetry.reset()
    cid = world.conversations.add("alice", "bob")
    await world.send(cid, "alice")
    [row] = await world.store.claim_outbox(limit=10, lease_s=0)
    assert row.trace_context is None

    log = MemoryEventLog()
    await OutboxRelay(world.store, log).relay_once()
    assert [r.headers for r in log.records(MESSAGES_TOPIC)] == [{}]
