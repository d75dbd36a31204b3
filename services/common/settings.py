"""Configuration of every Courier process: one pydantic-settings class, ``COURIER_`` prefix.

Nested groups use a double underscore (``COURIER_JWT__ACCESS_TTL_S=600``). The settings object is
built once in a composition root and passed down; nothing reads the environment anywhere else.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.runtime import YOUNG_THRESHOLD

DEV_SECRET = "courier-dev-insecure-secret-change-me"  # noqa: S105 - refused outside dev mode, replaced in it
MIN_SECRET_CHARS = 32
"""Shortest secret accepted outside dev mode (e.g. ``openssl rand -hex 32`` makes 64 characters)."""


class JwtSettings(BaseModel):
    keys: dict[str, str] = Field(
        default_factory=lambda: {"dev": DEV_SECRET},
        description="Signing keys by key id (kid). Every key verifies; only active_kid signs.",
    )
    active_kid: str = Field("dev", description="The key id new access tokens are signed with.")
    issuer: str = Field("courier", description="The iss claim of issued tokens.")
    access_ttl_s: int = Field(900, ge=30, description="Lifetime of an access token (15 min).")
    refresh_ttl_s: int = Field(30 * 24 * 3600, ge=60, description="Lifetime of a refresh token.")


class PasswordSettings(BaseModel):
    """argon2id cost of password hashes (the argon2-cffi defaults). Each login and registration pays it in
    CPU and memory; a hash made with other parameters is upgraded at the user's next login."""

    time_cost: int = Field(3, ge=1, description="argon2 iterations.")
    memory_kib: int = Field(65536, ge=8, description="argon2 memory per hash, in KiB.")
    parallelism: int = Field(4, ge=1, description="argon2 lanes.")

    @model_validator(mode="after")
    def _memory_covers_lanes(self) -> PasswordSettings:
        if self.memory_kib < 8 * self.parallelism:
            raise ValueError("memory_kib must be at least 8 x parallelism")
        return self


class Bucket(BaseModel):
    rate: float = Field(gt=0, description="Tokens refilled per second.")
    burst: float = Field(0.0, ge=0, description="Bucket capacity; must exceed the rate (default: 4 x rate).")

    @model_validator(mode="after")
    def _burst_exceeds_rate(self) -> Bucket:
        if self.burst == 0:
            self.burst = 4 * self.rate
        if self.burst <= self.rate:
            raise ValueError("burst must be greater than rate")
        return self


class LimitSettings(BaseModel):
    global_: Bucket = Field(Bucket(rate=2000, burst=4000), alias="global", description="Whole gateway.")
    ip: Bucket = Field(Bucket(rate=50, burst=200), description="Per client IP address.")
    user: Bucket = Field(Bucket(rate=30, burst=120), description="Per authenticated user, HTTP and WebSocket frames.")
    max_body_bytes: int = Field(1 << 20, description="Largest accepted request body or WebSocket frame.")

    model_config = {"populate_by_name": True}


class DeliverySettings(BaseModel):
    """How much a delivery process holds for its sockets, and for how long (docs/design.md 4.1)."""

    send_queue_size: int = Field(1024, ge=8, description="Frames queued per socket before a slow one is dropped.")
    send_queue_bytes: int = Field(
        4 << 20,
        ge=64 << 10,
        description="Bytes of encoded frames held per socket (queued or being written) before a slow one is closed.",
    )
    send_queue_total_bytes: int = Field(
        256 << 20,
        ge=1 << 20,
        description="Bytes held for all the sockets of this process; past it the sockets holding the most are closed.",
    )
    write_timeout_s: float = Field(10.0, gt=0, description="Close a socket whose write of one frame takes this long.")
    idle_timeout_s: float = Field(120.0, gt=0, description="Close a socket that sent nothing for this long.")
    sync_page_limit: int = Field(100, ge=1, le=1000, description="Most messages per conversation in one sync page.")
    sync_result_max_bytes: int = Field(
        256 << 10,
        ge=4 << 10,
        description="Encoded size a sync_result stops taking messages at (has_more: true); one always fits.",
    )
    retransmit_tick_s: float = Field(1.0, gt=0, description="How often pending ACKs are checked for timeouts.")

    @model_validator(mode="after")
    def _bounds_nest(self) -> DeliverySettings:
        if self.sync_result_max_bytes > self.send_queue_bytes // 2:
            raise ValueError("send_queue_bytes must hold at least two sync_results (sync_result_max_bytes)")
        if self.send_queue_bytes > self.send_queue_total_bytes:
            raise ValueError("send_queue_total_bytes must be at least send_queue_bytes")
        return self


