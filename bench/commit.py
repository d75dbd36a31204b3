"""``python -m bench.commit``: the CPU one message costs the SQL message store, in this process, per commit shape.

The throughput scenario measures a whole server; this measures one layer of it, the store's group commit (the
seq read, the message, outbox and cursor rows, one transaction), so that a change to that layer can be compared
without the noise of WebSockets and fan-out. Appends go to 20 conversations of two members each, with the
recipients carried, as a 1:1 send does; each shape runs ``--messages`` appends:

- ``alone``: one append at a time, one commit each (a quiet server);
- ``batch<N>``: N appends at once, gathered into one commit (a busy one).

The database is a SQLite file in a temporary directory (the embedded store of ``courier dev``) unless ``--url``
names a server (``mysql+asyncmy://...``, ``postgresql+asyncpg://...``; its tables are created if missing and the
conversations get fresh ids, so a shared database is not disturbed). CPU is this process's (user + system, from
``getrusage``): on a server most of a commit's cost is the server's, which this does not count.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from services.common import db
from services.common.clock import utcnow
from services.common.ids import new_id
from services.message.adapters.sql import SqlMessageStore
from services.message.domain import Message
from services.message.ports import Draft

CONVERSATIONS = 20
WARMUP = 200


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Sends:
    """Drafts of text messages, round robin over the conversations, as a 1:1 send builds them."""

    def __init__(self) -> None:
        self.conversations = [new_id() for _ in range(CONVERSATIONS)]
        self.members = [new_id(), new_id()]
        self.count = 0

    def next(self) -> Draft:
        conversation_id = self.conversations[self.count % CONVERSATIONS]
        client_msg_id = f"bench-{self.count}"
        self.count += 1

        def build(seq: int) -> Message:
            content = {"type": "text", "text": "hello there"}
            return Message(new_id(), conversation_id, seq, self.members[0], "bench", client_msg_id, content, utcnow())

        return Draft(conversation_id, build, recipients=self.members)


async def measure(store: SqlMessageStore, sends: Sends, *, size: int, messages: int) -> tuple[float, float]:
    """Microseconds of CPU and of wall time per message, ``messages`` appends in commits of ``size``."""
    rounds = max(1, messages // size)
    cpu, wall = cpu_seconds(), time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(store.append(sends.next()) for _ in range(size)))
    done = rounds * size
    return 1e6 * (cpu_seconds() - cpu) / done, 1e6 * (time.perf_counter() - wall) / done


async def run(url: str, sizes: Sequence[int], messages: int, repeat: int) -> None:
    engine = db.create_engine(url)
    try:
        await db.create_all(engine)
        store = SqlMessageStore(engine)
        sends = Sends()
        for _ in range(WARMUP):
            await store.append(sends.next())
        print(f"{'shape':<10} {'CPU us/message':>15} {'wall us/message':>16}")
        for _ in range(repeat):
            for size in sizes:
                cpu, wall = await measure(store, sends, size=size, messages=messages)
                shape = "alone" if size == 1 else f"batch{size}"
                print(f"{shape:<10} {cpu:>15,.0f} {wall:>16,.0f}", flush=True)
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.commit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a database server's SQLAlchemy URL (default: a SQLite file of its own)")
    parser.add_argument("--sizes", default="1,4", help="commit sizes to measure, comma-separated (default 1,4)")
    parser.add_argument("--messages", type=int, default=3000, help="appends per shape and round (default 3000)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds over the shapes (default 2)")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.url:
        asyncio.run(run(args.url, sizes, args.messages, args.repeat))
        return 0
    with tempfile.TemporaryDirectory(prefix="courier-bench-commit-") as tmp:
        asyncio.run(run(f"sqlite+aiosqlite:///{Path(tmp) / 'messages.db'}", sizes, args.messages, args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
