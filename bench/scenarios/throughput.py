"""``throughput``: M sender/receiver pairs in direct conversations, senders paced open-loop to a
total rate, receivers acking; offered and delivered msg/s and send-to-receive latency measured on
the receiving client. With several rates (``--rates``, ``--find-max``) it also reports the highest
rate whose P99 stays under the SLO with every message delivered.

The hot loop (senders, receivers, acks, latencies) runs in the Go load generator of ``bench/loadgen/``
(``bench/loadgen.py``) unless ``--loadgen python`` or no Go toolchain: then in ``Flow`` below. Both
produce the same ``Step``s, summarized and reported here."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.client import Acker, Socket
from bench.pacing import Pacer, run_paced
from bench.payload import sent_at, stamped
from bench.report import Result
from bench.sampling import LoopLag, Reading, Sampler, cpu_percent
from bench.scenarios import Context, Options, close_all, close_codes, ramp, rate_limit_note
from bench.stats import Summary, rate
from bench.users import BenchUser

FIND_MAX_FACTOR = 1.5
FIND_MAX_STEPS = 10
PAUSE_BETWEEN_STEPS_S = 2.0


@dataclass
class Step:
    """What one rate step saw; the frame handlers write into the current one."""

    rate: float
    wall_start: float
    window: tuple[float, float]
    sent_total: int = 0
    sent_in_window: int = 0
    acked_in_window: int = 0
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (arrived, latency s, sent)
    ack_rtts: list[float] = field(default_factory=list)
    duplicates: int = 0
    throttled: int = 0
    skipped: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def in_window(self, at: float) -> bool:
        return self.window[0] <= at < self.window[1]


@dataclass
class Pair:
    index: int
    conversation_id: str
    sender: Socket | None = None
    receiver: Socket | None = None
    acker: Acker | None = None
    pending: dict[int, float] = field(default_factory=dict)  # frame id -> wall time sent
    seen: set[int] = field(default_factory=set)
    number: int = 0


class Flow:
    def __init__(self, ctx: Context, pairs: list[Pair]) -> None:
        self.ctx = ctx
        self.pairs = pairs
        self.tag = secrets.token_hex(4)
        self.step: Step | None = None

    def on_sender_frame(self, pair: Pair) -> Any:
        def handle(frame: dict[str, Any], arrived: float) -> None:
            step = self.step
            sent = pair.pending.pop(frame.get("ref"), None)  # type: ignore[arg-type]
            if step is None or sent is None:
                return
            if frame["type"] == "send_ack":
                step.ack_rtts.append(arrived - sent)
                if step.in_window(sent):
                    step.acked_in_window += 1
            elif frame["type"] == "error":
                step.errors[f"send: {frame.get('code')}"] += 1

        return handle

    def on_receiver_frame(self, pair: Pair) -> Any:
        def handle(frame: dict[str, Any], arrived: float) -> None:
            if frame.get("type") != "message" or frame.get("conversation_id") != pair.conversation_id:
                return
            seq = int(frame["seq"])
            if pair.acker is not None:
                pair.acker.note(pair.conversation_id, seq)
            step = self.step
            if step is None:
                return
            if seq in pair.seen:
                step.duplicates += 1
                return
            pair.seen.add(seq)
            sent = sent_at((frame.get("content") or {}).get("text"))
            if sent is not None and sent >= step.wall_start:
                step.samples.append((arrived, arrived - sent, sent))

        return handle

    async def send(self, pair: Pair, count: int) -> None:
        step, socket = self.step, pair.sender
        assert step is not None
        if socket is None or socket.closed.is_set():
            step.errors["send: sender socket closed"] += count
            return
        for _ in range(count):
            if len(pair.pending) >= self.ctx.options.max_inflight:
                step.throttled += 1
                continue
            pair.number += 1
            frame_id = socket.next_id()
            now = time.time()
            pair.pending[frame_id] = now
            step.sent_total += 1
            step.sent_in_window += step.in_window(now)
            await socket.send(
                {
                    "type": "send",
                    "id": frame_id,
                    "conversation_id": pair.conversation_id,
                    "client_msg_id": f"t{self.tag}-{pair.index}-{pair.number}",
                    "content": {"type": "text", "text": stamped(self.ctx.options.text_size)},
                }
            )

    async def run_step(self, target_rate: float) -> Step:
        options = self.ctx.options
        started = time.monotonic()
        wall = time.time()
        step = Step(target_rate, wall, (wall + options.warmup_s, wall + options.warmup_s + options.duration_s))
        self.step = step
        until = started + options.warmup_s + options.duration_s
        pacers = [Pacer(target_rate / len(self.pairs), start=started + i / target_rate) for i in range(len(self.pairs))]

        async def drive(pair: Pair, pacer: Pacer) -> None:
            async def fire(count: int) -> None:
                await self.send(pair, count)

            await run_paced(pacer, fire, until=until)

        def status() -> str:
            elapsed = time.monotonic() - started
            phase = "warm-up" if elapsed < options.warmup_s else "measuring"
            late = step.samples[-200:]
            p99 = Summary.of(lat for _, lat, _ in late).p99
            total = options.warmup_s + options.duration_s
            return (
                f"throughput @ {target_rate:,.0f}/s {phase} {elapsed:.0f}/{total:.0f}s: "
                f"sent {step.sent_total:,}, received {len(step.samples):,}, recent P99 "
                f"{'-' if p99 is None else f'{p99 * 1000:.0f} ms'}, errors {sum(step.errors.values())}"
            )

        async with self.ctx.progress.ticking(status):
            await asyncio.gather(*(drive(pair, pacer) for pair, pacer in zip(self.pairs, pacers, strict=False)))
            step.skipped = sum(p.skipped for p in pacers)
            drain_until = time.monotonic() + options.drain_s
            while time.monotonic() < drain_until and self._outstanding(step) > 0:  # noqa: ASYNC110 - counters
                await asyncio.sleep(0.05)
        return step

    def _outstanding(self, step: Step) -> int:
        pending = sum(len(p.pending) for p in self.pairs)
        received = sum(1 for _, _, sent in step.samples if step.in_window(sent))
        return pending + max(0, step.acked_in_window - received)


def summarize(step: Step, options_duration: float, readings: list[Reading], lag: list[float]) -> dict[str, Any]:
    sent_in_window = step.sent_in_window
    received_in_window = sum(1 for arrived, _, _ in step.samples if step.in_window(arrived))
    of_window = [lat for _, lat, sent in step.samples if step.in_window(sent)]
    latency = Summary.of(of_window).scaled(1000.0)
    window_readings = [r for r in readings if step.window[0] - 1.0 <= r.at <= step.window[1] + 1.0]
    return {
        "target_rate": step.rate,
        "offered": rate(sent_in_window, options_duration),
        "delivered": rate(received_in_window, options_duration),
        "sent_in_window": sent_in_window,
        "acked_in_window": step.acked_in_window,
        "received_of_window": len(of_window),
        "undelivered": max(0, step.acked_in_window - len(of_window)),
        "unacknowledged": max(0, sent_in_window - step.acked_in_window),
        "latency_ms": latency.as_dict(),
        "send_ack_ms": Summary.of(step.ack_rtts).scaled(1000.0).as_dict(),
        "duplicates": step.duplicates,
        "throttled": step.throttled,
        "skipped": step.skipped,
        "errors": dict(step.errors),
        "cpu_percent": (
            {k: round(v, 1) for k, v in cpu_percent(window_readings[0], window_readings[-1]).items()}
            if len(window_readings) >= 2
            else {}
        ),
        "client_loop_lag_ms": Summary.of(lag).scaled(1000.0).as_dict(),
    } | cost_per_message(
        cpu_percent(window_readings[0], window_readings[-1]) if len(window_readings) >= 2 else {},
        rate(received_in_window, options_duration),
    )


def cost_per_message(shares: dict[str, float], delivered_per_s: float) -> dict[str, float | None]:
    """Server CPU per delivered message (every process of the target, databases and brokers included),
    and the load tool's CPU as a fraction of the server's: above a quarter, the tool may be the limit."""
    server = sum(share for name, share in shares.items() if name != "bench")
    tool = shares.get("bench")
    return {
        "server_cpu_percent": round(server, 1) if shares else None,
        "server_cpu_us_per_msg": (server / 100.0 / delivered_per_s * 1e6) if shares and delivered_per_s > 0 else None,
        "tool_cpu_of_server": (tool / server) if tool is not None and server > 0 else None,
    }


def sustainable(summary: dict[str, Any], slo_p99_ms: float) -> bool:
    """Every send was acknowledged and arrived, the rate was really offered and delivered, and P99 held."""
    p99 = summary["latency_ms"]["p99"]
    return (
        p99 is not None
        and p99 <= slo_p99_ms
        and summary["undelivered"] == 0
        and summary.get("unacknowledged", 0) == 0
        and summary["offered"] >= 0.95 * summary["target_rate"]
        and summary["delivered"] >= 0.95 * summary["target_rate"]
    )


async def run(ctx: Context) -> Result:
    options, target = ctx.options, ctx.target
    m = options.pairs
    result = Result(
        "throughput",
        target.name,
        {
            "pairs": m,
            "rates": options.rates or [options.rate],
            "find_max": options.find_max,
            "duration_s": options.duration_s,
            "warmup_s": options.warmup_s,
            "drain_s": options.drain_s,
            "text_size": options.text_size,
            "max_inflight_per_sender": options.max_inflight,
            "slo_p99_ms": options.slo_p99_ms,
            "acks": "cumulative, one frame per burst of pushes",
        },
        sample_label="send-to-receive latency (ms)",
    )
    users = await ctx.pool.users(options.pool, 2 * m, valid_for_s=600.0)
    slots = asyncio.Semaphore(16)

    async def direct(i: int) -> str:
        async with slots:
            return await ctx.http.direct(users[2 * i].access_token, users[2 * i + 1].user_id)

    conversations = list(await asyncio.gather(*(direct(i) for i in range(m))))
    program = None
    if options.loadgen == "go":
        try:
            program = await asyncio.to_thread(loadgen.binary)
        except loadgen.Unavailable as exc:
            note = f"the Go load generator is unavailable, so the Python loop ran instead: {exc}"
            ctx.progress.note(f"throughput: {note}")
            result.notes.append(note)
    result.parameters["loadgen"] = "go" if program else "python"
    runner = Run(ctx, result, Sampler(target.pids, every_s=0.5))
    started = time.monotonic()
    if program is not None:
        jobs = [
            loadgen.PairJob(users[2 * i].access_token, users[2 * i + 1].access_token, cid)
            for i, cid in enumerate(conversations)
        ]
        await runner.go(program, jobs)
    else:
        await runner.python(users, conversations)
    result.duration_s = time.monotonic() - started
    result.samples = runner.samples
    result.steps = runner.steps
    _figures(result, runner.steps, options.slo_p99_ms, several=len(runner.steps) > 1)
    result.notes += rate_limit_note(result.errors)
    return result


class Run:
    """The steps of one scenario run, by either load loop: each finished step is summarized with the
    CPU readings of its window, and ``--find-max`` adds a step while the last one held."""

    def __init__(self, ctx: Context, result: Result, sampler: Sampler) -> None:
        self.ctx, self.result, self.sampler = ctx, result, sampler
        self.rates = list(ctx.options.rates or [ctx.options.rate])
        self.steps: list[dict[str, Any]] = []
        self.samples: list[tuple[float, float]] = []
        self.origin_wall = time.time()

    def finish(self, step: Step, lag: list[float]) -> bool:
        """Summarize ``step``; whether another step follows (a rate left, or one more for find-max)."""
        options = self.ctx.options
        readings = [_shift(r, step) for r in self.sampler.readings]
        summary = summarize(step, options.duration_s, readings, lag)
        summary["sustainable"] = sustainable(summary, options.slo_p99_ms)
        self.steps.append(summary)
        self.samples += [(arrived - self.origin_wall, lat * 1000.0) for arrived, lat, _ in step.samples]
        self.result.errors += step.errors
        self.ctx.progress.note(_line(summary))
        done = len(self.steps)
        if options.find_max and done == len(self.rates) and summary["sustainable"] and done < FIND_MAX_STEPS:
            self.rates.append(self.rates[-1] * FIND_MAX_FACTOR)
        return done < len(self.rates)

    async def python(self, users: list[BenchUser], conversations: list[str]) -> None:
        """The asyncio loop of this process: bench.client sockets, a pacer per sender, ackers."""
        ctx = self.ctx
        pairs = [Pair(i, cid) for i, cid in enumerate(conversations)]
        flow = Flow(ctx, pairs)
        senders = await ramp(ctx, users[0::2], lambda i: flow.on_sender_frame(pairs[i]), what="senders")
        receivers = await ramp(ctx, users[1::2], lambda i: flow.on_receiver_frame(pairs[i]), what="receivers")
        ackers = []
        for pair, sender, receiver in zip(pairs, senders.sockets, receivers.sockets, strict=False):
            pair.sender, pair.receiver = sender, receiver
            if receiver is not None:
                pair.acker, task = Acker.start(receiver)
                ackers.append(task)
        lag = LoopLag()
        async with self.sampler.running(), lag.running():
            more = True
            while more:
                lag_mark = len(lag.lags)
                step = await flow.run_step(self.rates[len(self.steps)])
                more = self.finish(step, lag.lags[lag_mark:])
                if more:
                    await asyncio.sleep(PAUSE_BETWEEN_STEPS_S)
        for task in ackers:
            task.cancel()
        self.result.errors += (
            senders.errors + receivers.errors + close_codes(senders.sockets) + close_codes(receivers.sockets)
        )
        await close_all([*senders.sockets, *receivers.sockets])

    async def go(self, program: Path, pairs: list[loadgen.PairJob]) -> None:
        """The Go load generator: one job for the rates asked for, then one per step find-max adds;
        its CPU counts as the load tool's."""
        ctx, options = self.ctx, self.ctx.options
        latest: dict[str, Any] = {}

        def status() -> str:
            return go_status(latest, len(pairs))

        async with self.sampler.running(), ctx.progress.ticking(status):
            batch = list(self.rates)
            while batch:
                the_job = loadgen_job(options, ctx.target.ws_url, pairs, batch, tag=secrets.token_hex(4))
                latest.clear()
                try:
                    outcome = await loadgen.run(
                        program, the_job, on_start=self.sampler.tool_pids.append, on_progress=latest.update
                    )
                except loadgen.Failed as exc:
                    self.result.errors["loadgen failed"] += 1
                    self.result.notes.append(str(exc))
                    return
                self.result.errors += Counter(outcome.get("errors") or {})
                more = False
                for raw in outcome["steps"]:
                    step, lag = step_of(raw)
                    more = self.finish(step, lag)
                batch = self.rates[len(self.steps) :] if more else []
                if batch:
                    await asyncio.sleep(PAUSE_BETWEEN_STEPS_S)


