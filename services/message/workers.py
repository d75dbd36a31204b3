"""The message pipeline's background loops: the outbox relay and the fan-out worker.

relay: SQL outbox -> event log (``courier.messages.v1``, key = conversation id), rows deleted only
after the log accepted them, leases so several replicas never publish a row at the same time.
fan-out: event log -> inbox / timeline -> push, offsets committed only after processing, failures
retried with exponential backoff and parked in ``courier.messages.dlq.v1`` after the last attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from opentelemetry import trace

from services.common import metrics, telemetry
from services.common.clock import utcnow
from services.message.domain import SENDABLE_TYPES
from services.message.ports import AheadConsumer, EventLog, LogMonitor, MessageStore, OutboxRecord, Record

log = logging.getLogger("courier.message.workers")

MESSAGES_TOPIC = "courier.messages.v1"
DLQ_TOPIC = "courier.messages.dlq.v1"
FANOUT_GROUP = "courier-fanout"
SAMPLE_EVERY_S = 5.0


def prime_metrics(*, group: str = FANOUT_GROUP, topic: str = MESSAGES_TOPIC) -> None:
    """Create the message pipeline's labelled series at zero, so /metrics shows them before traffic."""
    for content_type in SENDABLE_TYPES:
        metrics.MESSAGES_SENT.labels(content_type)
    metrics.CONSUMER_RECORDS.labels(group, topic)
    metrics.CONSUMER_FAILURES.labels(group, topic)
    metrics.DLQ_RECORDS.labels(topic)
    for diffusion in ("inbox", "timeline"):
        metrics.FANOUT_DURATION.labels(diffusion)


class OutboxRelay:
    """Takes outbox rows to the event log: those a commit hands over at once (publish on commit), and,
    in a sweep, every other row nobody holds a live lease on (rows of a process that died, rows a
    publisher gave up on, rows that had to wait for an earlier row of their conversation).

    Handed-over rows are published in the order they were committed. When publishing them fails, the
    relay gives up on every row it holds, ends their leases so the sweep takes them in order, and
    changes its token: a commit that began under the old token hands over rows that are released too.
    """

    def __init__(
        self,
        store: MessageStore,
        log_: EventLog,
        *,
        batch: int = 200,
        lease_s: float = 30.0,
        idle_poll_s: float = 0.2,
        delete_after_s: float = 0.1,
        keeps_rows: bool = True,
    ) -> None:
        self._store, self._log = store, log_
        self._keeps_rows = keeps_rows
        self._batch, self._lease_s, self._idle_poll_s = batch, lease_s, idle_poll_s
        # Published rows are deleted together, one transaction per this many seconds (or per batch)
        # instead of one per publish; until then they stay leased to this relay, so nobody sweeps them.
        self._delete_after_s = delete_after_s
        self._delete_at = 0.0
        self._token = secrets.token_hex(16)
        # Handed over by commits, with the loop time after which they are too close to their lease's end.
        self._handed: deque[tuple[float, OutboxRecord]] = deque()
        self._given_up: list[int] = []
        self._published_not_deleted: list[int] = []
        self._sweep_due = True
        self._last_sweep = 0.0
        self._wake = asyncio.Event()
        self.published = 0

    @property
    def lease_token(self) -> str:
        return self._token

    @property
    def lease_s(self) -> float:
        return self._lease_s

    @property
    def keeps_rows(self) -> bool:
        return self._keeps_rows

    async def publish_committed(self, events: Sequence[OutboxRecord]) -> None:
        await self._publish(events)

    def committed(self, rows: Sequence[OutboxRecord], *, lease_token: str, swept: bool) -> None:
        if lease_token == self._token:
            stale_at = asyncio.get_running_loop().time() + self._lease_s / 2
            self._handed.extend((stale_at, row) for row in rows)
        else:
            self._given_up.extend(_ids(rows))
        self._sweep_due = self._sweep_due or swept
        self._wake.set()

    async def relay_once(self) -> int:
        """Finish what earlier rounds left (deletes, releases), then publish the rows commits handed over,
        or else sweep when one is due; returns how many rows went out."""
        await self._settle()
        now = asyncio.get_running_loop().time()
        if self._handed and self._handed[0][0] <= now:
            self._give_up()  # publishing has stalled for half a lease: the sweep takes over, in order
            await self._settle()
        if self._handed:
            rows = [self._handed.popleft()[1] for _ in range(min(self._batch, len(self._handed)))]
            try:
                await self._publish(rows)
            except Exception:
                self._handed.extendleft((0.0, row) for row in reversed(rows))
                self._give_up()
                raise
        elif self._sweep_due or now - self._last_sweep >= self._idle_poll_s:
            self._sweep_due, self._last_sweep = False, now
            rows = await self._store.claim_outbox(limit=self._batch, lease_s=self._lease_s)
            if rows:
                self._sweep_due = True  # there may be more
                try:
                    await self._publish(rows)
                except Exception:
                    self._given_up.extend(_ids(rows))  # free for the next sweep at once
                    raise
        else:
            return 0
        if not self._published_not_deleted:
            self._delete_at = asyncio.get_running_loop().time() + self._delete_after_s
        self._published_not_deleted.extend(_ids(rows))
        await self._settle()
        return len(rows)

    def _give_up(self) -> None:
        self._token = secrets.token_hex(16)
        self._given_up.extend(_ids(row for _, row in self._handed))
        self._handed.clear()
        self._sweep_due = True

    async def _settle(self, *, now: bool = False) -> None:
        """Delete what went out, when it is time, and release what was given up (both kept for the next
        round if this fails)."""
        waiting = self._published_not_deleted
        due = now or len(waiting) >= self._batch or asyncio.get_running_loop().time() >= self._delete_at
        if waiting and due:
            await self._store.delete_outbox(waiting)
            self._published_not_deleted = []
        if self._given_up:
            await self._store.release_outbox(self._given_up)
            self._given_up = []

    async def _publish(self, rows: Sequence[OutboxRecord]) -> None:
        # One span per row, child of the send that wrote it; its context travels in the record's headers.
        tracer = telemetry.tracer(__name__)
        spans = [
            tracer.start_span(
                "outbox publish",
                context=telemetry.extract(_carrier(row)),
                kind=trace.SpanKind.PRODUCER,
                attributes={"messaging.destination.name": MESSAGES_TOPIC},
            )
            for row in rows
        ]
        try:
            records = [_record(row, span) for row, span in zip(rows, spans, strict=True)]
            await self._log.publish(records)
        except Exception as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR)
            raise
        finally:
            for span in spans:
                span.end()
        self.published += len(rows)
        metrics.OUTBOX_PUBLISHED.inc(len(rows))

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            # Stopping: delete what went out, so a restart does not publish it again.
            with contextlib.suppress(Exception):
                await self._settle(now=True)
            raise

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            try:
                sent = await self.relay_once()
                backoff = 0.0
            except Exception:  # a broker or database outage: keep the rows, retry with backoff
                log.exception("outbox relay failed; rows stay in the outbox")
                backoff = min(5.0, max(0.1, backoff * 2))
                await asyncio.sleep(backoff)
                continue
            if sent == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._idle_poll_s)


