"""``python -m bench.internal_call`` (its ``run``, in the test's loop) runs and prints a figure for each way of
serving the call."""

from __future__ import annotations

import re

import pytest

from bench import internal_call


async def test_it_prints_the_cpu_per_call_of_both_apps(capsys: pytest.CaptureFixture[str]) -> None:
    await internal_call.run(calls=50, repeat=1)
    lines = capsys.readouterr().out.splitlines()
    figures = {line[:28].strip(): float(line[28:]) for line in lines[1:]}
    assert set(figures) == {"contract.serve", "FastAPI route + dependency"}
    assert all(figure > 0 for figure in figures.values())
    assert re.match(r"served as\s+CPU us/call", lines[0])