def loadgen_job(
    options: Options, ws_url: str, pairs: list[loadgen.PairJob], rates: list[float], *, tag: str
) -> dict[str, Any]:
    """The Go load generator's job for ``rates``: the scenario's parameters, the pairs' tokens; ``tag``
    makes the client_msg_ids of this job its own (the server deduplicates on them)."""
    return loadgen.job(
        ws_url=ws_url,
        pairs=pairs,
        rates=rates,
        tag=tag,
        warmup_s=options.warmup_s,
        duration_s=options.duration_s,
        drain_s=options.drain_s,
        pause_s=PAUSE_BETWEEN_STEPS_S,
        text_size=options.text_size,
        max_inflight=options.max_inflight,
        ramp_rate=options.ramp_rate,
        handshakes=options.handshakes,
        ping_every_s=options.ping_every_s,
    )


def step_of(raw: dict[str, Any]) -> tuple[Step, list[float]]:
    """A step of the Go load generator's result as the Python loop's ``Step``, and its timer lag (s)."""
    wall = float(raw["wall_start"])
    window = raw["window"]
    step = Step(float(raw["rate"]), wall, (float(window[0]), float(window[1])))
    step.sent_total = int(raw["sent_total"])
    step.sent_in_window = int(raw["sent_in_window"])
    step.acked_in_window = int(raw["acked_in_window"])
    step.samples = [
        (wall + (sent + latency) / 1e6, latency / 1e6, wall + sent / 1e6)
        for sent, latency in zip(raw["sent_us"] or [], raw["latency_us"] or [], strict=True)
    ]
    step.ack_rtts = [us / 1e6 for us in raw["ack_rtt_us"] or []]
    step.duplicates = int(raw["duplicates"])
    step.throttled = int(raw["throttled"])
    step.skipped = int(raw["skipped"])
    step.errors = Counter({str(k): int(v) for k, v in (raw["errors"] or {}).items()})
    return step, [us / 1e6 for us in raw["lag_us"] or []]


