"""``connections``: ramp N idle authenticated sockets, hold them, count what stays open, and weigh
the delivery process: resident memory before and after, divided by the sockets held."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from bench.client import Socket
from bench.machine import raise_open_files_limit, rss_kib
from bench.report import Result
from bench.sampling import Sampler, cpu_percent
from bench.scenarios import Context, close_all, close_codes, ramp, rate_limit_note
from bench.stats import Summary

SETTLE_S = 2.0


async def _keep_alive(sockets: list[Socket], every_s: float, pongs: list[float]) -> None:
    """A ``ping`` frame per socket every ``every_s`` (the server closes sockets silent for 120 s),
    spread evenly over the interval rather than in one burst. ``sockets`` grows during the ramp:
    a slow ramp must not let the first sockets fall silent."""
    while True:
        started = time.monotonic()
        now_open = list(sockets)
        gap = every_s / max(1, len(now_open))
        for index, socket in enumerate(now_open):
            if not socket.closed.is_set():
                asyncio.get_running_loop().create_task(_ping(socket, pongs))
            await asyncio.sleep(max(0.0, started + (index + 1) * gap - time.monotonic()))
        await asyncio.sleep(max(0.0, started + every_s - time.monotonic()))


async def _ping(socket: Socket, pongs: list[float]) -> None:
    begun = time.perf_counter()
    with contextlib.suppress(Exception):  # a lost pong shows as a closed socket in the counts
        await socket.request({"type": "ping"}, timeout_s=30)
        pongs.append(time.perf_counter() - begun)


async def run(ctx: Context) -> Result:
    options, target = ctx.options, ctx.target
    n = options.connections
    result = Result(
        "connections",
        target.name,
        {
            "connections": n,
            "ramp_rate_per_s": options.ramp_rate,
            "handshake_parallelism": options.handshakes,
            "hold_s": options.hold_s,
            "ping_every_s": options.ping_every_s,
            "devices_per_user": options.devices_per_user,
            "permessage_deflate": options.deflate,
            "delivery_processes": target.delivery_pids,
        },
        sample_label="handshake latency (ms)",
    )
    limit = raise_open_files_limit(n + 1024)
    if limit < n + 64:
        result.notes.append(f"open-files limit {limit} is below {n} sockets; raise ulimit -n")
    per_user = options.devices_per_user
    users = (await ctx.pool.users(options.pool, -(-n // per_user), devices=per_user, valid_for_s=600.0))[:n]
    started = time.monotonic()
    own_before = rss_kib_self()
    before = {name: rss_kib(pid) for name, pid in target.delivery_pids.items()}
    sampler = Sampler(target.pids)
    pongs: list[float] = []
    async with sampler.running():
        live: list[Socket] = []
        pinger = asyncio.create_task(_keep_alive(live, options.ping_every_s, pongs))
        opened = await ramp(ctx, users, lambda _i: None, on_open=live.append)
        sockets = opened.opened
        ctx.progress.note(
            f"connections: {len(sockets):,} open after {opened.elapsed_s:.1f}s; holding {options.hold_s:.0f}s"
        )
        hold_until = time.monotonic() + options.hold_s

        def status() -> str:
            held = sum(1 for s in sockets if not s.closed.is_set())
            return f"connections: holding {held:,}, {max(0.0, hold_until - time.monotonic()):.0f}s left"

        async with ctx.progress.ticking(status):
            await asyncio.sleep(max(SETTLE_S, options.hold_s))
        pinger.cancel()
        held = sum(1 for s in sockets if not s.closed.is_set())
        after = {name: rss_kib(pid) for name, pid in target.delivery_pids.items()}
        own_after = rss_kib_self()
        closed_by_server = close_codes(opened.sockets)
        await close_all(sockets)
    result.duration_s = time.monotonic() - started
    result.errors = opened.errors + closed_by_server
    result.samples = [(at, seconds * 1000.0) for at, seconds in opened.handshake_s]
    first = sampler.readings[0].at
    result.gauges["delivery RSS (MiB)"] = [
        (r.at - first, sum(v or 0 for v in r.rss_kib.values() if v) / 1024.0)
        for r in sampler.readings
        if any(r.rss_kib.get(name) for name in target.delivery)
    ]
    result.add("connections", "connections attempted", n)
    result.add("opened", "connections opened", len(sockets))
    result.add("held", "connections held at the end", held, "", "10,000 on one delivery process")
    result.add("ramp_s", "ramp time", opened.elapsed_s, "s")
    result.add(
        "connect_rate",
        "connections opened per second",
        len(sockets) / opened.elapsed_s if opened.elapsed_s else None,
        "/s",
    )
    handshakes = Summary.of(seconds for _, seconds in opened.handshake_s).scaled(1000.0)
    result.add("handshake_p50_ms", "handshake P50", handshakes.p50, "ms")
    result.add("handshake_p99_ms", "handshake P99", handshakes.p99, "ms")
    if pongs:
        result.add("pong_p99_ms", "ping-pong P99 while holding", Summary.of(pongs).scaled(1000.0).p99, "ms")
    total_before = sum(v for v in before.values() if v)
    total_after = sum(v for v in after.values() if v)
    if target.delivery_pids and total_before and total_after:
        result.add("rss_before_mib", "delivery RSS before", total_before / 1024.0, "MiB")
        result.add("rss_after_mib", "delivery RSS holding", total_after / 1024.0, "MiB")
        per = (total_after - total_before) / held if held else None
        result.add("rss_per_connection_kib", "delivery RSS per connection", per, "KiB", "< 50 KiB")
        result.parameters["rss_kib"] = {"before": before, "after": after}
        if total_after < total_before:
            result.notes.append(
                "server RSS fell while sockets were added: it reused memory freed earlier; measure on a fresh server"
            )
    else:
        result.notes.append("no delivery pid known (pass --pid): resident memory per connection not measured")
    if own_before and own_after and held:
        result.add("client_kib_per_connection", "load tool RSS per connection", (own_after - own_before) / held, "KiB")
    shares = cpu_percent(sampler.readings[0], sampler.readings[-1])
    result.parameters["cpu_percent"] = {k: round(v, 1) for k, v in shares.items()}
    result.notes += rate_limit_note(result.errors)
    return result


def rss_kib_self() -> int | None:
    return rss_kib(os.getpid())
