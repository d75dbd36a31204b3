"""The Go load generator of the throughput scenario: its job and result on the Python side, its build
cache, and one real run against a ``courier dev`` (Go is needed: CI machines have it)."""

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import loadgen
from bench.cli import options_from, parser
from bench.client import Http
from bench.sampling import Reading, Sampler, cpu_percent
from bench.scenarios import Options
from bench.scenarios.throughput import loadgen_job, step_of, summarize
from bench.target import CHEAP_PASSWORDS, GENEROUS_LIMITS
from tests.support.server import run_server

PAIRS = [loadgen.PairJob("s-token", "r-token", "c1"), loadgen.PairJob("s2", "r2", "c2")]


def go() -> str:
    found = shutil.which("go")
    assert found, "the Go toolchain (`go`) is not on PATH: install Go 1.22+ to build bench/loadgen"
    return found


def test_the_job_carries_the_scenario_parameters_and_every_pair() -> None:
    options = Options(warmup_s=3.0, duration_s=10.0, drain_s=4.0, text_size=120, max_inflight=50, ramp_rate=300.0)
    job = loadgen_job(options, "ws://127.0.0.1:8291/v1/ws", PAIRS, [200.0, 500.0], tag="ab12")
    assert job["ws_url"] == "ws://127.0.0.1:8291/v1/ws"
    assert job["rates"] == [200.0, 500.0]
    assert job["pairs"] == [
        {"sender_token": "s-token", "receiver_token": "r-token", "conversation_id": "c1"},
        {"sender_token": "s2", "receiver_token": "r2", "conversation_id": "c2"},
    ]
    assert (job["warmup_s"], job["duration_s"], job["drain_s"]) == (3.0, 10.0, 4.0)
    assert (job["text_size"], job["max_inflight"], job["ramp_rate"], job["tag"]) == (120, 50, 300.0, "ab12")
    assert job["handshakes"] == options.handshakes and job["ping_every_s"] == options.ping_every_s
    assert job["pause_s"] > 0


def go_step() -> dict[str, Any]:
    """A step as the Go program writes it: window [101, 103) after a start at 100."""
    return {
        "rate": 2.0,
        "wall_start": 100.0,
        "window": [101.0, 103.0],
        "sent_total": 6,
        "sent_in_window": 4,
        "acked_in_window": 4,
        # sent 0.5 s (warm-up), then four in the window, one of them never arrived
        "sent_us": [500_000, 1_000_000, 1_500_000, 2_000_000],
        "latency_us": [10_000, 20_000, 30_000, 40_000],
        "ack_rtt_us": [5_000, 6_000, 7_000, 8_000, 9_000],
        "duplicates": 1,
        "throttled": 0,
        "skipped": 2,
        "errors": {"send: rate_limited": 1},
        "lag_us": [100, 200],
    }


def test_a_go_step_becomes_the_scenario_step_and_its_figures() -> None:
    step, lag = step_of(go_step())
    assert step.rate == 2.0 and step.window == (101.0, 103.0)
    assert step.samples[0] == pytest.approx((100.51, 0.01, 100.5))
    assert [round(s[1], 3) for s in step.samples] == [0.01, 0.02, 0.03, 0.04]
    assert lag == pytest.approx([0.0001, 0.0002])
    readings = [Reading(100.0, {}, {"dev": 10.0}, 1.0), Reading(104.0, {}, {"dev": 12.0}, 1.4)]
    summary = summarize(step, 2.0, readings, lag)
    assert summary["sent_in_window"] == 4 and summary["acked_in_window"] == 4
    assert summary["received_of_window"] == 3  # sent in the window and arrived
    assert summary["undelivered"] == 1 and summary["unacknowledged"] == 0
    assert summary["offered"] == 2.0
    assert summary["delivered"] == 1.5  # three arrived inside the window
    assert summary["latency_ms"]["p50"] == pytest.approx(30.0)
    assert summary["latency_ms"]["max"] == pytest.approx(40.0)
    assert summary["send_ack_ms"]["count"] == 5
    assert summary["duplicates"] == 1 and summary["skipped"] == 2
    assert summary["errors"] == {"send: rate_limited": 1}
    assert summary["client_loop_lag_ms"]["max"] == pytest.approx(0.2)
    assert summary["cpu_percent"] == {"dev": 50.0, "bench": 10.0}
    assert summary["tool_cpu_of_server"] == pytest.approx(0.2)


def test_an_empty_go_step_has_no_latency() -> None:
    raw = go_step() | {"sent_us": None, "latency_us": None, "ack_rtt_us": None, "lag_us": None, "errors": None}
    step, lag = step_of(raw)
    assert step.samples == [] and lag == [] and not step.errors
    assert summarize(step, 2.0, [], lag)["latency_ms"]["p99"] is None


def copy_sources(to: Path) -> Path:
    to.mkdir()
    for path in loadgen.sources():
        shutil.copy(path, to / path.name)
    return to


