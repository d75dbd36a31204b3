"""The scenarios of issue 6 and what they share: the run context, the options, ramping sockets up."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.client import FrameHandler, Http, Socket, connect_error_kind
from bench.pacing import Pacer, run_paced
from bench.progress import Progress
from bench.target import Target
from bench.users import BenchUser, Pool

# Hard bounds: the tool refuses to be turned into something that could hurt the machine.
MAX_CONNECTIONS = 20_000
MAX_RATE = 50_000.0
MAX_DURATION_S = 3_600.0


@dataclass
class Options:
    """Every scenario's parameters (defaults are the full run; ``short()`` the ``--short`` one)."""

    connections: int = 10_000
    devices_per_user: int = 1
    ramp_rate: float = 500.0
    handshakes: int = 100
    hold_s: float = 60.0
    ping_every_s: float = 20.0
    pairs: int = 100
    rate: float = 2_000.0
    rates: list[float] = field(default_factory=list)
    find_max: bool = False
    slo_p99_ms: float = 100.0
    duration_s: float = 30.0
    warmup_s: float = 5.0
    drain_s: float = 10.0
    text_size: int = 100
    max_inflight: int = 500
    members: int = 1_000
    group_messages: int = 10
    group_timeout_s: float = 30.0
    backlog: int = 10_000
    backlog_window: int = 64
    deflate: bool = False
    user_parallelism: int = 8
    pool: str = "u"
    loadgen: str = "go"  # the throughput scenario's hot loop: "go" (bench/loadgen/) or "python"
    prime_s: float = 0.0  # messages sent through a target before its first scenario, not measured (PRIME_RATE)

    @classmethod
    def short(cls) -> Options:
        return cls(
            connections=200,
            hold_s=5.0,
            pairs=20,
            rate=500.0,
            duration_s=10.0,
            warmup_s=2.0,
            drain_s=5.0,
            members=100,
            group_messages=3,
            group_timeout_s=10.0,
            backlog=1_000,
        )

    def check(self) -> None:
        """Refuse parameters beyond the tool's bounds, with the reason."""
        needed = max(self.connections, 2 * self.pairs, self.members)
        if needed > MAX_CONNECTIONS:
            raise ValueError(f"{needed} connections is over the tool's bound of {MAX_CONNECTIONS}")
        for rate in (self.rate, *self.rates):
            if not 0 < rate <= MAX_RATE:
                raise ValueError(f"rate {rate} msg/s is outside (0, {MAX_RATE:.0f}]")
        for name in ("hold_s", "duration_s", "warmup_s", "drain_s", "group_timeout_s", "prime_s"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_DURATION_S:
                raise ValueError(f"{name} {value} is outside [0, {MAX_DURATION_S:.0f}] s")
        if self.loadgen not in ("go", "python"):
            raise ValueError(f"load generator {self.loadgen!r} is neither go nor python")
        if self.devices_per_user < 1 or self.devices_per_user > 20:
            raise ValueError("devices per user must be 1-20")
        if self.ramp_rate <= 0 or self.handshakes < 1 or self.members < 2 or self.pairs < 1 or self.backlog < 1:
            raise ValueError("ramp rate, handshakes, pairs and backlog must be positive, members at least 2")


@dataclass
class Context:
    target: Target
    http: Http
    pool: Pool
    progress: Progress
    options: Options


@dataclass
class Ramp:
    """Sockets opened at a bounded rate and parallelism; failures counted by kind."""

    sockets: list[Socket | None]
    handshake_s: list[tuple[float, float]]  # (seconds since the ramp began, handshake time)
    errors: Counter[str]
    elapsed_s: float

    @property
    def opened(self) -> list[Socket]:
        return [s for s in self.sockets if s is not None]


async def ramp(
    ctx: Context,
    users: Sequence[BenchUser],
    handler: Callable[[int], FrameHandler | None],
    *,
    what: str = "connections",
    on_open: Callable[[Socket], None] | None = None,
) -> Ramp:
    """Open one socket per user at ``ramp_rate`` per second, at most ``handshakes`` at once;
    ``handler(i)`` gives user i's frame handler, ``on_open`` sees each socket as soon as it is open."""
    options = ctx.options
    sockets: list[Socket | None] = [None] * len(users)
    timings: list[tuple[float, float]] = []
    errors: Counter[str] = Counter()
    slots = asyncio.Semaphore(options.handshakes)
    started = time.monotonic()
    pacer = Pacer(options.ramp_rate, start=started, max_lag_s=3600.0)
    pending: list[asyncio.Task[None]] = []
    next_index = 0

    async def open_one(index: int) -> None:
        async with slots:
            begun = time.monotonic()
            try:
                socket = await Socket.open(
                    ctx.target.ws_url, users[index].access_token, on_frame=handler(index), deflate=options.deflate
                )
            except Exception as exc:  # noqa: BLE001 - every failure to connect is counted, by kind
                errors[f"connect: {connect_error_kind(exc)}"] += 1
                return
            sockets[index] = socket
            timings.append((begun - started, time.monotonic() - begun))
            if on_open is not None:
                on_open(socket)

    async def fire(count: int) -> None:
        nonlocal next_index
        for _ in range(count):
            if next_index < len(users):
                pending.append(asyncio.create_task(open_one(next_index)))
                next_index += 1
        await asyncio.sleep(0)

    def status() -> str:
        done = sum(1 for s in sockets if s is not None)
        failed = sum(errors.values())
        return f"{what}: {done:,}/{len(users):,} open, {failed:,} failed, {time.monotonic() - started:.0f}s"

    async with ctx.progress.ticking(status):
        until = started + len(users) / options.ramp_rate + 1.0
        await run_paced(pacer, fire, until=until)
        while next_index < len(users):  # the schedule ran out before every user was started
            await fire(len(users) - next_index)
        await asyncio.gather(*pending)
    return Ramp(sockets, timings, errors, time.monotonic() - started)


async def close_all(sockets: Sequence[Socket | None], *, parallelism: int = 200) -> None:
    slots = asyncio.Semaphore(parallelism)

    async def close(socket: Socket) -> None:
        async with slots:
            await socket.close()

    await asyncio.gather(*(close(s) for s in sockets if s is not None))


def close_codes(sockets: Sequence[Socket | None]) -> Counter[str]:
    """Sockets the server closed, by close code (4008 means a rate limit was hit)."""
    found: Counter[str] = Counter()
    for socket in sockets:
        if socket is not None and socket.closed.is_set():
            found[f"closed {socket.close_code} {socket.close_reason}".strip()] += 1
    return found


def rate_limit_note(errors: Counter[str]) -> list[str]:
    if any("4008" in kind or "rate_limited" in kind for kind in errors):
        return [
            "the server's rate limiter refused frames or connections: start it with generous limits "
            "(COURIER_LIMITS__{GLOBAL,IP,USER}__RATE/__BURST), see bench/README.md"
        ]
    return []