def _ids(rows: Iterable[OutboxRecord]) -> list[int]:
    """The outbox ids of rows the relay handles (all of them have one: it is given no others)."""
    return [row.outbox_id for row in rows if row.outbox_id is not None]


def _carrier(row: OutboxRecord) -> dict[str, str]:
    if not row.trace_context:
        return {}
    try:
        carrier = orjson.loads(row.trace_context)
    except orjson.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in carrier.items()} if isinstance(carrier, dict) else {}


def _record(row: OutboxRecord, span: trace.Span) -> Record:
    with trace.use_span(span, end_on_exit=False):
        carrier = telemetry.inject()
    headers = {k: v.encode() for k, v in carrier.items()}
    return Record(MESSAGES_TOPIC, row.conversation_id, row.payload, headers, row.event)


def record_context(record: Record) -> dict[str, str]:
    """The trace context a record's headers carry (none when tracing is off)."""
    return telemetry.carrier_from_headers(record.headers.items())


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1))))


@dataclass(eq=False)
class _Slot:
    """One polled record and whether it is processed (fanned out or dead-lettered)."""

    record: Record
    done: bool = False


class _Flow:
    """The records a pipelined worker holds: all of them in poll order (a commit takes the processed
    prefix), and per key those still to process, one task per key working through its queue."""

    def __init__(self) -> None:
        self.polled: deque[_Slot] = deque()
        self.queued: dict[str, deque[_Slot]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()
        self.failure: BaseException | None = None
        self.open = 0  # polled, not processed

    def processed_prefix(self) -> int:
        count = 0
        for slot in self.polled:
            if not slot.done:
                break
            count += 1
        return count


class FanoutWorker:
    """Fans out event-log records in order per key (conversation), keys in parallel.

    ``run`` is a pipeline: it polls while earlier records are being processed, each key's records are
    taken by that key's task in order (those that queued while it worked go together, to ``handle_many``
    when given), and offsets are committed for the processed prefix of what was polled, so a record is
    committed only once it and every record polled before it are processed: a kill at any point means
    redelivery (handled idempotently), never loss. ``run_once`` is one batch, stop-and-go (tools, tests).
    """

    def __init__(
        self,
        consumer: AheadConsumer,
        dlq: EventLog,
        handle: Callable[[Record], Awaitable[None]],
        *,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        group: str = FANOUT_GROUP,
        handle_many: Callable[[Sequence[Record]], Awaitable[None]] | None = None,
        max_open: int = 2000,
        max_key_batch: int = 100,
        commit_every_s: float = 0.2,
        poll_max: int = 500,
    ) -> None:
        self._consumer, self._dlq, self._handle = consumer, dlq, handle
        self._handle_many = handle_many
        self._group = group
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._max_open, self._max_key_batch = max_open, max_key_batch
        self._commit_every_s, self._poll_max = commit_every_s, poll_max
        self._records_series: dict[str, Any] = {}
        self._failures_series: dict[str, Any] = {}
        self.processed = 0
        self.dead_lettered = 0

    def _counted(self, series: dict[str, Any], family: Any, topic: str) -> Any:
        """A labelled series bound once per topic, not looked up per record."""
        bound = series.get(topic)
        if bound is None:
            bound = series[topic] = family.labels(self._group, topic)
        return bound

    def _span(self, record: Record) -> trace.Span:
        """A span ``fanout`` for ``record``, continuing the trace its headers carry (not yet current)."""
        return telemetry.tracer(__name__).start_span(
            "fanout",
            context=telemetry.extract(record_context(record)),
            kind=trace.SpanKind.CONSUMER,
            attributes={"messaging.destination.name": record.topic, "messaging.consumer.group.name": self._group},
        )

    async def _process(self, record: Record) -> None:
        """Handle one record in its ``fanout`` span."""
        with trace.use_span(self._span(record), end_on_exit=True):
            await self._attempts(record)

    async def _process_many(self, records: list[Record]) -> None:
        """Records of one key, in order: together through ``handle_many`` (one span per record, the work
        under the last one); if that fails, one by one with their own retries and dead letters."""
        if self._handle_many is None or len(records) == 1:
            for record in records:
                await self._process(record)
            return
        spans = [self._span(record) for record in records]
        try:
            with trace.use_span(spans[-1], end_on_exit=False):
                await self._handle_many(records)
        except Exception as exc:  # noqa: BLE001 - each record then gets its own attempts and, at worst, the DLQ
            log.warning("%d records of %s failed together (%r); one by one now", len(records), records[0].key, exc)
        else:
            for record in records:
                self._counted(self._records_series, metrics.CONSUMER_RECORDS, record.topic).inc()
            self.processed += len(records)
            return
        finally:
            for span in spans:
                span.end()
        for record in records:
            await self._process(record)

    async def _attempts(self, record: Record) -> None:
        for attempt in range(1, self._retry.attempts + 1):
            try:
                await self._handle(record)
            except Exception as exc:  # noqa: BLE001 - any failure of one record is retried, then parked
                self._counted(self._failures_series, metrics.CONSUMER_FAILURES, record.topic).inc()
                if attempt == self._retry.attempts:
                    log.error("record of %s failed %d times, moving it to the DLQ: %r", record.key, attempt, exc)
                    await self._dlq.publish(
                        [
                            Record(
                                DLQ_TOPIC,
                                record.key,
                                record.value,
                                {
                                    **record.headers,
                                    "courier-error": repr(exc)[:500].encode(),
                                    "courier-attempts": str(attempt).encode(),
                                    "courier-source-topic": record.topic.encode(),
                                },
                            )
                        ]
                    )
                    self.dead_lettered += 1
                    metrics.DLQ_RECORDS.labels(record.topic).inc()
                    return
                await self._sleep(self._retry.delay(attempt))
            else:
                self.processed += 1
                self._counted(self._records_series, metrics.CONSUMER_RECORDS, record.topic).inc()
                return

    def _dispatch(self, flow: _Flow, records: Sequence[Record]) -> None:
        """Queue each record behind its key's earlier ones; start a task for a key that has none."""
        for record in records:
            slot = _Slot(record)
            flow.polled.append(slot)
            flow.open += 1
            queue = flow.queued.get(record.key)
            if queue is None:
                queue = flow.queued[record.key] = deque()
                task = asyncio.create_task(self._work_key(flow, record.key, queue))
                flow.tasks.add(task)
                task.add_done_callback(flow.tasks.discard)
            queue.append(slot)

    async def _work_key(self, flow: _Flow, key: str, queue: deque[_Slot]) -> None:
        try:
            while queue:
                slots = [queue.popleft() for _ in range(min(self._max_key_batch, len(queue)))]
                await self._process_many([slot.record for slot in slots])
                for slot in slots:
                    slot.done = True
                flow.open -= len(slots)
                flow.changed.set()
        except BaseException as exc:
            if flow.failure is None and not isinstance(exc, asyncio.CancelledError):
                flow.failure = exc  # the DLQ could not be written: the pipeline stops and polls it again
                flow.changed.set()
            raise
        finally:
            if flow.queued.get(key) is queue:
                del flow.queued[key]

    async def _commit_prefix(self, flow: _Flow) -> None:
        count = flow.processed_prefix()
        if count:
            await self._consumer.commit_first(count)
            for _ in range(count):
                flow.polled.popleft()

    async def run_once(self, *, max_records: int = 500, timeout_s: float = 1.0) -> int:
        """Poll one batch, process it (keys in parallel), commit it."""
        records = await self._consumer.poll(max_records=max_records, timeout_s=timeout_s)
        if not records:
            return 0
        flow = _Flow()
        self._dispatch(flow, records)
        try:
            await asyncio.gather(*flow.tasks)
        finally:
            await _stop(flow)
        await self._consumer.commit()
        return len(records)

    async def step(self) -> bool:
        """One batch; on failure (the broker went away mid-batch, nothing committed) the consumer is
        rewound so the batch is polled again. Without that, the next commit would cover records that
        were neither processed nor dead-lettered."""
        try:
            await self.run_once()
        except Exception:
            log.exception("fan-out batch failed; polling it again")
            with contextlib.suppress(Exception):
                await self._consumer.rewind()
            return False
        return True

    async def pipeline(self, *, idle_poll_s: float = 1.0, busy_poll_s: float = 0.05) -> None:
        """Poll, dispatch and commit until a record cannot be processed nor parked (raises it) or the task
        is cancelled (then the processed prefix is committed, within a second, so a restart redelivers
        less). At most ``max_open`` records are held unprocessed: beyond, polling waits."""
        flow = _Flow()
        loop = asyncio.get_running_loop()
        commit_at = loop.time() + self._commit_every_s
        try:
            while True:
                if flow.failure is not None:
                    raise flow.failure
                if loop.time() >= commit_at:
                    await self._commit_prefix(flow)
                    commit_at = loop.time() + self._commit_every_s
                if flow.open >= self._max_open:
                    flow.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(flow.changed.wait(), self._commit_every_s)
                    continue
                # While records are in hand, poll briefly so their commit and a failure are not held up.
                wait_s = busy_poll_s if flow.polled else idle_poll_s
                records = await self._consumer.poll(
                    max_records=min(self._poll_max, self._max_open - flow.open), timeout_s=wait_s
                )
                self._dispatch(flow, records)
        except asyncio.CancelledError:
            await _stop(flow)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._commit_prefix(flow)
            raise
        finally:
            await _stop(flow)

    async def run(self) -> None:
        while True:
            try:
                await self.pipeline()
            except Exception:
                log.exception("fan-out failed; polling again from the last commit")
                with contextlib.suppress(Exception):
                    await self._consumer.rewind()
                await asyncio.sleep(1.0)


async def _stop(flow: _Flow) -> None:
    """Cancel the key tasks still running and wait for them to end."""
    tasks = list(flow.tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def sample_outbox(store: MessageStore, *, now: Callable[[], datetime] = utcnow) -> None:
    """Set the outbox gauges from one query: rows waiting, and how long the oldest has waited."""
    backlog, oldest = await store.outbox_stats()
    metrics.OUTBOX_BACKLOG.set(backlog)
    metrics.OUTBOX_OLDEST_AGE.set(0.0 if oldest is None else max(0.0, (now() - oldest).total_seconds()))


async def sample_log(
    monitor: LogMonitor, *, group: str = FANOUT_GROUP, topic: str = MESSAGES_TOPIC, dlq_topic: str = DLQ_TOPIC
) -> None:
    """Set the consumer lag of ``group`` per partition of ``topic``, and the dead-letter topic's size."""
    for partition, lag in (await monitor.lag(group, topic)).items():
        metrics.CONSUMER_LAG.labels(group, topic, str(partition)).set(lag)
    metrics.DLQ_SIZE.set(await monitor.held(dlq_topic))


async def sample_forever(sample: Callable[[], Awaitable[None]], *, what: str, every_s: float = SAMPLE_EVERY_S) -> None:
    """Run ``sample`` now and every ``every_s``; a failure (database or broker away) keeps the last values."""
    failing = False
    while True:
        try:
            await sample()
        except Exception:  # noqa: BLE001 - a gauge sampler must outlive any outage; logged once per outage
            if not failing:
                log.warning("sampling %s failed; gauges keep their last values", what, exc_info=True)
            failing = True
        else:
            failing = False
        await asyncio.sleep(every_s)
