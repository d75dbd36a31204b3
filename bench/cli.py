"""``courier bench <scenario>`` / ``python -m bench <scenario>``: run scenarios, print one table,
write ``bench/results/<scenario>.json`` (and a PNG plot when matplotlib is installed)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import websockets

from bench.client import Http, HttpError
from bench.machine import environment, reference_cpu_ms
from bench.progress import Progress
from bench.report import Result, notes_of, plot, summary_table, write_json
from bench.scenarios import Context, Options, connections, fanout, sync, throughput
from bench.table import duration
from bench.target import REPO, Target, TargetError, from_up, from_url, spawned_dev, spawned_up
from bench.targets import targets_table
from bench.users import Pool, UserCache
from services.common.runtime import tune_collector

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_TARGET = "http://127.0.0.1:8080"
ORDER = ("connections", "throughput", "fanout", "sync")
SCENARIOS: dict[str, Callable[[Context], Awaitable[Result]]] = {
    "connections": connections.run,
    "throughput": throughput.run,
    "fanout": fanout.run,
    "sync": sync.run,
}
# Before its first scenario a target carries this many messages a second for PRIME_S (``all``; else ``--prime``), not
# measured: a server started for the run (Kafka's JVM above all) is otherwise measured while it warms up, in the first
# step of the first scenario. On make up with its infra servers started cold, the 20 msg/s step measured a P99 of
# 53.7 ms with Kafka at 16.5% of a core; after 10 s at 200 msg/s, 16.9 ms and 9.7%; after 20 s at 500 msg/s, 11.8 ms
# and 4.6%; with Kafka long warm, 12.0 ms and 3.6%.
PRIME_RATE = 500.0
PRIME_S = 20.0
# What stops a scenario (the target refused or went away): reported in its result, the run goes on.
SCENARIO_FAILURES = (HttpError, ConnectionError, OSError, TimeoutError, websockets.WebSocketException)
# Command-line flag -> Options field (every flag defaults to None: "keep the scenario default").
FLAGS: dict[str, tuple[type, str]] = {
    "connections": (int, "connections to open (connections scenario)"),
    "devices_per_user": (int, "sockets per user, each its own device login (connections)"),
    "ramp_rate": (float, "new connections per second"),
    "handshakes": (int, "handshakes in flight at once"),
    "hold_s": (float, "seconds to hold the connections"),
    "pairs": (int, "sender/receiver pairs (throughput)"),
    "rate": (float, "total messages per second offered (throughput)"),
    "duration_s": (float, "seconds measured per rate (throughput)"),
    "warmup_s": (float, "seconds sent before measuring (throughput)"),
    "drain_s": (float, "seconds to wait for late messages after sending"),
    "text_size": (int, "characters per message text"),
    "max_inflight": (int, "unacknowledged sends allowed per sender"),
    "slo_p99_ms": (float, "P99 latency a sustainable rate must stay under"),
    "members": (int, "group members (fanout)"),
    "group_messages": (int, "messages sent to the group (fanout)"),
    "group_timeout_s": (float, "seconds to wait for every member to get a message"),
    "backlog": (int, "messages stored while the device is away (sync)"),
    "backlog_window": (int, "sends in flight while storing the backlog (sync)"),
    "user_parallelism": (int, "registrations/logins in flight while creating users"),
    "pool": (str, "name of the user pool (bench-<pool>-000001...); letters and digits"),
    "prime_s": (float, f"seconds of messages at {PRIME_RATE:.0f} msg/s through a target before it is measured"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="courier bench",
        description="Load Courier over its public protocol (loopback only) and measure it.",
        epilog="Results: bench/results/<scenario>.json (+ .png with matplotlib). See bench/README.md.",
    )
    p.add_argument("scenario", choices=[*ORDER, "all", "prepare"], help="what to run; prepare only creates users")
    p.add_argument("--target", help=f"URL of a running Courier (default {DEFAULT_TARGET})")
    p.add_argument("--dev", action="store_true", help="start a courier dev of our own (generous rate limits)")
    p.add_argument(
        "--dev-data-dir", type=Path, default=REPO / ".courier" / "bench-dev", help="its data (users are kept)"
    )
    p.add_argument(
        "--up", action="store_true", help="also run against make up (the running one, else one started for the run)"
    )
    p.add_argument("--pid", type=int, action="append", default=[], help="pid holding the sockets (repeatable)")
    p.add_argument("--short", action="store_true", help="small, quick parameters (make bench)")
    p.add_argument("--rates", help="comma-separated rates to step through (throughput)")
    p.add_argument("--find-max", action="store_true", help="raise the rate by 1.5x until the SLO breaks")
    p.add_argument(
        "--loadgen",
        choices=["go", "python"],
        default="go",
        help="throughput's hot loop: go (bench/loadgen, built on first use; python when go is missing) or python",
    )
    p.add_argument("--deflate", action="store_true", help="offer permessage-deflate, as browsers do")
    for name, (kind, text) in FLAGS.items():
        p.add_argument(f"--{name.removesuffix('_s').replace('_', '-')}", dest=name, type=kind, help=text)
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--name", help="file name stem of the results (default: the scenario)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG even if matplotlib is installed")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def options_from(args: argparse.Namespace) -> Options:
    options = Options.short() if args.short else Options()
    changes: dict[str, object] = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    if args.rates:
        changes["rates"] = [float(r) for r in args.rates.split(",") if r.strip()]
    changes["find_max"] = args.find_max
    changes["deflate"] = args.deflate
    changes["loadgen"] = args.loadgen
    if args.prime_s is None and args.scenario == "all":
        changes["prime_s"] = PRIME_S
    options = dataclasses.replace(options, **changes)  # type: ignore[arg-type]
    options.check()
    return options


def _stem(args: argparse.Namespace, scenario: str, target: Target, several: bool) -> str:
    stem = args.name if args.name and args.scenario != "all" else scenario
    return f"{stem}-{target.name}" if several else stem


async def run_target(
    target: Target, args: argparse.Namespace, options: Options, progress: Progress, *, several: bool
) -> list[Result]:
    http = Http(target.base_url, parallelism=max(16, options.user_parallelism))
    cache = UserCache.load((target.users_dir or args.results_dir) / f".users-{target.cache_key}.json")
    pool = Pool(http, cache, parallelism=options.user_parallelism, progress=progress)
    ctx = Context(target, http, pool, progress, options)
    results: list[Result] = []
    env = environment(REPO)
    try:
        if args.scenario == "prepare":
            per_user = options.devices_per_user
            count = max(-(-options.connections // per_user), 2 * options.pairs, options.members)
            began = time.monotonic()
            await pool.users(options.pool, count, devices=per_user)
            await pool.users("s", 2)
            progress.note(
                f"{count:,} users ready on {target.name} in {duration(time.monotonic() - began)}: {dict(pool.outcomes)}"
            )
            return results
        if options.prime_s:
            await prime(ctx)
        for name in ORDER if args.scenario == "all" else (args.scenario,):
            progress.note(f"== {name} against {target.name} ({target.base_url})")
            try:
                result = await SCENARIOS[name](ctx)
            except SCENARIO_FAILURES as exc:
                result = Result(name, target.name, dataclasses.asdict(options))
                result.errors[f"scenario failed: {exc!r}"[:160]] += 1
                result.notes.append(f"the scenario stopped: {exc!r}")
            result.parameters["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
            result.parameters["target_kind"] = target.kind
            result.parameters["target_url"] = target.base_url
            result.parameters["primed"] = f"{options.prime_s:g} s at {PRIME_RATE:g} msg/s" if options.prime_s else None
            results.append(result)
            stem = _stem(args, name, target, several)
            path = write_json(result, env, args.results_dir / f"{stem}.json")
            png = None if args.no_plot else plot(result, args.results_dir / f"{stem}.png")
            progress.note(
                f"   wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}"
                + (" and its plot" if png else "")
            )
            await asyncio.sleep(1.0)  # let the server settle between scenarios
    finally:
        await http.close()
    return results


async def prime(ctx: Context) -> None:
    """Messages through the target at PRIME_RATE for ``prime_s``, over the throughput scenario's pairs; nothing kept."""
    options = dataclasses.replace(
        ctx.options, rates=[PRIME_RATE], find_max=False, warmup_s=0.0, duration_s=ctx.options.prime_s
    )
    ctx.progress.note(f"== priming {ctx.target.name}: {options.prime_s:g} s at {PRIME_RATE:g} msg/s, not measured")
    try:
        primed = await throughput.run(dataclasses.replace(ctx, options=options))
    except SCENARIO_FAILURES as exc:
        ctx.progress.note(f"   priming stopped: {exc!r}")
        return
    for step in primed.steps:
        p99 = step["latency_ms"]["p99"]
        ctx.progress.note(f"   primed: {step['delivered']:,.0f} msg/s delivered, P99 {p99:.1f} ms")


