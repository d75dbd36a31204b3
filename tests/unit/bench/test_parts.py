import json
import os
from collections import Counter
from pathlib import Path

import pytest

from bench.cli import PRIME_S, options_from, parser
from bench.machine import parse_cpu_ticks, parse_vmrss_kib
from bench.payload import sent_at, stamped
from bench.report import Result, summary_table
from bench.scenarios import Options
from bench.scenarios.throughput import cost_per_message
from bench.target import from_up, infra_pids
from bench.users import BenchUser, UserCache, username


def test_usernames_are_deterministic_valid_and_distinct_per_pool() -> None:
    assert username("u", 42) == "bench-u-000042"
    assert username("s", 42) != username("u", 42)
    assert 3 <= len(username("u", 999_999)) <= 32
    with pytest.raises(ValueError, match="bad pool"):
        username("u-1", 1)


def test_user_cache_survives_a_round_trip_through_its_file(tmp_path: Path) -> None:
    path = tmp_path / ".users-test.json"
    cache = UserCache(path)
    cache.users["bench-u-000000"] = BenchUser("bench-u-000000", "id1", "access", "refresh", "bench", 123.0)
    cache.conversations["fanout-100"] = "c1"
    cache.save()
    loaded = UserCache.load(path)
    assert loaded.users == cache.users
    assert loaded.conversations == {"fanout-100": "c1"}
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_missing_or_broken_cache_is_an_empty_one(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert UserCache.load(broken).users == {}
    assert UserCache.load(tmp_path / "absent.json").users == {}


def test_a_stamped_text_carries_its_send_time_and_is_padded() -> None:
    text = stamped(100, now_ns=1_700_000_000_123_456_789)
    assert len(text) == 100
    assert sent_at(text) == pytest.approx(1_700_000_000.123456789)
    assert sent_at("hello") is None
    assert sent_at(None) is None
    assert sent_at("bench notanumber") is None


def test_vmrss_and_cpu_ticks_are_read_from_proc_texts() -> None:
    status = "Name:\tpython\nVmPeak:\t  999 kB\nVmRSS:\t  123456 kB\nThreads:\t4\n"
    assert parse_vmrss_kib(status) == 123456
    stat = "4242 (python -m x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100 0 0"
    assert parse_cpu_ticks(stat) == 300


def test_options_refuse_what_is_beyond_the_tools_bounds() -> None:
    Options.short().check()
    with pytest.raises(ValueError, match="connections"):
        Options(connections=50_000).check()
    with pytest.raises(ValueError, match="rate"):
        Options(rate=0).check()
    with pytest.raises(ValueError, match="duration_s"):
        Options(duration_s=10_000).check()


def test_a_run_of_every_scenario_primes_each_target_first_and_a_single_scenario_only_when_asked() -> None:
    def prime_s(*argv: str) -> float:
        return options_from(parser().parse_args(list(argv))).prime_s

    assert prime_s("all", "--short", "--dev", "--up") == PRIME_S > 0  # make bench
    assert prime_s("all", "--prime", "0") == 0
    assert prime_s("throughput", "--dev") == 0
    assert prime_s("throughput", "--prime", "5") == 5
    with pytest.raises(ValueError, match="prime_s"):
        prime_s("all", "--prime", "-1")


def test_summary_table_has_a_column_per_target_and_counts_errors() -> None:
    dev = Result("sync", "dev", {})
    dev.add("sync_ms", "sync time", 12.5, "ms", "report it")
    up = Result("sync", "up", {})
    up.add("sync_ms", "sync time", 30.0, "ms", "report it")
    up.errors = Counter({"send: unavailable": 2})
    lines = summary_table({"dev": [dev], "up": [up]}).splitlines()
    assert lines[0].split() == ["scenario", "figure", "dev", "up", "goal", "(issue", "6)"]
    assert "12.5 ms" in lines[2] and "30.0 ms" in lines[2]
    assert "2 (send: unavailable 2)" in lines[3]


def test_cost_per_message_counts_every_server_process_and_not_the_tool() -> None:
    # Two processes at 30% and 20% of a core delivering 500 msg/s: 1 ms of server CPU per message.
    cost = cost_per_message({"message": 30.0, "mariadb": 20.0, "bench": 10.0}, 500.0)

    assert cost["server_cpu_percent"] == 50.0
    assert cost["server_cpu_us_per_msg"] == 1000.0
    assert cost["tool_cpu_of_server"] == 0.2


def test_cost_per_message_is_unknown_without_readings_or_deliveries() -> None:
    assert cost_per_message({}, 100.0)["server_cpu_us_per_msg"] is None
    assert cost_per_message({"server": 10.0, "bench": 1.0}, 0.0)["server_cpu_us_per_msg"] is None


def test_infra_pids_are_the_running_servers_of_infra_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = {
        "services": {
            "redis": {"pid": os.getpid(), "running": True},
            "kafka": {"pid": os.getpid(), "running": False},
            "minio": {"running": True},
        }
    }
    (tmp_path / "infra.json").write_text(json.dumps(state))
    monkeypatch.setenv("COURIER_INFRA_DIR", str(tmp_path))

    assert infra_pids() == {"redis": os.getpid()}


def test_make_ups_user_tokens_are_kept_with_the_infra_every_checkout_shares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COURIER_INFRA_DIR", str(tmp_path))
    state = {"gateway": "http://127.0.0.1:8080", "processes": [{"name": "delivery-0", "pid": os.getpid()}]}

    target = from_up(state)

    # Not this checkout's bench/results: another checkout's logins of the same users would revoke them.
    assert target.users_dir == tmp_path
