"""A one-line progress display on stderr: rewritten in place on a terminal, a line every few
seconds otherwise (logs of ``make bench`` stay readable)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False, plain_every_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self._plain_every_s = plain_every_s
        self._last_plain = 0.0
        self._showing = False

    def show(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            width = shutil.get_terminal_size((120, 20)).columns - 1
            self.stream.write("\r" + text[:width] + "\x1b[K")
            self._showing = True
        elif time.monotonic() - self._last_plain >= self._plain_every_s:
            self._last_plain = time.monotonic()
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line that stays (a phase ends, a warning)."""
        if self.quiet:
            return
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self._showing:
            self.stream.write("\r\x1b[K")
            self._showing = False
            self.stream.flush()

    @contextlib.asynccontextmanager
    async def ticking(self, status: Callable[[], str], *, every_s: float = 0.5) -> AsyncIterator[None]:
        """Show ``status()`` every ``every_s`` while the block runs."""

        async def tick() -> None:
            while True:
                self.show(status())
                await asyncio.sleep(every_s)

        task = asyncio.create_task(tick())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.clear()