class FileSettings(BaseModel):
    max_size: int = Field(100 << 20, description="Largest file accepted, in bytes.")
    part_size: int = Field(5 << 20, ge=1024, description="Size of every upload part but the last.")
    url_ttl_s: int = Field(900, ge=10, description="Lifetime of a presigned part URL.")
    download_ttl_s: int = Field(300, ge=10, description="Lifetime of a presigned download URL.")
    allowed_content_types: list[str] = Field(
        default_factory=lambda: [
            "image/*",
            "video/*",
            "audio/*",
            "text/plain",
            "application/pdf",
            "application/zip",
            "application/octet-stream",
            "application/json",
        ],
        description="Accepted content types; a trailing /* matches a whole family.",
    )


class RtcSettings(BaseModel):
    stun_urls: list[str] = Field(default_factory=list, description="STUN server URLs handed to clients.")
    turn_urls: list[str] = Field(default_factory=list, description="TURN server URLs (coturn, use-auth-secret).")
    turn_secret: str = Field("", description="Shared secret of the TURN REST API scheme.")
    turn_ttl_s: int = Field(86400, ge=60, description="Lifetime of TURN credentials.")


class RedisSettings(BaseModel):
    url: str = Field("", description="redis://host:port/db; empty keeps caches and counters in process.")
    timeline_keep: int = Field(100, ge=1, description="Newest events kept per large-conversation timeline.")
    timeline_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="Idle timelines expire after this long.")


class KafkaSettings(BaseModel):
    bootstrap: str = Field("", description="host:port[,host:port]; empty uses the in-process event log.")
    client_id: str = Field("courier", description="Client id reported to the brokers.")
    messages_partitions: int = Field(12, ge=1, description="Partitions of courier.messages.v1.")
    dlq_partitions: int = Field(3, ge=1, description="Partitions of courier.messages.dlq.v1.")
    replication_factor: int = Field(1, ge=1, description="Replication factor of created topics.")


class S3Settings(BaseModel):
    endpoint: str = Field("", description="host:port of the S3 API; empty keeps objects on local disk.")
    access_key: str = Field("", description="S3 access key.")
    secret_key: str = Field("", description="S3 secret key.")
    bucket: str = Field("courier-files", description="Bucket for uploaded files (created on start-up).")
    region: str = Field("us-east-1", description="Region the presigned URLs are signed for.")
    secure: bool = Field(False, description="Use HTTPS to reach the S3 API.")
    public_endpoint: str = Field("", description="host:port clients use in presigned URLs, if not endpoint.")


class ServiceUrls(BaseModel):
    """Where the other services answer, for ``courier run`` (service-to-service HTTP)."""

    identity: str = Field("http://127.0.0.1:9001", description="Base URL of the identity service.")
    conversation: str = Field("http://127.0.0.1:9002", description="Base URL of the conversation service.")
    message: str = Field("http://127.0.0.1:9003", description="Base URL of the message service.")
    presence: str = Field("http://127.0.0.1:9004", description="Base URL of the presence service.")
    file: str = Field("http://127.0.0.1:9005", description="Base URL of the file service.")


class RingSettings(BaseModel):
    nodes: dict[str, str] = Field(
        default_factory=dict, description="Delivery nodes by stable name -> base URL (static ring)."
    )
    file: str = Field("", description="A JSON file {version, members, vnodes, urls} watched for ring changes.")
    vnodes: int = Field(150, ge=1, description="Virtual nodes per member.")
    reload_s: float = Field(1.0, gt=0, description="How often the ring file is checked for changes.")


