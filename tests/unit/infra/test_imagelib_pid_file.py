"""Starting Docker's engine after one died without its cleanup: the pid file it left is removed unless it names a live
engine, since dockerd refuses to start while the pid in its file is alive, whatever process has that pid by now."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def imagelib(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "infra" / "images"))
    return importlib.import_module("imagelib")


@pytest.fixture
def sleeper() -> Iterator[int]:
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_pid_file_naming_a_process_that_has_ended_is_removed(imagelib: ModuleType, tmp_path: Path) -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid_file = tmp_path / "docker.pid"
    pid_file.write_text(ended.stdout)
    imagelib.clear_stale_pid_file(pid_file, "dockerd")
    assert not pid_file.exists()


def test_a_pid_file_whose_pid_another_program_has_now_is_removed(
    imagelib: ModuleType, tmp_path: Path, sleeper: int
) -> None:
    pid_file = tmp_path / "docker.pid"
    pid_file.write_text(f"{sleeper}\n")
    imagelib.clear_stale_pid_file(pid_file, "dockerd")
    assert not pid_file.exists()


def test_a_pid_file_of_the_live_daemon_is_kept(imagelib: ModuleType, tmp_path: Path, sleeper: int) -> None:
    pid_file = tmp_path / "docker.pid"
    pid_file.write_text(f"{sleeper}\n")
    imagelib.clear_stale_pid_file(pid_file, "sleep")  # the daemon's program name as /proc shows it
    assert pid_file.read_text() == f"{sleeper}\n"


def test_no_pid_file_or_an_unreadable_one_is_no_error(imagelib: ModuleType, tmp_path: Path) -> None:
    imagelib.clear_stale_pid_file(tmp_path / "missing.pid", "dockerd")
    garbled = tmp_path / "garbled.pid"
    garbled.write_text("not a pid")
    imagelib.clear_stale_pid_file(garbled, "dockerd")
    assert not garbled.exists()
