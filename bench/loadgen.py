"""The throughput scenario's hot loop in Go (``bench/loadgen/``): paced senders, receivers that ack,
the latency measurement. Python keeps everything around it (users, conversations, the target, the
server's CPU, the report); this module builds the Go program and talks to it.

The binary is built with ``go build`` on first use into ``~/.cache/courier/loadgen/<key>/loadgen``
(``COURIER_CACHE_DIR`` moves the root), ``<key>`` a hash of the Go sources, ``go.mod`` and ``go.sum``,
so an edit builds a new one and an unchanged tree reuses the old. It reads one JSON job on stdin
(``job``), writes one JSON result on stdout and ``progress {...}`` lines on stderr (``run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

SOURCES = Path(__file__).resolve().parent / "loadgen"
BUILD_TIMEOUT_S = 600.0
PROGRESS = "progress "


class Unavailable(Exception):
    """The Go load generator cannot be had here (no ``go``, or the build failed): the reason."""


class Failed(Exception):
    """The Go load generator ran but did not produce a result."""


@dataclass(frozen=True)
class PairJob:
    """One direct conversation of the scenario: the sender's and receiver's access tokens."""

    sender_token: str
    receiver_token: str
    conversation_id: str


def sources(directory: Path = SOURCES) -> list[Path]:
    """Every file that goes into the binary: the Go sources (tests excluded), go.mod and go.sum."""
    files = [p for p in directory.glob("*.go") if not p.name.endswith("_test.go")]
    files += [directory / name for name in ("go.mod", "go.sum") if (directory / name).exists()]
    return sorted(files)


def cache_key(directory: Path = SOURCES) -> str:
    digest = hashlib.sha256()
    for path in sources(directory):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def cache_root() -> Path:
    return Path(os.environ.get("COURIER_CACHE_DIR", Path.home() / ".cache" / "courier")).absolute() / "loadgen"


def binary(directory: Path = SOURCES, *, root: Path | None = None, go: str | None = None) -> Path:
    """The built load generator, built now unless a build of the same sources is cached. Blocking."""
    path = (root or cache_root()) / cache_key(directory) / "loadgen"
    if path.exists():
        return path
    go = go or shutil.which("go")
    if go is None:
        raise Unavailable("`go` is not on PATH (install Go 1.22 or later to run the Go load generator)")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"loadgen.{os.getpid()}.partial")
    env = {**os.environ, "GOFLAGS": f"{os.environ.get('GOFLAGS', '')} -mod=readonly".strip()}
    try:
        built = subprocess.run(
            [go, "build", "-trimpath", "-o", str(partial), "."],
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"`go build` of bench/loadgen did not run: {exc}") from exc
    if built.returncode != 0:
        partial.unlink(missing_ok=True)
        raise Unavailable(f"`go build` of bench/loadgen failed ({built.returncode}): {built.stderr.strip()[-2000:]}")
    partial.replace(path)  # atomic: a concurrent run sees a whole binary or none
    return path


def job(
    *,
    ws_url: str,
    pairs: Sequence[PairJob],
    rates: Sequence[float],
    tag: str,
    warmup_s: float,
    duration_s: float,
    drain_s: float,
    pause_s: float,
    text_size: int,
    max_inflight: int,
    ramp_rate: float,
    handshakes: int,
    ping_every_s: float,
) -> dict[str, Any]:
    """The JSON job of the Go program (its ``Job`` type)."""
    return {
        "ws_url": ws_url,
        "pairs": [
            {"sender_token": p.sender_token, "receiver_token": p.receiver_token, "conversation_id": p.conversation_id}
            for p in pairs
        ],
        "rates": [float(r) for r in rates],
        "tag": tag,
        "warmup_s": warmup_s,
        "duration_s": duration_s,
        "drain_s": drain_s,
        "pause_s": pause_s,
        "text_size": text_size,
        "max_inflight": max_inflight,
        "ramp_rate": ramp_rate,
        "handshakes": handshakes,
        "ping_every_s": ping_every_s,
        "progress_every_s": 1.0,
    }


async def run(
    program: Path,
    the_job: Mapping[str, Any],
    *,
    on_start: Callable[[int], None] = lambda pid: None,
    on_progress: Callable[[dict[str, Any]], None] = lambda status: None,
) -> dict[str, Any]:
    """Run the load generator on ``the_job``; its result. ``on_start`` gets its pid (for its CPU),
    ``on_progress`` each progress line. Killed if the caller is cancelled."""
    process = await asyncio.create_subprocess_exec(
        str(program),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    on_start(process.pid)
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    diagnostics: list[str] = []

    async def read_stderr(stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if line.startswith(PROGRESS):
                with contextlib.suppress(ValueError):
                    on_progress(orjson.loads(line[len(PROGRESS) :]))
            elif line:
                diagnostics.append(line)

    try:
        process.stdin.write(orjson.dumps(the_job))
        await process.stdin.drain()
        process.stdin.close()
        out, _ = await asyncio.gather(process.stdout.read(), read_stderr(process.stderr))
        code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if code != 0:
        raise Failed(f"the Go load generator exited with {code}: {' | '.join(diagnostics[-5:]) or 'no message'}")
    try:
        result = orjson.loads(out)
    except orjson.JSONDecodeError as exc:
        raise Failed(f"the Go load generator wrote no JSON result: {out[:200]!r}") from exc
    if not isinstance(result, dict) or result.get("version") != 1:
        raise Failed(f"the Go load generator wrote an unexpected result: {out[:200]!r}")
    return dict(result)