class ShutdownSettings(BaseModel):
    """What a process of the distributed mode does between SIGTERM and its exit (`courier run`; docs/design.md 7.5).

    Zero for both (the default) exits at once, as a process started by hand or by `make up` should; the operator
    sets both for pods, so that a rolling restart neither refuses requests nor drops every socket at once."""

    lag_s: float = Field(
        0.0,
        ge=0,
        le=120,
        description="Keep serving this long after SIGTERM, while Service endpoints forget the pod, before anything "
        "stops being accepted.",
    )
    drain_s: float = Field(
        0.0,
        ge=0,
        le=600,
        description="Delivery nodes and gateways: spread their WebSockets' reconnects over this window, then close "
        "what remains.",
    )


class GatewaySettings(BaseModel):
    """Who may tell a Courier HTTP server the client's address (docs/operations.md, "Behind a proxy")."""

    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (`10.0.0.0/8`) of proxies whose X-Forwarded-For names the client, read by "
        "`courier dev` and the services of `courier run` (delivery nodes behind the gateways). Empty, the default, "
        "believes no such header: the client is the connection's peer. The distributed gateway always uses the peer.",
    )

    @model_validator(mode="after")
    def _networks(self) -> GatewaySettings:
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(f"trusted_proxies: {entry!r} is not an IP address or network") from exc
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COURIER_", env_nested_delimiter="__", extra="ignore")

    mode: Literal["dev", "prod"] = Field("prod", description="dev allows the insecure built-in secrets.")
    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8080, description="Port the HTTP server binds.")
    data_dir: Path = Field(Path(".courier"), description="Embedded mode: SQLite file and object store.")
    database_url: str = Field("", description="SQLAlchemy async URL; empty means SQLite under data_dir.")
    secret: str = Field(DEV_SECRET, description="Signs file URLs and internal calls.")
    large_group_threshold: int = Field(500, ge=2, description="Members above this use read-diffusion.")
    recall_window_s: float = Field(120.0, ge=0, description="How long a sender may recall a message.")
    edit_window_s: float = Field(24 * 3600.0, ge=0, description="How long a sender may edit a message.")
    max_text_length: int = Field(4000, ge=1, description="Longest text message, in characters.")
    ack_timeout_s: float = Field(30.0, gt=0, description="Retransmit an unacked push after this long.")
    max_redeliveries: int = Field(5, ge=0, description="Retransmissions before a device is left to sync.")
    presence_ttl_s: float = Field(60.0, gt=0, description="A device without heartbeat for this long is offline.")
    gc_young_threshold: int = Field(
        YOUNG_THRESHOLD,
        ge=100,
        description="Allocations between two collections of Python's youngest garbage-collector generation "
        "(Python's default 700 promotes short-lived objects into full collections of the whole heap).",
    )
    jwt: JwtSettings = Field(default_factory=JwtSettings)
    passwords: PasswordSettings = Field(default_factory=PasswordSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    file: FileSettings = Field(default_factory=FileSettings)
    rtc: RtcSettings = Field(default_factory=RtcSettings)
    node_name: str = Field("", description="This delivery node's stable name (a member of the ring).")
    internal_token: str = Field(DEV_SECRET, description="Shared secret of service-to-service calls.")
    services: ServiceUrls = Field(default_factory=ServiceUrls)
    ring: RingSettings = Field(default_factory=RingSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'courier.db'}"

    def refuse_insecure_defaults(self) -> None:
        """Outside dev mode, a built-in or guessable secret would let anyone forge tokens: refuse to start,
        naming each weak setting (never its value)."""
        if self.mode == "dev":
            return
        named = {"COURIER_SECRET": self.secret, "COURIER_INTERNAL_TOKEN": self.internal_token}
        named |= {f"COURIER_JWT__KEYS key {kid!r}": key for kid, key in self.jwt.keys.items()}
        weak = [f"{name} {why}" for name, value in named.items() if (why := _weakness(value))]
        if weak:
            raise SystemExit(
                f"insecure secrets: {'; '.join(weak)}. Set each to at least {MIN_SECRET_CHARS} random characters "
                "(e.g. `openssl rand -hex 32`), or run in COURIER_MODE=dev"
            )


def _weakness(secret: str) -> str | None:
    """Why ``secret`` would be guessable, or None. Random values of the required length always pass."""
    if secret == DEV_SECRET:
        return "is the built-in development secret"
    if len(secret) < MIN_SECRET_CHARS:
        return f"is {len(secret)} characters long"
    if len(set(secret)) < 8:
        return "uses fewer than 8 different characters"
    return None
