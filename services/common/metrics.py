"""Every Prometheus metric the Courier services export, declared in one place.

Dashboards and alert rules are checked against this list, so a metric is added here first and only
then recorded somewhere. Names follow Prometheus conventions: base units, ``_total`` for counters,
``_seconds`` for durations. Labels carry bounded values only (route templates, frame types, limit
names), never user, device or conversation ids. Each process has its own registry contents: the
all-in-one process records everything, a distributed process only what its service does.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

# Latency buckets from 1 ms to 10 s: a push under 100 ms and a stall of seconds both show.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

BUILD = Info("courier_build", "Version of the Courier code this process runs.")

# --- HTTP: rate, errors, duration per route template -----------------------------------------------
HTTP_REQUESTS = Counter(
    "courier_http_requests_total",
    "HTTP requests answered, by service, method, route template and status code.",
    ["service", "method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "courier_http_request_duration_seconds",
    "Time from request to the end of the response, by service, method and route template.",
    ["service", "method", "route"],
    buckets=LATENCY_BUCKETS,
)

# --- WebSocket tier (delivery nodes) ----------------------------------------------------------------
WS_CONNECTIONS = Gauge(
    "courier_ws_connections",
    "Open client WebSocket connections on this delivery node.",
    ["node"],
)
WS_FRAMES_RECEIVED = Counter(
    "courier_ws_frames_received_total",
    "Client frames handled, by frame type and outcome (ok, error).",
    ["type", "outcome"],
)
WS_FRAME_DURATION = Histogram(
    "courier_ws_frame_duration_seconds",
    "Time to handle one client frame, by frame type.",
    ["type"],
    buckets=LATENCY_BUCKETS,
)
WS_FRAMES_SENT = Counter(
    "courier_ws_frames_sent_total",
    "Frames written to client sockets, by frame type.",
    ["type"],
)
WS_SEND_QUEUE_BYTES = Gauge(
    "courier_ws_send_queue_bytes",
    "Bytes of encoded frames this process holds for its client sockets, queued or being written.",
)
WS_CLOSES = Counter(
    "courier_ws_closes_total",
    "Client connections closed by the server, by reason (replaced, slow_client, idle, reconnect, shutdown, "
    "rate_limited, unauthorized, revoked, error).",
    ["reason"],
)

# --- The message path -------------------------------------------------------------------------------
MESSAGES_SENT = Counter(
    "courier_messages_sent_total",
    "Messages stored, by content type; an idempotent retry of a send is not counted again.",
    ["content_type"],
)
MESSAGES_PUSHED = Counter(
    "courier_messages_pushed_total",
    "Message frames written to a device's socket (first delivery and retransmits).",
)
MESSAGES_ACKED = Counter(
    "courier_messages_acked_total",
    "Pushed messages a device acknowledged (cumulative ACKs counted per message released).",
)
MESSAGES_RETRANSMITTED = Counter(
    "courier_messages_retransmitted_total",
    "Message frames pushed again because no ACK came within the ACK timeout.",
)
MESSAGES_SYNCED = Counter(
    "courier_messages_synced_total",
    "Messages returned to devices by sync.",
)
SEND_TO_PUSH = Histogram(
    "courier_send_to_push_seconds",
    "From a message's stored created_at to its frame being written to a device's socket.",
    buckets=LATENCY_BUCKETS,
)
FANOUT_DURATION = Histogram(
    "courier_fanout_duration_seconds",
    "Time to fan one event out to inboxes or the timeline and push it, by diffusion (inbox, timeline).",
    ["diffusion"],
    buckets=LATENCY_BUCKETS,
)

# --- Outbox, event log, dead letters ----------------------------------------------------------------
OUTBOX_BACKLOG = Gauge(
    "courier_outbox_backlog",
    "Outbox rows written but not yet published to the event log.",
)
OUTBOX_OLDEST_AGE = Gauge(
    "courier_outbox_oldest_age_seconds",
    "Age of the oldest unpublished outbox row; 0 when the outbox is empty.",
)
OUTBOX_PUBLISHED = Counter(
    "courier_outbox_published_total",
    "Events the outbox relay published to the event log (in courier dev, also those committed without a row).",
)
CONSUMER_LAG = Gauge(
    "courier_kafka_consumer_lag",
    "Records in a partition not yet processed by a consumer group (end offset minus committed offset).",
    ["group", "topic", "partition"],
)
CONSUMER_RECORDS = Counter(
    "courier_consumer_records_total",
    "Records a consumer processed successfully, by group and topic.",
    ["group", "topic"],
)
CONSUMER_FAILURES = Counter(
    "courier_consumer_failures_total",
    "Failed attempts to process a record (each retry counts), by group and topic.",
    ["group", "topic"],
)
DLQ_RECORDS = Counter(
    "courier_dlq_records_total",
    "Records sent to the dead-letter topic by this process, by source topic.",
    ["topic"],
)
DLQ_SIZE = Gauge(
    "courier_dlq_size",
    "Records held in the dead-letter topic.",
)

# --- Edge and routing ------------------------------------------------------------------------------
RATE_LIMIT_REJECTIONS = Counter(
    "courier_rate_limit_rejections_total",
    "Requests and WebSocket upgrades refused by a rate limit, by limit (global, ip, user).",
    ["limit"],
)
GATEWAY_SPLICES = Gauge(
    "courier_gateway_websocket_splices",
    "WebSocket connections the gateway is currently splicing to delivery nodes.",
)
GATEWAY_UPSTREAM_ERRORS = Counter(
    "courier_gateway_upstream_errors_total",
    'Requests the gateway could not forward because the upstream was unreachable, by upstream; upstream="files": '
    "refused because the gateway was at its limit of open files.",
    ["upstream"],
)
RING_VERSION = Gauge(
    "courier_ring_version",
    "Version of the delivery ring this process routes by.",
)
RING_MEMBERS = Gauge(
    "courier_ring_members",
    "Delivery nodes in the ring this process routes by.",
)
RING_HANDOFFS = Counter(
    "courier_ring_handoffs_total",
    "Users told to reconnect because a ring change moved them to another node.",
)