def go_status(latest: dict[str, Any], pairs: int) -> str:
    """The progress line of the Python loop, from the Go load generator's last progress report."""
    if "rate" not in latest:
        return f"throughput: the Go load generator opens {2 * pairs} sockets"
    p99 = latest.get("recent_p99_ms")
    return (
        f"throughput @ {latest['rate']:,.0f}/s {latest.get('phase', '')} "
        f"{latest.get('elapsed', 0):.0f}/{latest.get('total', 0):.0f}s: "
        f"sent {latest.get('sent', 0):,}, received {latest.get('received', 0):,}, recent P99 "
        f"{'-' if p99 is None else f'{p99:.0f} ms'}, errors {latest.get('errors', 0)} (go)"
    )


def _shift(reading: Reading, step: Step) -> Reading:
    """Sampler readings carry monotonic times; steps use wall time: move readings onto the wall clock."""
    offset = time.time() - time.monotonic()
    return Reading(reading.at + offset, reading.rss_kib, reading.cpu_s, reading.own_cpu_s)


def _line(summary: dict[str, Any]) -> str:
    latency = summary["latency_ms"]
    p99 = "-" if latency["p99"] is None else f"{latency['p99']:.1f} ms"
    return (
        f"throughput @ {summary['target_rate']:,.0f}/s: offered {summary['offered']:,.0f}/s, "
        f"delivered {summary['delivered']:,.0f}/s, P99 {p99}, unacknowledged {summary['unacknowledged']}, "
        f"undelivered {summary['undelivered']}, "
        f"{'sustainable' if summary['sustainable'] else 'NOT sustainable'}"
    )


