"""Progress on a terminal for the long commands (import, load, save, fsck), shaped as
docker's multi-line display: a line per item in progress, its label and a bar,
``0123456789ab: Loading layer [=====>        ] 12.3MB/45.6MB``, and below them one
overall line (items done, bytes, rate). A finished item's line stays, above the
display, as docker leaves it. It implements :class:`ocistore.progress.Progress`.

* Every line fits the terminal: the width is read again at each redraw (one ioctl), a
  SIGWINCH redraws at once, and a line too long loses its bar, then the end of its label
  (:func:`~ocistore.cli.views.shorten`, which also makes labels printable: they may
  quote anything). The display keeps to the screen's height (the items that do not fit
  are counted on one line).
* The cursor is never hidden and stays at the start of the line below the display, so
  whatever is printed next starts a line of its own. :func:`displays_ended` ends the
  displays a command opened before anything else is printed (no thread draws after
  it); after Ctrl-C it clears what the terminal echoed (``^C``) and any line left half
  drawn below the display's, so the error is a line of its own.
* Silent when disabled (``--quiet``, or stderr is not a terminal).

Redraws move the cursor up over the display's lines and draw them again: a terminal
that re-wraps its lines when it is made narrower (some do) may keep a stale line.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any, TextIO

from .. import parallel
from .views import human_size, printable, shorten

#: Seconds between two redraws that updates cause, made by a thread of the display's
#: while items are in progress (a finished item redraws at once).
_REDRAW = 0.1
#: The widest bar, and the narrowest worth drawing (docker's bar is 50 wide).
_BAR = 50
_MIN_BAR = 10
#: The displays :meth:`TerminalProgress.for_terminal` made, ended by :func:`displays_ended`.
_OPEN: list[TerminalProgress] = []


def _bar(done: int, total: int, width: int) -> str:
    filled = min(width - 1, width * done // total) if total > 0 else width - 1
    return "[" + "=" * filled + ">" + " " * (width - 1 - filled) + "] "


def _line(head: str, done: int, total: int | None, tail: str, width: int) -> str:
    """``head [=====>    ] done/total tail``, in at most ``width`` columns: without the
    bar when it would be narrower than :data:`_MIN_BAR`, and ``head`` cut if need be."""
    shown = f"{human_size(done):>6}"  # (the widest: bars of equal totals line up)
    right = f"{shown}/{human_size(total)}" if total else shown
    if tail:
        right += " " + tail
    if len(head) + 1 + len(right) > width:
        right = right.lstrip()  # the padding goes before the label is cut
    room = width - len(right) - 1
    if len(head) > room:
        head = shorten(head, max(room, 4))
    bar = min(_BAR, width - len(head) - len(right) - 4)
    drawn = _bar(done, total, bar) if total and bar >= _MIN_BAR else ""
    return shorten(f"{head} {drawn}{right}", width)


class TerminalProgress:
    """Reports per-item and overall progress on a terminal; does nothing when disabled."""

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._lock = threading.Lock()
        self._active: list[TerminalTask] = []
        #: Finished since the last redraw: drawn once more, above the display, to stay.
        self._finished: list[TerminalTask] = []
        self._items = 0
        self._items_done = 0
        self._bytes_done = 0  # of the finished items
        self._bytes_total = 0  # of the finished items and the known totals of the others
        self._unknown = 0  # items in progress of no known total
        self._start = 0.0
        self._drawn = 0  # lines of the display on the screen, above the cursor
        self._dirty = False  # an item moved on since the last redraw
        self._ticking = False  # the redrawing thread runs
        self._resizes = 0
        self._closed = False
        self._old_winch: Any = None

    @classmethod
    def for_terminal(cls, quiet: bool, stream: TextIO | None = None) -> TerminalProgress:
        """The command line's display: enabled when not ``quiet`` and the stream is a
        terminal; it follows the terminal's resizes until :func:`displays_ended`."""
        s = stream or sys.stderr
        progress = cls(not quiet and s.isatty(), s)
        if progress.enabled:
            progress._follow_resizes()
            _OPEN.append(progress)
        return progress

    def task(self, label: str, total: int | None = None) -> TerminalTask:
        task = TerminalTask(self, label, total)
        if self.enabled:
            with self._lock:
                if not self._items:
                    self._start = time.monotonic()
                self._items += 1
                if total is None:
                    self._unknown += 1
                else:
                    self._bytes_total += total
                self._active.append(task)
                self._dirty = True
                if not self._ticking and not self._closed:
                    self._ticking = True
                    parallel.start_thread(self._tick, "ocistore-progress")
        return task

    def changed(self) -> None:
        """An item moved on: the next redraw shows it (updates cost no lock)."""
        self._dirty = True

    def _tick(self) -> None:
        """Redraw what moved on, every :data:`_REDRAW` seconds, while items are in
        progress and the display is open (a stalled item then still shows where it is)."""
        while True:
            time.sleep(_REDRAW)
            with self._lock:
                if self._closed or not self._active:
                    self._ticking = False
                    return
                if self._dirty:
                    self._draw()

    def finished(self, task: TerminalTask) -> None:
        with self._lock:
            if task not in self._active:  # (finished twice)
                return
            self._active.remove(task)
            self._finished.append(task)
            self._items_done += 1
            self._bytes_done += task.done
            if task.total is None:
                self._unknown -= 1
                self._bytes_total += task.done
                task.total = task.done  # (its line then shows a full bar)
            else:
                self._bytes_total += task.done - task.total
            if not self._closed:
                self._draw()

    def close(self, interrupted: bool = False) -> None:
        """Stop drawing (for good) and following resizes; after an interrupt, clear what
        is below the display (the terminal's ``^C``, a line left half drawn)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if (
                self._old_winch is not None
                and threading.current_thread() is threading.main_thread()
            ):
                signal.signal(signal.SIGWINCH, self._old_winch)
            if interrupted and self.enabled:
                self.stream.write("\r\x1b[J")
                self.stream.flush()

    def _follow_resizes(self) -> None:
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGWINCH"):
            self._old_winch = signal.signal(signal.SIGWINCH, self._on_resize) or signal.SIG_DFL

    def _on_resize(self, signum: int, frame: FrameType | None) -> None:
        self._resizes += 1
        # Marked for the ticker first, so that a resize is never lost: if this cannot
        # draw now (another draw holds the lock, and may have passed its look at the
        # count), the ticker's next round does.
        self._dirty = True
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._drawn and not self._closed:
                self._draw()
        except RuntimeError:  # the main thread was writing to the stream: next update
            pass
        finally:
            self._lock.release()

    def _size(self) -> tuple[int, int]:
        try:
            size = os.get_terminal_size(self.stream.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            return 80, 24
        return size.columns or 80, size.lines or 24

    def _overall(self, width: int) -> str:
        done = self._bytes_done + sum(t.done for t in self._active)
        rate = human_size(done / max(time.monotonic() - self._start, 1e-3)) + "/s"
        total = None if self._unknown else self._bytes_total
        return _line(f"Total: {self._items_done}/{self._items} done", done, total, rate, width)

    def _draw(self) -> None:
        """Draw the display again, the lock held: finished items' lines first, to stay,
        then the items in progress and the overall line, each ended by a newline."""
        while True:
            resizes = self._resizes
            columns, rows = self._size()
            width = max(columns - 1, 1)  # (a full last column makes some terminals wrap)
            parts = [f"\x1b[{self._drawn}A\r" if self._drawn else "\r"]
            parts += [f"\x1b[K{t.line(width)}\n" for t in self._finished]
            self._finished.clear()
            live = [t.line(width) for t in self._active]
            room = max(rows - 2, 1)  # the overall line and the cursor's line below
            if len(live) > room:
                more = len(live) - room + 1
                live = [*live[: room - 1], shorten(f"... and {more} more", width)]
            live.append(self._overall(width))
            parts += [f"\x1b[K{line}\n" for line in live]
            parts.append("\x1b[J")  # what is left below of a longer display
            self.stream.write("".join(parts))
            self.stream.flush()
            self._drawn = len(live)
            self._dirty = False
            if self._resizes == resizes:
                return


class TerminalTask:
    """One item of a :class:`TerminalProgress`."""

    __slots__ = ("done", "label", "progress", "total")

    def __init__(self, progress: TerminalProgress, label: str, total: int | None) -> None:
        self.progress = progress
        self.label = printable(label)
        self.total = total
        self.done = 0

    def line(self, width: int) -> str:
        return _line(self.label, self.done, self.total, "", width)

    def update(self, done: int) -> None:
        """Set the bytes done so far."""
        self.done = done
        if self.progress.enabled:
            self.progress.changed()

    def finish(self) -> None:
        if self.progress.enabled:
            self.progress.finished(self)


@contextlib.contextmanager
def displays_ended() -> Iterator[None]:
    """Around a command: when it returns or raises, the displays it opened with
    :meth:`TerminalProgress.for_terminal` are closed, before its result or its error is
    printed (interrupted when it was Ctrl-C)."""
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        while _OPEN:
            _OPEN.pop().close(interrupted)
