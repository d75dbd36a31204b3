"""Kafka adapters of the event log: an idempotent acks=all producer, a group consumer committed by hand,
a reader of a whole topic for operator tools, and the creation of Courier's topics (``courier migrate``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerStoppedError,
    IllegalOperation,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError  # type: ignore[import-untyped]
from opentelemetry import context as otel_context

from services.common import telemetry
from services.common.errors import Unavailable
from services.common.settings import KafkaSettings
from services.message.ports import Record
from services.message.workers import DLQ_TOPIC, MESSAGES_TOPIC

log = logging.getLogger("courier.message.kafka")

# Everything aiokafka raises for an unreachable, stopped or misbehaving broker; OSError covers the sockets.
_BROKER_ERRORS = (KafkaError, ConsumerStoppedError, IllegalOperation, OSError)


@dataclass(frozen=True)
class KafkaRecord(Record):
    """A consumed record with its place in the log, for tools that show where a record sits."""

    partition: int = 0
    offset: int = 0
    timestamp_ms: int | None = None


def _require_bootstrap(settings: KafkaSettings) -> str:
    if not settings.bootstrap:
        raise Unavailable("Kafka is not configured (set COURIER_KAFKA__BOOTSTRAP)")
    return settings.bootstrap


def _to_record(message: Any) -> KafkaRecord:
    key: bytes | None = message.key
    value: bytes | None = message.value
    return KafkaRecord(
        topic=message.topic,
        key=key.decode("utf-8", errors="replace") if key is not None else "",
        value=value if value is not None else b"",
        headers={name: header or b"" for name, header in message.headers or ()},
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=message.timestamp if message.timestamp is not None and message.timestamp >= 0 else None,
    )


def _in_partition_order(batches: Mapping[Any, Sequence[Any]]) -> list[KafkaRecord]:
    """Records of a getmany() answer, partition by partition, each partition in offset order."""
    records: list[KafkaRecord] = []
    for tp in sorted(batches, key=lambda tp: (tp.topic, tp.partition)):
        records.extend(_to_record(message) for message in batches[tp])
    return records


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Collect the outcome of an ack nobody waits for any more, so asyncio does not log it as lost."""
    if not future.cancelled():
        future.exception()