def test_the_build_cache_key_follows_the_go_sources_only(tmp_path: Path) -> None:
    tree = copy_sources(tmp_path / "src")
    first = loadgen.cache_key(tree)
    assert first == loadgen.cache_key(tree) == loadgen.cache_key(loadgen.SOURCES)
    (tree / "main_test.go").write_text("package main\n")
    assert loadgen.cache_key(tree) == first  # tests are not in the binary
    (tree / "README").write_text("notes")
    assert loadgen.cache_key(tree) == first
    main = tree / "main.go"
    main.write_text(main.read_text() + "\n// changed\n")
    second = loadgen.cache_key(tree)
    assert second != first
    (tree / "go.sum").write_text("example.org/x v1.0.0 h1:AAAA=\n")
    assert loadgen.cache_key(tree) not in (first, second)


def test_a_cached_binary_is_reused_without_go(tmp_path: Path) -> None:
    cached = tmp_path / loadgen.cache_key() / "loadgen"
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    assert loadgen.binary(root=tmp_path, go="/nonexistent/go") == cached


def test_without_go_the_reason_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(loadgen.Unavailable, match="`go` is not on PATH"):
        loadgen.binary(root=tmp_path)


def test_the_cache_lives_under_the_courier_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURIER_CACHE_DIR", str(tmp_path))
    assert loadgen.cache_root() == tmp_path / "loadgen"
    monkeypatch.delenv("COURIER_CACHE_DIR")
    assert loadgen.cache_root() == Path.home() / ".cache" / "courier" / "loadgen"


def test_the_command_line_picks_the_load_loop() -> None:
    assert options_from(parser().parse_args(["throughput"])).loadgen == "go"
    assert options_from(parser().parse_args(["throughput", "--loadgen", "python"])).loadgen == "python"
    with pytest.raises(SystemExit):
        parser().parse_args(["throughput", "--loadgen", "rust"])


def test_a_helper_process_cpu_counts_as_the_load_tool_and_never_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    seconds: dict[int, float | None] = {41: 2.0}
    monkeypatch.setattr("bench.sampling.cpu_seconds", lambda pid: seconds.get(pid))
    monkeypatch.setattr("bench.sampling.own_cpu_seconds", lambda: 1.0)
    sampler = Sampler({}, tool_pids=[41])
    first = sampler.read()
    seconds[41] = 3.5
    second = sampler.read()
    seconds[41] = None  # exited and reaped: its last reading stays
    third = sampler.read()
    assert (first.own_cpu_s, second.own_cpu_s, third.own_cpu_s) == (3.0, 4.5, 4.5)
    assert cpu_percent(first, second)["bench"] == pytest.approx(100.0 * 1.5 / (second.at - first.at))


def test_the_go_unit_tests_pass() -> None:
    done = subprocess.run(
        [go(), "test", "./..."], cwd=loadgen.SOURCES, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def two_users(base_url: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    http = Http(base_url)
    try:
        users = []
        for name in ("lg-sender", "lg-receiver"):
            await http.register(name, "loadgen-password-1")
            users.append(await http.login(name, "loadgen-password-1", f"{name}-device"))
        conversation = await http.direct(users[0]["access_token"], users[1]["user_id"])
    finally:
        await http.close()
    return users[0], users[1], conversation


async def test_the_go_load_generator_drives_a_real_server(tmp_path: Path) -> None:
    # Async, not asyncio.run: that would replace (and drop unclosed) the event loop an earlier test left set.
    program = loadgen.binary(go=go())
    with run_server(tmp_path / "dev", {**GENEROUS_LIMITS, **CHEAP_PASSWORDS}) as server:
        sender, receiver, conversation = await two_users(server.base_url)
        pairs = [
            loadgen.PairJob(sender["access_token"], receiver["access_token"], conversation),
            loadgen.PairJob("not-a-token", "not-a-token-either", conversation),  # the server refuses these
        ]
        options = Options(warmup_s=0.2, duration_s=1.0, drain_s=10.0, text_size=64)
        job = loadgen_job(options, server.ws_url, pairs, [40.0], tag="test")
        sampler = Sampler({})
        progress: list[dict[str, Any]] = []

        def on_progress(status: dict[str, Any]) -> None:
            progress.append(status)
            sampler.read()  # the child's CPU, read from /proc while it runs

        result = await loadgen.run(program, job, on_start=sampler.tool_pids.append, on_progress=on_progress)
    assert result["senders"] == 2 and result["receivers"] == 2  # accepted, then closed with 4001
    assert any(kind.startswith("closed 4001") for kind in result["errors"]), result["errors"]
    [raw] = result["steps"]
    step, lag = step_of(raw)
    summary = summarize(step, options.duration_s, [], lag)
    # the good pair sends 20/s: about 20 in the window, every one acknowledged and delivered
    assert 15 <= summary["sent_in_window"] <= 25, summary
    assert summary["unacknowledged"] == 0 and summary["undelivered"] == 0, summary
    assert summary["received_of_window"] == summary["sent_in_window"]
    assert summary["latency_ms"]["p99"] is not None and 0 < summary["latency_ms"]["p99"] < 5_000
    assert summary["send_ack_ms"]["count"] == step.sent_total
    assert summary["duplicates"] == 0
    assert summary["errors"].get("send: sender socket closed", 0) > 0  # the refused sender's share
    assert any(p.get("phase") == "measuring" for p in progress)
    assert sampler.tool_pids and sampler.tool_pids[0] in sampler.tool_cpu_s
