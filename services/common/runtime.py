"""What a server process settles once start-up has built it: how many files it may open, and Python's
cyclic garbage collector, set for a process that holds many long-lived objects.

Every socket is an open file, and a gateway holds two per WebSocket it splices (the client's and the
delivery node's): the soft limit on open files, often 1,024, is lifted to the hard one, as far as an
unprivileged process may.

A delivery node keeps a few hundred objects per open WebSocket (its protocol, parser, queues, tasks), so
at 10,000 sockets the heap holds two million objects. With Python's thresholds (a young collection every
700 allocations) anything alive for a few milliseconds, such as a push waiting for its ACK, survives two
young collections and is promoted to the oldest generation, and every 25% growth of that generation
brings a full collection that walks the whole heap: 0.6 to 1.6 s each at two million objects, half the
process's CPU while a 10,000-member group was fanned out (docs/performance.md 15). Collecting the young
generation every ``young_threshold`` allocations lets most of those objects die of their reference count
first, so few are promoted and full collections become rare; what start-up built (modules, classes, the
object graph) is frozen out of every collection, as it lives as long as the process.
"""

from __future__ import annotations

import contextlib
import gc
import resource

YOUNG_THRESHOLD = 100_000
"""Allocations between two collections of the youngest generation (Python's default: 700)."""


def settle(young_threshold: int = YOUNG_THRESHOLD) -> None:
    """Called once start-up has built what the process keeps, before it serves."""
    lift_open_files_limit()
    tune_collector(young_threshold)


def lift_open_files_limit() -> None:
    """The soft limit on open files raised to the hard one (the gateway's ``FileBudget`` reads it after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def tune_collector(young_threshold: int = YOUNG_THRESHOLD) -> None:
    """Called once start-up has built what the process keeps: collect, freeze it, set the young threshold
    (the older generations keep Python's thresholds)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
