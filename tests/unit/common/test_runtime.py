"""What a Courier server settles before it serves: its open-files limit lifted, and its garbage collector
with start-up frozen and young collections spaced out.

Each case runs in a child interpreter: the limit, freezing and the thresholds are process-wide, and the test
process must keep Python's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.runtime import YOUNG_THRESHOLD
from services.common.settings import Settings

# What the server process looks like at the moment it would start serving (uvicorn.run replaced).
SERVE_AND_REPORT = """
import gc, json, resource, sys
import uvicorn
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # the usual soft limit of a login shell
seen = {"hard": hard}
def run(app, **kwargs):
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    seen.update(threshold=gc.get_threshold(), frozen=gc.get_freeze_count(), open_files=open_files)
uvicorn.run = run
from services.cli import main
main(["dev", "--port", "0", "--data-dir", sys.argv[1], "--log-level", "warning"])
print(json.dumps(seen))
"""


def serve(data_dir: Path, **env: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", SERVE_AND_REPORT, str(data_dir)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_courier_dev_serves_with_start_up_frozen_and_young_collections_spaced_out(tmp_path: Path) -> None:
    seen = serve(tmp_path)
    assert seen["threshold"] == [YOUNG_THRESHOLD, 10, 10]  # the older generations keep Python's own
    # What start-up built (the modules and the whole object graph) is out of every collection.
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 50_000


def test_courier_dev_serves_with_as_many_open_files_as_the_hard_limit_allows(tmp_path: Path) -> None:
    seen = serve(tmp_path)
    assert seen["open_files"] == seen["hard"]


def test_the_young_threshold_is_a_setting(tmp_path: Path) -> None:
    seen = serve(tmp_path, COURIER_GC_YOUNG_THRESHOLD="4321")
    assert seen["threshold"] == [4321, 10, 10]


def test_a_young_threshold_that_would_collect_all_the_time_is_refused() -> None:
    with pytest.raises(ValidationError, match="gc_young_threshold"):
        Settings(gc_young_threshold=10)
