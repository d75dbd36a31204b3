"""The machine's reference work (bench/machine.py): a positive CPU figure, recorded with every result."""

from __future__ import annotations

from pathlib import Path

from bench.machine import environment, reference_cpu_ms


def test_the_reference_work_takes_some_cpu_and_is_recorded_in_the_environment() -> None:
    taken = reference_cpu_ms()
    assert 1.0 < taken < 60_000.0
    recorded = environment(Path(__file__).parent)["reference_cpu_ms"]
    assert isinstance(recorded, float)
    assert recorded > 1.0
