"""The one progress interface of every long verb (load, save, import; pull, push later).

A verb that reads or writes many bytes takes a ``progress`` argument: anything with a
``task(label, total)`` method that returns an object with ``update(done)`` and
``finish()``. The verb makes one task per item (a layer, a blob), calls ``update`` with
the bytes done so far as it goes, from whichever thread does the work, and ``finish``
when the item is done. The command line draws these on a terminal; a program may log
them, or pass nothing (:data:`SILENT`)::

    class Printer:
        def task(self, label, total=None):
            return PrintedTask(label, total)

    ocistore.load(store, "busybox.tar", progress=Printer())
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["SILENT", "Progress", "ProgressTask"]


class ProgressTask(Protocol):
    """One item of a long verb: a layer being loaded, a blob being copied."""

    def update(self, done: int) -> None:
        """``done`` bytes of the item are done (it only grows)."""

    def finish(self) -> None:
        """The item is done."""


class Progress(Protocol):
    """Where a long verb reports its items; see the module documentation."""

    def task(self, label: str, total: int | None = None) -> ProgressTask:
        """A new item called ``label`` (``total`` bytes, when known)."""
        ...


class _SilentTask:
    __slots__ = ()

    def update(self, done: int) -> None:
        pass

    def finish(self) -> None:
        pass


class _Silent:
    __slots__ = ()

    def task(self, label: str, total: int | None = None) -> ProgressTask:
        return _SILENT_TASK


_SILENT_TASK = _SilentTask()
#: Reports nothing: the default of every verb.
SILENT: Progress = _Silent()
