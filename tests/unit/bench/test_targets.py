"""The targets' table: met, missed, and not measured when the run did not produce the figure."""

from __future__ import annotations

from bench.report import Result
from bench.targets import GROUP_MEMBERS, verdicts


def run(scenario: str, kind: str, **figures: float) -> Result:
    result = Result(scenario, kind, {"target_kind": kind})
    for key, value in figures.items():
        result.add(key, key, value)
    return result


def by_figure(rows: list[list[str]], kind: str) -> dict[str, tuple[str, str]]:
    return {what: (measured, verdict) for target, what, _, measured, verdict in rows if target == kind}


def test_each_target_of_the_kind_measured_is_judged_against_its_own_bound() -> None:
    dev = [
        run(
            "throughput",
            "dev",
            delivered_20=20,
            delivered_1000=1_000,
            delivered_1500=1_480,
            latency_20_p99_ms=4.0,
            latency_1000_p99_ms=50.0,
            server_cpu_us_per_msg_1000=400,
        ),
        run("fanout", "dev", members=GROUP_MEMBERS, to_last_max_ms=900),
    ]
    rows = by_figure(verdicts({"dev": dev}), "dev")
    assert rows["delivered 1:1, best step"] == ("1,480 msg/s", "MISSED")
    assert rows["P99 at 20 msg/s"][1] == "met"
    assert rows["P99 at 1,000 msg/s"][1] == "MISSED", "P99 must stay under 50 ms, not reach it"
    assert rows["server CPU per message at 1,000 msg/s"][1] == "met", "400 us is within <= 400 us"
    assert rows["10,000-member group: to the last member"] == ("900 ms", "met")
    assert not by_figure(verdicts({"dev": dev}), "up"), "make up's targets are not judged on a dev run"


def test_a_figure_the_run_did_not_produce_is_not_measured_never_met() -> None:
    up = [
        run("throughput", "up", delivered_200=200, latency_200_p99_ms=1.0),
        run("fanout", "up", members=100, to_last_max_ms=10),
    ]
    rows = by_figure(verdicts({"up": up}), "up")
    assert rows["P99 at 500 msg/s"] == ("-", "not measured")
    assert rows["server CPU per message at 500 msg/s"] == ("-", "not measured")
    assert rows["10,000-member group: to the last member"] == ("-", "not measured"), "a 100-member group is not it"


def test_a_run_of_one_rate_is_judged_at_that_rate_only() -> None:
    one = run("throughput", "dev", delivered=20, latency_p99_ms=4.0, server_cpu_us_per_msg=900)
    one.steps = [{"target_rate": 20}]
    rows = by_figure(verdicts({"dev": [one]}), "dev")
    assert rows["P99 at 20 msg/s"] == ("4.00 ms", "met")
    assert rows["P99 at 1,000 msg/s"] == ("-", "not measured"), "a 20 msg/s run says nothing of 1,000 msg/s"
    assert rows["server CPU per message at 1,000 msg/s"] == ("-", "not measured")