class KafkaEventLog:
    """EventLog on an idempotent producer: ``publish`` returns once every record is acknowledged by all
    in-sync replicas. Started lazily on first use so a broker that is down at boot only delays the relay.

    aiokafka retries a batch for as long as the broker is away; ``publish`` gives up after
    ``delivery_timeout_s`` (kept below the relay's 30 s outbox lease) so an outage surfaces as ``Unavailable``
    and the relay retries its rows. Records still queued may then reach the log twice: at-least-once, and
    consumers dedup by (conversation, seq).

    Records are sent without lingering (``linger_ms`` 0): the relay queues a commit's records together, and
    while a request is in flight to a broker the producer holds back the next one to it, so what arrives
    meanwhile shares it. A linger only delayed each message: 5 ms of its median latency at 20-200 msg/s on
    ``make up``, for no CPU saved at 500 msg/s (docs/performance.md 19).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        linger_ms: int = 0,
        request_timeout_ms: int = 15_000,
        delivery_timeout_s: float = 25.0,
        close_timeout_s: float = 10.0,
    ) -> None:
        self._settings = settings
        self._linger_ms, self._request_timeout_ms = linger_ms, request_timeout_ms
        self._delivery_timeout_s, self._close_timeout_s = delivery_timeout_s, close_timeout_s
        self._producer: Any = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:
            if self._producer is not None:
                return
            producer = AIOKafkaProducer(
                bootstrap_servers=_require_bootstrap(self._settings),
                client_id=self._settings.client_id,
                acks="all",
                enable_idempotence=True,
                linger_ms=self._linger_ms,
                request_timeout_ms=self._request_timeout_ms,
            )
            try:
                await producer.start()
            except _BROKER_ERRORS as exc:
                await producer.stop()
                raise Unavailable(f"Kafka producer cannot start: {exc}") from exc
            self._producer = producer

    async def stop(self) -> None:
        """Flush and close; a broker still away after ``close_timeout_s`` leaves the queued records unacked,
        which is safe: their outbox rows were not deleted."""
        async with self._starting:
            producer, self._producer = self._producer, None
            if producer is None:
                return
            try:
                async with asyncio.timeout(self._close_timeout_s):
                    await producer.stop()
            except TimeoutError:
                log.warning(
                    "Kafka producer did not flush within %gs; closed with records unacked", self._close_timeout_s
                )

    async def _send(self, record: Record, headers: list[tuple[str, bytes]]) -> asyncio.Future[Any]:
        """Queue one record. Under the context its headers carry, so the traced producer's send span joins
        that trace (and the header it adds names the same trace)."""
        carrier = telemetry.carrier_from_headers(headers)
        token = otel_context.attach(telemetry.extract(carrier)) if carrier else None
        try:
            ack: asyncio.Future[Any] = await self._producer.send(
                record.topic, value=record.value, key=record.key.encode(), headers=headers
            )
            return ack
        finally:
            if token is not None:
                otel_context.detach(token)

    async def publish(self, records: Sequence[Record]) -> None:
        if not records:
            return
        await self.start()
        deadline = asyncio.get_running_loop().time() + self._delivery_timeout_s
        acks: list[asyncio.Future[Any]] = []
        try:
            # Queue every record before waiting on any, so they share batches; the producer keeps one
            # request in flight per partition and idempotence keeps retries in order, so per-key order holds.
            async with asyncio.timeout_at(deadline):
                for record in records:
                    headers = [(name, value) for name, value in record.headers.items()]
                    acks.append(await self._send(record, headers))
            # wait() rather than gather(): on timeout the acks stay with the producer instead of being cancelled.
            _, late = await asyncio.wait(acks, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
            if late:
                raise TimeoutError
            for ack in acks:
                ack.result()
        except TimeoutError as exc:
            for ack in acks:
                ack.add_done_callback(_retrieve)
            raise Unavailable(
                f"Kafka did not acknowledge {len(records)} record(s) within {self._delivery_timeout_s:g}s"
            ) from exc
        except _BROKER_ERRORS as exc:
            for ack in acks:
                ack.add_done_callback(_retrieve)
            raise Unavailable(f"Kafka did not accept {len(records)} record(s): {exc}") from exc


@dataclass
class _Span:
    """What ``poll`` returned of one partition since its last commit: offsets ``first`` to ``next - 1``."""

    first: int
    next: int


class _ForgetRevoked(ConsumerRebalanceListener):  # type: ignore[misc]
    """Drops the uncommitted spans of partitions taken away: their new owner starts from the last commit,
    and a late commit from here could only move that owner's offset backwards."""

    def __init__(self, spans: dict[Any, _Span]) -> None:
        self._spans = spans

    async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        for tp in revoked:
            self._spans.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        return None


