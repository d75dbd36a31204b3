"""bench/machine.py: the machine's reference work (a positive CPU figure, recorded with every result) and the
CPU time of a server's whole process tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.machine import cpu_seconds, environment, reference_cpu_ms, tree_cpu_seconds


def test_the_reference_work_takes_some_cpu_and_is_recorded_in_the_environment() -> None:
    taken = reference_cpu_ms()
    assert 1.0 < taken < 60_000.0
    recorded = environment(Path(__file__).parent)["reference_cpu_ms"]
    assert isinstance(recorded, float)
    assert recorded > 1.0


# A parent that spends almost no CPU itself: one child burns CPU and is reaped, another burns CPU and stays.
_PARENT = """
import subprocess, sys
burn = "import time\\nwhile time.process_time() < 0.3: pass\\n"
subprocess.run([sys.executable, "-c", burn], check=True)
stays = subprocess.Popen([sys.executable, "-c", burn + "print('burnt', flush=True)\\nimport time\\ntime.sleep(120)"],
                         stdout=subprocess.PIPE, text=True)
assert stays.stdout.readline().strip() == "burnt"
print("ready", flush=True)
sys.stdin.read()
stays.kill()
"""


def test_a_process_counts_the_cpu_of_its_children_reaped_and_running() -> None:
    """PostgreSQL spends its CPU in a process per connection: the server's figure is its whole tree's."""
    with subprocess.Popen(
        [sys.executable, "-c", _PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as parent:
        try:
            assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
            own = cpu_seconds(parent.pid)
            tree = tree_cpu_seconds([parent.pid])[parent.pid]
        finally:
            assert parent.stdin is not None
            parent.stdin.close()  # the parent kills the child that stays, then ends
            try:
                parent.wait(timeout=60)
            except subprocess.TimeoutExpired:
                parent.kill()
    assert own is not None and tree is not None
    assert own < 0.25  # starting Python and waiting
    assert tree >= own + 0.55  # both children's 0.3 s, less a tick of rounding each
    assert tree_cpu_seconds([parent.pid]) == {parent.pid: None}
