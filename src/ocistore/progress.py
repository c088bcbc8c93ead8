"""The one progress interface of every long verb (load, save, import, pull, push, copy).

A verb that reads or writes many bytes takes a ``progress`` argument: anything with a
``task(label, total)`` method that returns an object with ``update(done)`` and
``finish()``. The verb makes one task per item (a layer, a blob), calls ``update`` with
the bytes done so far as it goes, from whichever thread does the work, and ``finish``
when the item is done. The command line draws these on a terminal; a program may log
them, or pass nothing (:data:`SILENT`).

Labels are shaped as docker's progress lines start, ``ID: Status`` (made by
:func:`task_label`): ``0123456789ab: Loading layer``. The ID is the item's short digest,
the same for one layer in every verb: a layer read or written as it is (load, a
docker-archive save, fsck) shows its DiffID, unless the bytes read are a blob of
another digest (an OCI layout's compressed layer), which shows that digest, as an OCI
save does. An item with no digest known before it is read (an imported tarball) has
the status alone::

    class Printer:
        def task(self, label, total=None):
            return PrintedTask(label, total)

    ocistore.load(store, "busybox.tar", progress=Printer())
"""

from __future__ import annotations

from typing import Protocol

__all__ = [
    "COPYING",
    "DOWNLOADING",
    "LOADING",
    "PUSHING",
    "SAVING",
    "SILENT",
    "VERIFYING",
    "Progress",
    "ProgressTask",
    "task_label",
]

#: The statuses of the long verbs' items (the words of docker's own ``Loading layer``).
LOADING = "Loading layer"
SAVING = "Saving layer"
COPYING = "Copying blob"
VERIFYING = "Verifying layer"
DOWNLOADING = "Downloading"
PUSHING = "Pushing"


def task_label(item: str, status: str) -> str:
    """A task's label: ``ID: Status`` as docker's progress lines start, or the status
    alone when the item has no ID (``item`` is empty)."""
    return f"{item}: {status}" if item else status


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