class KafkaConsumer:
    """Consumer port on one topic as a member of ``group``: at-least-once, offsets committed only by ``commit``
    and only for what ``poll`` returned, so a crash between the two means redelivery, never loss."""

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        group: str,
        *,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        max_poll_interval_ms: int = 300_000,
        commit_timeout_s: float = 30.0,
    ) -> None:
        self._settings, self._topic, self._group = settings, topic, group
        self._commit_timeout_s = commit_timeout_s
        self._options = {
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": heartbeat_interval_ms,
            "max_poll_interval_ms": max_poll_interval_ms,
        }
        self._consumer: Any = None
        self._spans: dict[Any, _Span] = {}  # TopicPartition -> records returned but not committed yet
        # (TopicPartition, offset) of every record returned since the last commit, in the order returned.
        self._returned: deque[tuple[Any, int]] = deque()
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:
            if self._consumer is not None:
                return
            consumer = AIOKafkaConsumer(
                bootstrap_servers=_require_bootstrap(self._settings),
                client_id=self._settings.client_id,
                group_id=self._group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                **self._options,
            )
            consumer.subscribe([self._topic], listener=_ForgetRevoked(self._spans))
            try:
                await consumer.start()
            except _BROKER_ERRORS as exc:
                await consumer.stop()
                raise Unavailable(f"Kafka consumer of {self._topic} cannot start: {exc}") from exc
            self._consumer = consumer

    async def stop(self) -> None:
        """Leave the group without committing: what was polled since the last commit goes to the next owner."""
        async with self._starting:
            consumer, self._consumer = self._consumer, None
            self._spans.clear()
            self._returned.clear()
            if consumer is not None:
                await consumer.stop()

    def assignment(self) -> frozenset[tuple[str, int]]:
        """The (topic, partition) pairs this member owns right now."""
        if self._consumer is None:
            return frozenset()
        return frozenset((tp.topic, tp.partition) for tp in self._consumer.assignment())

    async def poll(self, *, max_records: int, timeout_s: float) -> list[Record]:
        await self.start()
        try:
            batches = await self._consumer.getmany(timeout_ms=max(0, int(timeout_s * 1000)), max_records=max_records)
        except _BROKER_ERRORS as exc:
            raise Unavailable(f"Kafka poll of {self._topic} failed: {exc}") from exc
        records = _in_partition_order(batches)
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            span = self._spans.setdefault(tp, _Span(record.offset, record.offset + 1))
            span.next = record.offset + 1
            self._returned.append((tp, record.offset))
        return list(records)

    async def commit(self) -> None:
        await self.commit_first(len(self._returned))

    async def commit_first(self, count: int) -> None:
        """Per partition, the offset after the last of the first ``count`` records returned. A partition
        taken away since (its span dropped) or given back (a new span that starts later) is left alone."""
        count = min(count, len(self._returned))
        if self._consumer is None or count <= 0:
            return
        upto: dict[Any, int] = {}
        for i in range(count):
            tp, offset = self._returned[i]
            upto[tp] = offset + 1
        owned = self._consumer.assignment()
        offsets = {
            tp: after
            for tp, after in upto.items()
            if tp in owned and tp in self._spans and self._spans[tp].first < after
        }
        try:
            if offsets:
                async with asyncio.timeout(self._commit_timeout_s):
                    await self._consumer.commit(offsets)
        except CommitFailedError as exc:
            # The group rebalanced under us: the partitions' new owners redeliver from the last commit.
            log.warning("commit of %s lost to a rebalance; records will be redelivered: %s", self._group, exc)
        except TimeoutError as exc:  # the spans stay: the next commit covers them
            raise Unavailable(f"Kafka commit of {self._group} timed out after {self._commit_timeout_s:g}s") from exc
        except _BROKER_ERRORS as exc:
            raise Unavailable(f"Kafka commit of {self._group} failed: {exc}") from exc
        for _ in range(count):
            self._returned.popleft()
        for tp, after in upto.items():
            span = self._spans.get(tp)
            if span is not None and span.first < after:
                span.first = after
                if span.first >= span.next:
                    del self._spans[tp]

    async def rewind(self) -> None:
        """Fetch again everything ``poll`` returned since the last commit: after a failed batch, so that a
        later commit cannot cover records that were never processed."""
        if self._consumer is None:
            return
        owned = self._consumer.assignment()
        spans, self._spans = dict(self._spans), {}
        self._returned.clear()
        for tp, span in spans.items():
            if tp in owned:
                self._consumer.seek(tp, span.first)