def _figures(result: Result, steps: list[dict[str, Any]], slo_p99_ms: float, *, several: bool) -> None:
    for summary in steps:
        at = f" @ {summary['target_rate']:,.0f}/s" if several else ""
        key = f"_{summary['target_rate']:.0f}" if several else ""
        latency = Summary(**summary["latency_ms"])
        result.add(f"offered{key}", f"offered{at}", summary["offered"], "msg/s")
        result.add(f"delivered{key}", f"delivered{at}", summary["delivered"], "msg/s", ">= 5,000 msg/s (make up)")
        if several:
            result.add(f"latency{key}_p99_ms", f"latency P99{at}", latency.p99, "ms", f"< {slo_p99_ms:.0f} ms")
        else:
            result.add_latency("latency", "latency", latency, goal_p99=f"< {slo_p99_ms:.0f} ms")
            result.add("send_ack_p99_ms", "send_ack round trip P99", summary["send_ack_ms"]["p99"], "ms")
        result.add(f"unacknowledged{key}", f"sends without send_ack after drain{at}", summary["unacknowledged"])
        result.add(f"undelivered{key}", f"acknowledged but undelivered{at}", summary["undelivered"])
        for name, share in sorted(summary["cpu_percent"].items()):
            if share >= 5.0:
                result.add(f"cpu_{name}{key}", f"CPU {name}{at}", share, "%")
        result.add(
            f"server_cpu_us_per_msg{key}",
            f"server CPU per delivered message{at}",
            summary["server_cpu_us_per_msg"],
            "us",
            "every server process, databases and brokers included",
        )
        result.add(
            f"tool_cpu_of_server{key}",
            f"load tool CPU / server CPU{at}",
            summary["tool_cpu_of_server"],
            "",
            "<= 0.25 (else the tool may be the limit)",
        )
        result.add(f"client_lag_p99_ms{key}", f"load tool loop lag P99{at}", summary["client_loop_lag_ms"]["p99"], "ms")
    if several:
        passing = [s["target_rate"] for s in steps if s["sustainable"]]
        result.add(
            "max_sustainable_rate",
            f"max sustainable rate (P99 < {slo_p99_ms:.0f} ms, all delivered)",
            max(passing) if passing else None,
            "msg/s",
            "report it",
        )
