"""``python -m bench.stacks profile.txt``: the top costs of a py-spy profile in collapsed-stack form
(``py-spy record --format raw``), by function or by file, inclusive and self, in percent of samples.

A flame graph shows where time goes; this prints the same as a ranked list to quote in a report.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Costs:
    total: int
    inclusive: Counter[str]
    own: Counter[str]


def key_of(frame: str, *, by: str) -> str:
    """``send_message (services/message/app.py:150)`` -> the function with its file, or the file."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return path if by == "file" else f"{match['function']} ({path})"


def costs(lines: Iterable[str], *, by: str = "function", only_thread: str | None = None) -> Costs:
    """Sample counts per key: inclusive (on the stack) and self (the innermost frame)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in lines:
        line = line.rstrip()
        if not line or " " not in line:
            continue
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        frames = stack.split(";")
        if only_thread is not None and only_thread not in frames[0]:
            continue
        count = int(count_text)
        total += count
        keys = [key_of(f, by=by) for f in frames if f.strip()]
        for key in dict.fromkeys(keys):
            inclusive[key] += count
        if keys:
            own[keys[-1]] += count
    return Costs(total, inclusive, own)


def report(found: Costs, *, top: int) -> str:
    lines = [f"{found.total:,} samples"]
    for title, counter in (("inclusive", found.inclusive), ("self", found.own)):
        lines.append(f"\ntop {top} {title}:")
        for key, count in counter.most_common(top):
            lines.append(f"  {100.0 * count / max(1, found.total):5.1f}%  {key}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stacks", description=__doc__)
    parser.add_argument("profile", type=Path, help="collapsed stacks from py-spy record --format raw")
    parser.add_argument("--by", choices=["function", "file"], default="function")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--thread", help="only stacks whose thread frame contains this text")
    args = parser.parse_args(argv)
    with args.profile.open() as lines:
        print(report(costs(lines, by=args.by, only_thread=args.thread), top=args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