class KafkaTopicReader:
    """Consumer port over every partition of ``topic`` up to the end it had when started; ``poll`` returns
    nothing once there. With ``group`` it starts at that group's committed offsets and ``commit`` moves them
    (the DLQ replay); without, it starts at the beginning and cannot commit (the DLQ listing)."""

    def __init__(self, settings: KafkaSettings, topic: str, *, group: str | None = None) -> None:
        self._settings, self._topic, self._group = settings, topic, group
        self._consumer: Any = None  # stays None for a topic that does not exist: there is nothing to read
        self._started = False
        self._end: dict[Any, int] = {}  # TopicPartition -> end offset seen at start
        self._pending: dict[Any, int] = {}
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:
            if self._started:
                return
            partitions = [TopicPartition(self._topic, p) for p in await _partitions(self._settings, self._topic)]
            if partitions:
                self._consumer = await self._open(partitions)
            self._started = True

    async def _open(self, partitions: list[Any]) -> Any:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=_require_bootstrap(self._settings),
            client_id=self._settings.client_id,
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        try:
            await consumer.start()
            consumer.assign(partitions)
            self._end = dict(await consumer.end_offsets(partitions))
            if self._group is None:
                await consumer.seek_to_beginning(*partitions)
        except _BROKER_ERRORS as exc:
            await consumer.stop()
            raise Unavailable(f"Kafka reader of {self._topic} cannot start: {exc}") from exc
        return consumer

    async def stop(self) -> None:
        async with self._starting:
            consumer, self._consumer, self._started = self._consumer, None, False
            self._end.clear()
            self._pending.clear()
            if consumer is not None:
                await consumer.stop()

    async def _unread(self) -> list[Any]:
        if self._consumer is None:
            return []
        return [tp for tp, end in self._end.items() if await self._consumer.position(tp) < end]

    async def poll(self, *, max_records: int, timeout_s: float) -> list[Record]:
        """The next records before the end; ``[]`` only once every partition got there. The end is known,
        so a broker that cannot deliver within ``timeout_s`` is an outage, not an empty topic."""
        await self.start()
        try:
            async with asyncio.timeout(timeout_s):
                while unread := await self._unread():
                    batches = await self._consumer.getmany(*unread, timeout_ms=500, max_records=max_records)
                    records = [
                        record
                        for record in _in_partition_order(batches)
                        if record.offset < self._end[TopicPartition(record.topic, record.partition)]
                    ]
                    if records:
                        for record in records:
                            self._pending[TopicPartition(record.topic, record.partition)] = record.offset + 1
                        return list(records)
        except TimeoutError as exc:
            raise Unavailable(f"Kafka did not deliver the rest of {self._topic} within {timeout_s:g}s") from exc
        except _BROKER_ERRORS as exc:
            raise Unavailable(f"Kafka read of {self._topic} failed: {exc}") from exc
        return []

    async def commit(self) -> None:
        if self._consumer is None or not self._pending or self._group is None:
            return
        try:
            async with asyncio.timeout(30):
                await self._consumer.commit(self._pending)
        except TimeoutError as exc:
            raise Unavailable(f"Kafka commit of {self._group} timed out") from exc
        except _BROKER_ERRORS as exc:
            raise Unavailable(f"Kafka commit of {self._group} failed: {exc}") from exc
        self._pending = {}

    async def rewind(self) -> None:
        """Start over from the group's committed offsets (or the beginning without a group)."""
        await self.stop()


async def _admin(settings: KafkaSettings) -> Any:
    admin = AIOKafkaAdminClient(bootstrap_servers=_require_bootstrap(settings), client_id=settings.client_id)
    try:
        await admin.start()
    except _BROKER_ERRORS as exc:
        await admin.close()
        raise Unavailable(f"Kafka admin client cannot start: {exc}") from exc
    return admin


async def describe_partitions(settings: KafkaSettings, topics: Collection[str]) -> dict[str, int]:
    """Partition counts of those of ``topics`` that exist (listing every topic never auto-creates one)."""
    admin = await _admin(settings)
    try:
        described = await admin.describe_topics(None)
    except _BROKER_ERRORS as exc:
        raise Unavailable(f"Kafka topics cannot be described: {exc}") from exc
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described if t["topic"] in topics and t["error_code"] == 0}


async def _partitions(settings: KafkaSettings, topic: str) -> range:
    return range((await describe_partitions(settings, [topic])).get(topic, 0))


async def create_topics(settings: KafkaSettings, partitions: Mapping[str, int]) -> None:
    """Create each topic with its partition count and the configured replication factor; a topic that
    exists already is left as it is (a partition count is never changed here: that would move keys)."""
    # acks=all waits only for the in-sync replicas: with three copies, insist on two so that one
    # acknowledged write survives the loss of any one broker.
    configs = {"min.insync.replicas": str(max(1, min(2, settings.replication_factor - 1)))}
    admin = await _admin(settings)
    try:
        new = [
            NewTopic(name, count, settings.replication_factor, topic_configs=configs)
            for name, count in partitions.items()
        ]
        response = await admin.create_topics(new)
        for name, code, *rest in response.topic_errors:
            if code in (0, TopicAlreadyExistsError.errno):
                continue
            message = rest[0] if rest and isinstance(rest[0], str) else ""
            raise Unavailable(f"Kafka refused to create {name}: error {code} {message}".rstrip())
        existing = await admin.describe_topics(list(partitions))
    except _BROKER_ERRORS as exc:
        raise Unavailable(f"Kafka topics cannot be created: {exc}") from exc
    finally:
        await admin.close()
    for topic in existing:
        wanted = partitions.get(topic["topic"])
        if wanted is not None and len(topic["partitions"]) != wanted:
            log.warning(
                "topic %s has %d partitions, settings ask for %d; left unchanged",
                topic["topic"],
                len(topic["partitions"]),
                wanted,
            )


