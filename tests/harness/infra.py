"""Bring up the real backing servers (infra/courier-infra) for integration tests and return their addresses.

Import as ``tests.harness.infra`` with the repository root on sys.path; fixtures call ``ensure_infra()``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "courier-infra"
SERVICES = ("redis", "mariadb", "postgres", "kafka", "minio")


class InfraUnavailable(RuntimeError):
    """`courier-infra up` failed; the message carries the tail of its output."""


def infra_dir() -> Path:
    return Path(os.environ.get("COURIER_INFRA_DIR", "/tmp/courier-infra")).absolute()


def run_cli(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    """Run the harness script with this interpreter (it needs only the standard library)."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def ensure_infra(services: Sequence[str] = SERVICES, *, timeout: float = 3600) -> dict[str, Any]:
    """Start whatever of ``services`` is not running yet (installing on first use) and return infra.json.

    Safe to call from every test session and from parallel workers: the script takes a lock and leaves running
    servers alone. The first call on a fresh machine installs and builds the servers (minutes); later ones
    return in about a second per service.
    """
    proc = run_cli("up", *services, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise InfraUnavailable(f"`courier-infra up {' '.join(services)}` exited {proc.returncode}:\n{tail}")
    return read_infra()


def read_infra() -> dict[str, Any]:
    """The addresses the last `up` wrote: ``services.<name>`` entries and the ``env`` exports."""
    data: dict[str, Any] = json.loads((infra_dir() / "infra.json").read_text())
    return data


def stop_infra(*, purge: bool = False) -> None:
    proc = run_cli("down", *(["--purge"] if purge else []), timeout=300)
    if proc.returncode != 0:
        raise InfraUnavailable(proc.stdout + proc.stderr)


@cache
def cli_module() -> ModuleType:
    """The script loaded as a module, to reuse its helpers (for instance ``s3_request``, a SigV4 client)."""
    loader = importlib.machinery.SourceFileLoader("courier_infra_cli", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses resolve annotations through sys.modules
    loader.exec_module(module)
    return module
