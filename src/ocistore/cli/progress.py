"""Progress on a terminal for the long commands (import, load, save): one line per item
with bytes done and rate. Silent when disabled (``--quiet``, or output is not a terminal).
It implements :class:`ocistore.progress.Progress`. Labels name archive members and
files, which may hold anything: they are shown :func:`~ocistore.cli.views.printable`."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from .views import human_size, printable


class TerminalProgress:
    """Reports per-item progress on a terminal; does nothing when not enabled."""

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._lock = threading.Lock()

    @classmethod
    def for_terminal(cls, quiet: bool, stream: TextIO | None = None) -> TerminalProgress:
        s = stream or sys.stderr
        return cls(not quiet and s.isatty(), s)

    def task(self, label: str, total: int | None = None) -> TerminalTask:
        return TerminalTask(self, label, total)

    def write_line(self, text: str, final: bool) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
            self.stream.flush()


class TerminalTask:
    def __init__(self, progress: TerminalProgress, label: str, total: int | None) -> None:
        self.progress = progress
        self.label = printable(label)
        self.total = total
        self.start = time.monotonic()
        self._last = 0.0
        self.done = 0

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = human_size(self.done / elapsed) + "/s"
        if self.total:
            pct = min(100, int(self.done * 100 / self.total))
            return f"{self.label}: {human_size(self.done)}/{human_size(self.total)} ({pct}%) {rate}"
        return f"{self.label}: {human_size(self.done)} {rate}"

    def update(self, done: int) -> None:
        """Set the bytes done so far; redraws at most ten times a second."""
        self.done = done
        if not self.progress.enabled:
            return
        now = time.monotonic()
        if now - self._last >= 0.1:
            self._last = now
            self.progress.write_line(self._line(), final=False)

    def finish(self) -> None:
        if self.progress.enabled:
            self.progress.write_line(f"{self._line()} done", final=True)