async def ensure_topics(settings: KafkaSettings) -> None:
    """Create ``courier.messages.v1`` and ``courier.messages.dlq.v1`` (``courier migrate``); idempotent."""
    await create_topics(settings, {MESSAGES_TOPIC: settings.messages_partitions, DLQ_TOPIC: settings.dlq_partitions})


class KafkaLogMonitor:
    """LogMonitor on Kafka: end offsets from a group-less consumer, committed offsets from the admin client.
    Every message replica reports the whole group's lag, so dashboards take the max per partition."""

    def __init__(self, settings: KafkaSettings, *, partitions_ttl_s: float = 60.0) -> None:
        self._settings = settings
        self._partitions_ttl_s = partitions_ttl_s
        self._known: dict[str, tuple[float, list[Any]]] = {}
        self._consumer: Any = None
        self._admin: Any = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:
            if self._consumer is not None:
                return
            admin = await _admin(self._settings)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=_require_bootstrap(self._settings),
                client_id=self._settings.client_id,
                group_id=None,
                enable_auto_commit=False,
            )
            try:
                await consumer.start()
            except _BROKER_ERRORS as exc:
                await consumer.stop()
                await admin.close()
                raise Unavailable(f"Kafka monitor cannot start: {exc}") from exc
            self._consumer, self._admin = consumer, admin

    async def stop(self) -> None:
        async with self._starting:
            consumer, admin, self._consumer, self._admin = self._consumer, self._admin, None, None
            if consumer is not None:
                await consumer.stop()
            if admin is not None:
                await admin.close()

    async def _partitions(self, topic: str) -> list[Any]:
        """The topic's partitions, described again every ``partitions_ttl_s``: describing every topic of
        the cluster (``__consumer_offsets`` has 50 partitions) on each sample cost 4% of the message process."""
        now = time.monotonic()
        known = self._known.get(topic)
        if known is not None and now - known[0] < self._partitions_ttl_s:
            return known[1]
        described = await self._admin.describe_topics(None)  # every topic: naming one may auto-create it
        partitions = [
            TopicPartition(topic, p["partition"])
            for t in described
            if t["topic"] == topic and t["error_code"] == 0
            for p in t["partitions"]
        ]
        if partitions:
            self._known[topic] = (now, partitions)
        return partitions

    async def _bounds(self, topic: str) -> tuple[dict[Any, int], dict[Any, int]]:
        await self.start()
        try:
            partitions = await self._partitions(topic)
            if not partitions:
                return {}, {}
            return (
                dict(await self._consumer.beginning_offsets(partitions)),
                dict(await self._consumer.end_offsets(partitions)),
            )
        except _BROKER_ERRORS as exc:
            raise Unavailable(f"Kafka offsets of {topic} cannot be read: {exc}") from exc

    async def lag(self, group: str, topic: str) -> dict[int, int]:
        beginning, end = await self._bounds(topic)
        if not end:
            return {}
        try:
            committed = await self._admin.list_consumer_group_offsets(group, partitions=list(end))
        except _BROKER_ERRORS as exc:
            raise Unavailable(f"Kafka offsets of group {group} cannot be read: {exc}") from exc
        lags: dict[int, int] = {}
        for tp, last in end.items():
            meta = committed.get(tp)
            # No commit yet: the group starts at the earliest record still held (auto_offset_reset=earliest).
            start = meta.offset if meta is not None and meta.offset >= 0 else beginning.get(tp, 0)
            lags[tp.partition] = max(0, last - start)
        return lags

    async def held(self, topic: str) -> int:
        beginning, end = await self._bounds(topic)
        return sum(max(0, last - beginning.get(tp, 0)) for tp, last in end.items())