async def _run(args: argparse.Namespace, options: Options, progress: Progress) -> dict[str, list[Result]]:
    explicit = [from_url(args.target, pids=args.pid)] if args.target else []
    wants = int(args.dev) + len(explicit) + int(args.up)
    if wants == 0:
        explicit = [from_url(DEFAULT_TARGET, pids=args.pid)]
        wants = 1
    several = wants > 1
    results: dict[str, list[Result]] = {}
    with contextlib.ExitStack() as stack:
        targets: list[Target] = []
        if args.dev:
            progress.note(f"starting courier dev (data in {args.dev_data_dir})")
            targets.append(stack.enter_context(spawned_dev(args.dev_data_dir)))
        targets += explicit
        if args.up:
            try:
                targets.append(from_up())
            except TargetError as exc:
                progress.note(f"{exc}: starting one (generous limits), stopped at the end")
                targets.append(stack.enter_context(spawned_up()))
        for target in targets:
            results[target.name] = await run_target(target, args, options, progress, several=several)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"courier bench: {exc}", file=sys.stderr)
        return 2
    progress = Progress(quiet=args.quiet)
    # The tool's 10,000 client sockets are a heap of millions of objects, like a server's: its collector is
    # set as the servers' is, or full collections pause the receivers for a second (docs/performance.md 15).
    tune_collector()
    began = time.monotonic()
    try:
        results = asyncio.run(_run(args, options, progress))
    except TargetError as exc:
        print(f"courier bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("courier bench: interrupted", file=sys.stderr)
        return 130
    if args.scenario == "prepare":
        return 0
    print()
    print(summary_table(results))
    verdicts = targets_table(results)
    if verdicts:
        print(f"\n{verdicts}")
        print(
            f"\nmachine: the reference work took {reference_cpu_ms():g} ms of CPU after this run (lower is faster;"
            " read CPU figures from another day against it: bench/README.md)"
        )
    for line in notes_of(results):
        print(f"note: {line}")
    print(f"\n{'short ' if args.short else ''}run took {duration(time.monotonic() - began)}")
    failed = any(r.figures == [] for runs in results.values() for r in runs)
    return 1 if failed else 0
